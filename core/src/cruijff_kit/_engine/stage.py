"""``ck stage RUN_DIR STAGE``: the one entry point that executes work, on every scheduler.

It reads the run's resolved spec, builds the stage's plugin and :class:`StageContext`, records
status and environment, runs the plugin, and marks the stage done only after it returned.
"""

from __future__ import annotations

import os
import shutil
import signal
import traceback
from pathlib import Path
from typing import Any

from cruijff_kit import status
from cruijff_kit._api.context import RunInfo, StageContext
from cruijff_kit._api.records import PlannedRun, StageDef
from cruijff_kit._base.errors import CkError, StageError
from cruijff_kit._base.fileio import atomic_write_json, load_yaml, locked, read_json
from cruijff_kit._base.layout import RunLayout
from cruijff_kit.training._distributed import CHILD_ENV, leave_worker_error


class Interrupted(BaseException):
    """Raised in a stage process that received SIGTERM or SIGINT."""


def load_run(run_dir: str | Path) -> PlannedRun:
    """Rebuild a planned run from its folder's resolved ``spec.yaml``."""
    layout = RunLayout(Path(run_dir).resolve())
    if not layout.spec.exists():
        raise StageError(f"{layout.root} is not a run folder (no spec.yaml). Run `ck run SPEC` first, or "
                         "give the path of a folder under <output_dir>/<experiment>/runs/.")
    spec = load_yaml(layout.spec.read_text())
    meta = spec["run"]
    labels = {ev_label(ev): i for i, ev in enumerate(spec.get("eval") or [])}
    stages = []
    for name in meta["stages"]:
        if name == "train":
            stages.append(StageDef("train", "train"))
            continue
        _, label, target = name.split(".", 2)
        deps = ["train"] if target.startswith("epoch_") else []
        stages.append(StageDef(name, "eval", deps, labels[label], label, target))
    return PlannedRun(meta["name"], meta["type"], spec, meta.get("sweep", {}), stages, layout,
                      Path(meta["spec_dir"]))


def ev_label(section: dict[str, Any]) -> str:
    """The folder label of a resolved eval section."""
    from cruijff_kit._api.kinds import EvalConfig

    return EvalConfig.model_validate({"task": section["task"], "name": section.get("name")}).label


def is_primary_process() -> bool:
    """True in the process that does a stage's bookkeeping.

    A trainer that relaunches the stage under torchrun/accelerate sets ``CK_STAGE_CHILD=1`` in the
    workers, so only the launching process writes status. A stage started directly by a distributed
    launcher (no parent) does its bookkeeping on rank 0 only, and under ``srun`` on task 0 only.
    """
    if os.environ.get("CK_STAGE_CHILD") == "1":
        return False
    # one `ck stage` per node under srun: only the first task of the step keeps the books
    if int(os.environ.get("SLURM_PROCID", "0") or 0) != 0:
        return False
    return int(os.environ.get("RANK", "0")) == 0


def _on_signal(signum: int, _frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def record_results(layout: RunLayout, task: str, target: str, results: dict[str, Any]) -> None:
    """Merge one eval stage's results into ``eval/results.json`` (locked, atomic)."""
    path = layout.results
    with locked(path):
        data = read_json(path, default={}) or {}
        data.setdefault(task, {})[target] = results
        atomic_write_json(path, data)


def _check_train_outputs(run: PlannedRun) -> None:
    from cruijff_kit._api.kinds import TrainConfig

    cfg = TrainConfig.model_validate({k: v for k, v in run.spec["train"].items()
                                      if k in TrainConfig.model_fields})
    missing = [e for e in cfg.saved_epochs() if not (run.layout.adapter_dir(e) / "adapter_config.json").exists()]
    if missing:
        raise StageError(f"the trainer finished without writing adapters for epochs {missing} "
                         f"(expected {run.layout.adapter_dir(missing[0])}/adapter_config.json).")


def run_stage(run_dir: str | Path, stage_name: str, *, extra_plugins: list[object] | None = None) -> dict[str, Any]:
    """Execute one stage in this process; returns the eval results (empty for train)."""
    from cruijff_kit._api.registry import registry
    from cruijff_kit._engine import envinfo

    run = load_run(run_dir)
    stage = run.stage(stage_name)
    layout = run.layout
    info = RunInfo(run.name, layout.root, run.type, run.spec, run.sweep_values)
    hook = registry().pm.hook
    primary = is_primary_process()

    for dep in stage.depends_on:
        if status.stage_state(layout.root, dep) != status.DONE:
            raise StageError(f"stage `{stage_name}` of run {run.name} needs `{dep}` to be done first "
                             f"(it is {status.stage_state(layout.root, dep)}). Run it with "
                             f"`ck stage {layout.root} {dep}` or `ck run SPEC`.")

    if stage.kind == "train":
        plugin = run.trainer()
    else:
        assert stage.eval_index is not None
        plugin = run.evaluator(stage.eval_index)
    assert plugin is not None
    ctx = StageContext(info, stage, run, plugin.config, hook=hook)

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    results: dict[str, Any] = {}
    try:
        if primary:
            prev = status.read(layout.root)["stages"].get(stage_name, {})
            status.update_stage(layout.root, stage_name, state=status.RUNNING, started=status.now(),
                                ended=None, pid=os.getpid(), attempts=int(prev.get("attempts", 0)) + 1,
                                error=None, exit_code=None)
            envinfo.record(layout.root, stage_name, int(run.spec["seed"]), run.spec["run"].get("spec_dir"))
            hook.stage_started(run=info, stage=stage_name)
            print(f"[ck] {status.now()} stage {stage_name} of run {run.name} started", flush=True)
        if stage.kind == "train":
            plugin.train(ctx)  # type: ignore[attr-defined]
            if primary:
                _check_train_outputs(run)
                if not run.spec["train"].get("keep_state") and layout.state_dir.exists():
                    shutil.rmtree(layout.state_dir, ignore_errors=True)
        else:
            results = plugin.evaluate(ctx) or {}  # type: ignore[attr-defined]
            if primary:
                record_results(layout, stage.task or "", stage.target or "", results)
    except Interrupted as exc:
        if primary:
            status.update_stage(layout.root, stage_name, state=status.INTERRUPTED, ended=status.now(),
                                error=f"interrupted by {exc}", exit_code=130)
            hook.stage_finished(run=info, stage=stage_name, state=status.INTERRUPTED, results=None)
        raise
    except CkError as exc:
        if primary:
            status.update_stage(layout.root, stage_name, state=status.FAILED, ended=status.now(),
                                error=str(exc), exit_code=exc.exit_code)
            hook.stage_finished(run=info, stage=stage_name, state=status.FAILED, results=None)
        elif os.environ.get(CHILD_ENV) == "1":  # a relaunched worker: the launching process reports it
            leave_worker_error(layout.root, stage_name, str(exc))
        raise
    except Exception as exc:
        if primary:
            tb = traceback.format_exc().splitlines()[-15:]
            status.update_stage(layout.root, stage_name, state=status.FAILED, ended=status.now(),
                                error=f"{type(exc).__name__}: {exc}", error_tail="\n".join(tb), exit_code=1)
            hook.stage_finished(run=info, stage=stage_name, state=status.FAILED, results=None)
        raise
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if primary:
        status.update_stage(layout.root, stage_name, state=status.DONE, ended=status.now(), exit_code=0)
        print(f"[ck] {status.now()} stage {stage_name} of run {run.name} done", flush=True)
        hook.stage_finished(run=info, stage=stage_name, state=status.DONE, results=results or None)
    return results
