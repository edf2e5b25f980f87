"""The plugin API: every hook a plugin can implement.

A plugin is a module named by an entry point in the group ``cruijff_kit`` that implements some of these
hooks with ``@cruijff_kit.hookimpl``. The built-in backends register exactly like third-party ones.

The ``register_*`` hooks add backend classes (see :mod:`cruijff_kit._api.kinds` for what each class must
provide). The event hooks are called inside ``ck stage`` while a stage runs; trackers listen there.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("cruijff_kit")
hookimpl = pluggy.HookimplMarker("cruijff_kit")


@hookspec
def register_trainers(register: Any) -> None:
    """Register trainer classes: ``register(MyTrainer)``. The class's ``name`` is a ``train.plugin`` value."""


@hookspec
def register_evaluators(register: Any) -> None:
    """Register evaluator classes: ``register(MyEvaluator)``, chosen by ``eval[i].plugin``."""


@hookspec
def register_schedulers(register: Any) -> None:
    """Register scheduler classes: ``register(MyScheduler)``, chosen by ``scheduler.plugin``."""


@hookspec
def register_datasets(register: Any) -> None:
    """Register dataset classes: ``register(MyDataset)``, chosen by ``dataset.plugin``."""


@hookspec
def register_simulators(register: Any) -> None:
    """Register simulator classes: ``register(MySimulator)``, chosen in a ``simulate`` section."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add subcommands to the ``ck`` click group (import heavy libraries inside the command only)."""


@hookspec
def stage_started(run: Any, stage: str) -> None:
    """A stage of ``run`` (a :class:`cruijff_kit._api.context.RunInfo`) started executing."""


@hookspec
def metrics_logged(run: Any, stage: str, step: int, metrics: dict[str, Any]) -> None:
    """A stage logged one row of metrics (also appended to the stage's ``metrics.jsonl``)."""


@hookspec
def stage_finished(run: Any, stage: str, state: str, results: dict[str, Any] | None) -> None:
    """A stage ended with ``state`` (done, failed, interrupted); ``results`` holds eval metrics if any."""
