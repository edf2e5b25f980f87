"""What the engine hands to plugins: a planned run with its resolved spec, its stages, and the jobs a
scheduler receives."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cruijff_kit._api.kinds import Dataset, Estimate, Evaluator, Plugin, Resources, Scheduler, Trainer
from cruijff_kit._api.sections import validate_section
from cruijff_kit._base.errors import StageError
from cruijff_kit._base.layout import RunLayout
from cruijff_kit._base.yamlfile import read_yaml


@dataclass
class StageDef:
    """One stage of a run: ``train`` or ``eval.<task>.<target>``."""

    name: str
    kind: str  # "train" | "eval"
    depends_on: list[str] = field(default_factory=list)
    eval_index: int | None = None
    task: str | None = None
    target: str | None = None


@dataclass
class StageJob:
    """What a scheduler receives: run one stage, after ``depends_on`` (stage names of the same run)."""

    experiment: str
    run_name: str
    run_dir: Path
    stage: str
    depends_on: list[str]
    resources: Resources
    kind: str

    @property
    def key(self) -> str:
        """Unique id of the job within an experiment."""
        return f"{self.run_name}/{self.stage}"

    @property
    def job_name(self) -> str:
        """Human-readable job name for queues."""
        return f"ck.{self.experiment}.{self.run_name}.{self.stage}"

    def command(self, python: str | None = None) -> list[str]:
        """The one entry point for work: ``python -m cruijff_kit stage RUN_DIR STAGE``."""
        return [python or sys.executable, "-m", "cruijff_kit", "stage", str(self.run_dir), self.stage]

    def scheduler(self, expected: type[Scheduler] | None = None) -> Scheduler:
        """The scheduler built from this job's own run's resolved ``scheduler:`` section (``spec.yaml``
        in ``run_dir``), with that run's settings.

        Runs of one experiment may differ in scheduler settings (``variants:`` or a sweep setting
        ``scheduler.time_limit``, ``scheduler.resources.time``...), while ``ck run`` hands every job to
        one scheduler object: a scheduler reads a job's settings from here, never from its own
        ``config``. ``expected``: the class of the scheduler that received the job; a run whose section
        names another scheduler is refused (:class:`StageError`).
        """
        file = RunLayout(Path(self.run_dir)).spec
        spec = read_yaml(file, what="run spec")
        section, meta = spec.get("scheduler"), spec.get("run")
        if not isinstance(section, dict) or not isinstance(meta, dict) or not meta.get("spec_dir"):
            raise StageError(f"{file} is not a resolved run spec (it lacks the `scheduler:` section or "
                             "`run.spec_dir`). `ck run SPEC` writes it again.")
        sched = instantiate("scheduler", section, Path(meta["spec_dir"]), file=str(file))
        if expected is not None and not isinstance(sched, expected):
            raise StageError(f"{file}: at `scheduler.plugin`: run {self.run_name} names the `{sched.name}` "
                             f"scheduler, but its stages were handed to the `{expected.name}` scheduler with "
                             "the rest of the experiment; one `ck run` uses one scheduler. Give every run the "
                             "same `scheduler.plugin` (or run the spec once per scheduler with --set).")
        return sched  # type: ignore[return-value]


@dataclass
class PlannedRun:
    """A run with its resolved spec, its plugins' validated configs and its stages."""

    name: str
    type: str
    spec: dict[str, Any]
    sweep_values: dict[str, Any]
    stages: list[StageDef]
    layout: RunLayout
    base_dir: Path
    estimate: Estimate | None = None
    #: Extra plan.md cells from the scheduler (``Scheduler.plan_columns``), filled by :func:`estimate_plan`.
    plan_columns: dict[str, str] = field(default_factory=dict)

    # -- plugin objects, built from the resolved spec
    def dataset(self) -> Dataset:
        return instantiate("dataset", self.spec["dataset"], self.base_dir)  # type: ignore[return-value]

    def trainer(self) -> Trainer | None:
        t = self.spec.get("train")
        return instantiate("trainer", t, self.base_dir) if t else None  # type: ignore[return-value]

    def evaluator(self, index: int) -> Evaluator:
        return instantiate("evaluator", self.spec["eval"][index], self.base_dir)  # type: ignore[return-value]

    def scheduler(self) -> Scheduler:
        return instantiate("scheduler", self.spec["scheduler"], self.base_dir)  # type: ignore[return-value]

    def stage(self, name: str) -> StageDef:
        for s in self.stages:
            if s.name == name:
                return s
        raise StageError(f"Run {self.name} has no stage `{name}`. Its stages: "
                         + ", ".join(s.name for s in self.stages) + ".")


_INSTANCES: dict[str, Plugin] = {}


def instantiate(kind: str, section: dict[str, Any], base_dir: Path, file: str | None = None) -> Plugin:
    """The plugin object for a resolved section (one object per distinct section and folder);
    ``file``: the file that holds the section, named in errors."""
    key = json.dumps([kind, section, str(base_dir)], sort_keys=True, default=str)
    obj = _INSTANCES.get(key)
    if obj is None:
        cls, config = validate_section(kind, section, path=kind, file=file)
        obj = _INSTANCES[key] = cls(config, base_dir=base_dir)
    return obj
