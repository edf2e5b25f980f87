"""The hook specifications: every hook a plugin can implement.

A plugin is a module named by an entry point in the group ``cruijff_kit`` that implements some of these
hooks with ``@cruijff_kit.hookimpl``. The built-in backends register exactly like third-party ones, and
the core's own features (simulation, models, data tools, scaffolds, summaries, inference) are default
plugins that add their commands through the same hooks.

The ``register_*`` hooks add backend classes: ``register`` takes a subclass of the kind's base class
(:class:`~cruijff_kit.Trainer`, ...), whose ``name`` is the value of ``plugin:`` in a spec section. The
event hooks are called inside ``ck stage`` while a stage runs; trackers listen there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover - typing only
    import click

    from cruijff_kit._api.context import RunInfo
    from cruijff_kit._api.kinds import Dataset, Evaluator, Scheduler, Simulator, Trainer
    from cruijff_kit._api.sections import SpecSection

hookspec = pluggy.HookspecMarker("cruijff_kit")
hookimpl = pluggy.HookimplMarker("cruijff_kit")


@hookspec
def register_trainers(register: Callable[[type[Trainer]], None]) -> None:
    """Register trainer classes: ``register(MyTrainer)``. The class's ``name`` is a ``train.plugin`` value."""


@hookspec
def register_evaluators(register: Callable[[type[Evaluator]], None]) -> None:
    """Register evaluator classes: ``register(MyEvaluator)``, chosen by ``eval[i].plugin``."""


@hookspec
def register_schedulers(register: Callable[[type[Scheduler]], None]) -> None:
    """Register scheduler classes: ``register(MyScheduler)``, chosen by ``scheduler.plugin``."""


@hookspec
def register_datasets(register: Callable[[type[Dataset]], None]) -> None:
    """Register dataset classes: ``register(MyDataset)``, chosen by ``dataset.plugin``."""


@hookspec
def register_simulators(register: Callable[[type[Simulator]], None]) -> None:
    """Register simulator classes: ``register(MySimulator)``, chosen in a ``simulate`` section."""


@hookspec
def register_spec_sections(register: Callable[[SpecSection], None]) -> None:
    """Own a top-level spec section: ``register(SpecSection(key, check, resolve, reference))``."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``ck`` click group (import heavy libraries inside the command only)."""


@hookspec
def stage_started(run: RunInfo, stage: str) -> None:
    """A stage of ``run`` started executing (``stage`` is its name, such as ``train``)."""


@hookspec
def metrics_logged(run: RunInfo, stage: str, step: int, metrics: dict[str, Any]) -> None:
    """A stage logged one row of metrics (also appended to the stage's ``metrics.jsonl``)."""


@hookspec
def stage_finished(run: RunInfo, stage: str, state: str, results: dict[str, Any] | None) -> None:
    """A stage ended with ``state`` (done, failed, interrupted); ``results`` holds eval metrics if any."""
