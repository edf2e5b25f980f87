"""The artifact contract: where every file of an experiment and of a run lives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ExperimentLayout:
    """``<output_dir>/<experiment>/``."""

    root: Path

    @property
    def spec(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def plan(self) -> Path:
        return self.root / "plan.md"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def plots_dir(self) -> Path:
        return self.root / "plots"

    @property
    def shared_dir(self) -> Path:
        """``shared/``: one folder per stage that several runs share (laid out like a run folder)."""
        return self.root / "shared"

    def run(self, name: str) -> RunLayout:
        return RunLayout(self.runs_dir / name)

    def shared(self, name: str) -> RunLayout:
        """The folder of a shared stage, ``shared/<name>``."""
        return RunLayout(self.shared_dir / name)

    def run_layouts(self) -> list[RunLayout]:
        """Every run folder that has a resolved spec, sorted by name."""
        if not self.runs_dir.is_dir():
            return []
        return [RunLayout(p) for p in sorted(self.runs_dir.iterdir()) if (p / "spec.yaml").exists()]


@dataclass(frozen=True)
class RunLayout:
    """``runs/<run-name>/``: resolved spec, env, status, training and eval artifacts, logs."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def spec(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def env(self) -> Path:
        return self.root / "env.json"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def metrics(self) -> Path:
        return self.train_dir / "metrics.jsonl"

    @property
    def state_dir(self) -> Path:
        """Trainer state for resume (removed when the train stage finishes unless keep_state)."""
        return self.train_dir / "state"

    def epoch_dir(self, epoch: int) -> Path:
        return self.train_dir / f"epoch_{epoch}"

    def adapter_dir(self, epoch: int) -> Path:
        return self.epoch_dir(epoch) / "adapter"

    @property
    def eval_root(self) -> Path:
        return self.root / "eval"

    def eval_dir(self, task: str, target: str) -> Path:
        return self.eval_root / task / target

    @property
    def results(self) -> Path:
        return self.eval_root / "results.json"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def log(self, stage: str, stream: str) -> Path:
        """``logs/<stage>.out`` or ``logs/<stage>.err``."""
        return self.logs_dir / f"{stage}.{stream}"

    def live(self, stage: str) -> Path:
        """``logs/<stage>.live.json``: the running stage's latest step, loss or sample count, for the
        live display of ``ck run`` (rewritten at most once a second; not kept in sync with the disk)."""
        return self.logs_dir / f"{stage}.live.json"


def folders_in(parent: Path) -> list[RunLayout]:
    """The run-like folders directly in ``parent`` (``runs/`` or ``shared/``), sorted by name: every
    folder that is not hidden and not empty, also one whose ``spec.yaml`` is lost."""
    if not parent.is_dir():
        return []
    return [RunLayout(p) for p in sorted(parent.iterdir())
            if p.is_dir() and not p.name.startswith(".") and any(p.iterdir())]
