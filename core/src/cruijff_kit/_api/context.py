"""What a stage's plugin receives: :class:`StageContext`, made by the core for every stage.

A plugin never parses user files, writes status, or picks paths itself: the context gives it the
validated config, the canonical dataset, the folders to write into and a metrics logger.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cruijff_kit._api.kinds import PluginConfig, Prompt, Resources
from cruijff_kit._api.records import PlannedRun, StageDef
from cruijff_kit._base.errors import StageError
from cruijff_kit._base.fileio import append_jsonl
from cruijff_kit._base.layout import RunLayout


@dataclass
class RunInfo:
    """The run a stage belongs to, as passed to event hooks."""

    name: str
    dir: Path
    type: str
    spec: dict[str, Any]
    sweep: dict[str, Any]


@dataclass
class Target:
    """What an eval stage evaluates: the base model, a trained epoch, or a given adapter."""

    name: str  # "base" | "epoch_<N>" | "adapter"
    adapter: Path | None
    epoch: int | None = None

    @property
    def is_base(self) -> bool:
        return self.adapter is None


@dataclass
class StageContext:
    """Everything one stage needs; built by :func:`cruijff_kit._engine.stage.run_stage`."""

    run: RunInfo
    stage: StageDef
    planned: PlannedRun
    config: PluginConfig
    hook: Any = None
    _dataset: Any = field(default=None, repr=False)
    _live: dict[str, Any] = field(default_factory=dict, repr=False)
    _live_written: float = field(default=0.0, repr=False)

    # -- where things are
    @property
    def layout(self) -> RunLayout:
        return self.planned.layout

    @property
    def run_dir(self) -> Path:
        return self.planned.layout.root

    @property
    def spec(self) -> dict[str, Any]:
        return self.planned.spec

    @property
    def seed(self) -> int:
        return int(self.spec["seed"])

    @property
    def model_id(self) -> str:
        """The model as the user named it (hub id or path as written)."""
        return self.spec["model"]["path"]

    @property
    def model_path(self) -> str:
        """Local folder of the base model when it exists, else the hub id (resolved by the loader)."""
        return self.spec["model"].get("local_path") or self.spec["model"]["path"]

    @property
    def resources(self) -> Resources:
        return Resources.model_validate(self.spec["scheduler"].get("resources", {}))

    @property
    def prompt(self) -> Prompt:
        """The resolved prompt: the eval task's when it set one, else the run's."""
        if self.stage.eval_index is not None:
            return Prompt.model_validate(self.spec["eval"][self.stage.eval_index]["prompt"])
        return Prompt.model_validate(self.spec["prompt"])

    def adapter_dir(self, epoch: int) -> Path:
        """Where a trainer writes the PEFT adapter of a 0-based epoch."""
        return self.layout.adapter_dir(epoch)

    def checkpoint_dir(self, epoch: int) -> Path:
        """``train/epoch_<N>/`` (adapter plus tokenizer files)."""
        return self.layout.epoch_dir(epoch)

    @property
    def state_dir(self) -> Path:
        """Where a trainer keeps resumable state (optimizer, step)."""
        return self.layout.state_dir

    def resume_from(self) -> Path | None:
        """The state folder when an earlier attempt of this stage left one, else None."""
        d = self.layout.state_dir
        return d if d.is_dir() and any(d.iterdir()) else None

    # -- eval
    @property
    def target(self) -> Target:
        """The eval target of this stage (raises for train stages)."""
        name = self.stage.target
        if name is None:
            raise StageError(f"stage {self.stage.name} is not an eval stage.")
        if name == "base":
            return Target("base", None)
        if name == "adapter":
            return Target("adapter", Path(self.spec["model"]["adapter"]))
        epoch = int(name.split("_", 1)[1])
        return Target(name, self.layout.adapter_dir(epoch), epoch)

    @property
    def eval_dir(self) -> Path:
        """``eval/<task>/<target>/`` for this stage."""
        assert self.stage.task and self.stage.target
        return self.layout.eval_dir(self.stage.task, self.stage.target)

    # -- data
    def dataset(self) -> Any:
        """The canonical DatasetDict (``messages`` rows), loaded once through the dataset plugin."""
        if self._dataset is None:
            self._dataset = self.planned.dataset().load(self.prompt)
        return self._dataset

    # -- reporting
    def log_metrics(self, step: int, **values: Any) -> None:
        """Append a metrics row (train: ``train/metrics.jsonl``) and tell trackers."""
        row = {"step": int(step), **values}
        path = self.layout.metrics if self.stage.kind == "train" else self.eval_dir / "metrics.jsonl"
        append_jsonl(path, row)
        if self.hook is not None:
            self.hook.metrics_logged(run=self.run, stage=self.stage.name, step=int(step), metrics=row)
        loss = values.get("train_loss", values.get("loss"))
        self.show_live(step=int(step), **({"loss": loss} if isinstance(loss, (int, float)) else {}))

    @contextmanager
    def progress(self, total: int | None, description: str) -> Iterator[Any]:
        """A progress bar on stderr (and in ``ck run``'s live display); yields an object with
        ``advance(n=1)``."""
        yield _Progress(total, description, self)

    def show_live(self, *, force: bool = False, **values: Any) -> None:
        """Merge ``values`` (``step`` and ``loss`` of training; ``what``, ``done``, ``total`` of a
        :meth:`progress`) into what ``ck run`` shows
        for this running stage (``logs/<stage>.live.json``, rewritten at most once a second)."""
        self._live.update(values)
        now = time.monotonic()
        if not force and now - self._live_written < 1.0:
            return
        self._live_written = now
        path = self.layout.live(self.stage.name)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self._live), encoding="utf-8")
            os.replace(tmp, path)
        except OSError:
            pass  # only a display: never fails the stage

    @property
    def is_distributed_worker(self) -> bool:
        """True inside a torchrun/accelerate worker process."""
        return "LOCAL_RANK" in os.environ


class _Progress:
    """Line-based progress that works in log files as well as terminals."""

    def __init__(self, total: int | None, description: str, ctx: StageContext | None = None) -> None:
        self.total, self.description, self.done = total, description, 0
        self._last = -1
        self._ctx = ctx
        self._emit()

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._emit()
        if self._ctx is not None:
            self._ctx.show_live(force=self.done == self.total, what=self.description, done=self.done,
                               total=self.total)

    def _emit(self) -> None:
        if self.total:
            pct = int(100 * self.done / self.total)
            if pct // 10 != self._last // 10 or self.done == self.total:
                self._last = pct
                print(f"[{self.description}] {self.done}/{self.total} ({pct}%)", file=sys.stderr, flush=True)
        elif self.done % 50 == 0:
            print(f"[{self.description}] {self.done}", file=sys.stderr, flush=True)
