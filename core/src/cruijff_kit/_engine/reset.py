"""``ck reset``: set one stage of a run back to pending, moving its outputs aside to
``<folder>.reset-<time>`` (never deleted), refused while the stage still runs in a live process or job."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from cruijff_kit import status
from cruijff_kit._api.records import PlannedRun, StageJob
from cruijff_kit._base.errors import CkError, did_you_mean
from cruijff_kit._base.fileio import atomic_write_json, locked
from cruijff_kit._base.layout import RunLayout
from cruijff_kit._engine.damage import read_results
from cruijff_kit._engine.runner import _holder_alive, find_experiment
from cruijff_kit._engine.shared import pointer_of, shared_layout, used_by
from cruijff_kit.status import DamagedState


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _live_job(layout: RunLayout, stage: str, entry: dict[str, Any]) -> str | None:
    """What still runs ``stage`` (a process, a scheduler's job), or None when nothing does."""
    if entry.get("state") not in status.ACTIVE_STATES:
        return None
    sched, jid, pid, host = entry.get("scheduler") or "local", entry.get("job_id"), entry.get("pid"), entry.get("host")
    if sched == "local" or not jid:
        if pid and host not in (None, os.uname().nodename):
            return f"process {pid} on host {host} (it cannot be checked from here)"
        # its own process, or the `ck run` that claimed it and will start it
        runner = entry.get("runner") if isinstance(entry.get("runner"), dict) else {}
        return f"process {pid or runner.get('pid')}" if _holder_alive(entry) else None
    try:
        from cruijff_kit._api.registry import plugin_class

        cls = plugin_class("scheduler", sched)
        job = StageJob(layout.root.parent.parent.name, layout.name, layout.root, stage, [], None,  # type: ignore[arg-type]
                       "train" if stage == "train" else "eval")
        state = cls(cls.Config()).refresh([job]).get(str(jid))
    except CkError as exc:
        return f"{sched} job {jid} (the scheduler could not be asked: {exc})"
    return f"{sched} job {jid}" if state in status.ACTIVE_STATES else None


def _move_outputs(layout: RunLayout, stage: str, stamp: str) -> list[str]:
    """Move a stage's outputs (only folders cruijff-kit made inside the run folder) aside."""
    if stage == "train":
        if not layout.train_dir.exists():
            return []
        aside = layout.train_dir.with_name(f"train.reset-{stamp}")
        os.replace(layout.train_dir, aside)
        return [f"moved {layout.train_dir} aside to {aside.name}"]
    _, task, target = stage.split(".", 2)
    folder = layout.eval_dir(task, target)
    aside = folder.with_name(f"{target}.reset-{stamp}")
    notes = []
    if folder.exists():
        os.replace(folder, aside)
        notes.append(f"moved {folder} aside to {aside.name}")
    with locked(layout.results):
        try:
            results = read_results(layout)
        except DamagedState as exc:
            moved = status.move_aside(exc.path)
            return [*notes, f"{exc.path} was damaged: {exc.reason}; moved aside to {moved.name}"]
        entry = results.get(task, {}).pop(target, None)
        if entry is not None:
            aside.mkdir(parents=True, exist_ok=True)
            atomic_write_json(aside / "results.json", {task: {target: entry}})
            atomic_write_json(layout.results, results)
            notes.append(f"moved its result from {layout.results} to {aside.name}/results.json")
    return notes


def reset_stage(run: PlannedRun, stage: str) -> list[str]:
    """Set ``stage`` of ``run`` (and the stages that use its output) back to pending, moving their
    outputs aside. Refuses while one of them still runs in a live process or job. Returns what was done."""
    layout = run.layout
    names = [s.name for s in run.stages]
    if stage not in names:
        raise CkError(f"run {run.name} ({layout.root}) has no stage `{stage}`. {did_you_mean(stage, names)}")
    notes: list[str] = []
    try:
        entries = status.read(layout.root)["stages"]
    except DamagedState as exc:
        moved = status.move_aside(exc.path)
        status.ensure_stages(layout.root, names)
        notes.append(f"{exc.path} was damaged: {exc.reason}; moved aside to {moved.name} and rebuilt with every "
                     "stage pending.")
        entries = status.read(layout.root)["stages"]
    ptr = pointer_of(entries.get(stage, {}))
    if ptr is not None:  # the stage runs once for several runs, in its shared folder: reset it there
        from cruijff_kit._engine.stage import load_run

        shared = load_run(shared_layout(layout.root, ptr, layout.status).root)
        users = used_by(shared.spec)
        return [f"stage {stage} of run {run.name} is shared ({ptr}, for {len(users)} runs: {', '.join(users)}); "
                "resetting it there resets it for each of them.", *reset_stage(shared, stage)]
    targets = [stage, *(s.name for s in run.stages if stage in s.depends_on)]
    for name in targets:
        live = _live_job(layout, name, entries.get(name, {}))
        if live:
            raise CkError(f"{layout.status}: stage `{name}` of run {run.name} is {entries[name]['state']} in a live "
                          f"{live}. Wait until it ends, or stop it with `ck cancel SPEC`, then reset it.")
    stamp = _stamp()
    for name in targets:
        notes += _move_outputs(layout, name, stamp)
        status.update_stage(layout.root, name, state=status.PENDING, error=None, error_tail=None, exit_code=None,
                            pid=None, job_id=None, runner=None, started=None, ended=None, reset=status.now())
    notes.append(f"stage(s) {', '.join(targets)} of run {run.name}: pending.")
    return notes


def resolve_run_dir(target: str | Path, run_name: str | None) -> Path:
    """The run folder ``ck reset`` acts on: TARGET itself when it is a run folder, else the run named
    ``run_name`` of the experiment TARGET names (a spec file or an experiment folder)."""
    p = Path(target).resolve()
    if p.is_dir() and p.parent.name in ("runs", "shared") and ((p / "spec.yaml").exists() or
                                                               (p / "status.json").exists()):
        if run_name and run_name != p.name:
            raise CkError(f"{target} is the folder of run {p.name}, not of `{run_name}`. Drop --run, or give "
                          "the experiment's spec.")
        return p
    exp = find_experiment(target)
    names = sorted(d.name for d in exp.runs_dir.iterdir() if d.is_dir()) if exp.runs_dir.is_dir() else []
    if run_name is None:
        if len(names) == 1:
            return exp.runs_dir / names[0]
        raise CkError(f"{exp.root} has {len(names)} runs: say which with --run NAME "
                      f"({', '.join(names[:20])}{', ...' if len(names) > 20 else ''}), or give a run folder.")
    if run_name not in names:
        raise CkError(f"{exp.root} has no run `{run_name}`. {did_you_mean(run_name, names)}")
    return exp.runs_dir / run_name
