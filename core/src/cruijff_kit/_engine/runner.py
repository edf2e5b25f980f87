"""``ck run``, ``ck status``, ``ck cancel``: write run folders, pick the stages still to do, hand them
to the scheduler, and read states back."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cruijff_kit import status
from cruijff_kit._api.kinds import Scheduler
from cruijff_kit._api.records import StageJob
from cruijff_kit._base.errors import CkError
from cruijff_kit._base.fileio import atomic_write_text, atomic_write_yaml, load_yaml
from cruijff_kit._base.layout import ExperimentLayout
from cruijff_kit._base.secrets import scrub
from cruijff_kit._engine.planner import Plan
from cruijff_kit._engine.report import plan_markdown


def write_experiment(plan: Plan) -> None:
    """Experiment ``spec.yaml`` (as given, secrets scrubbed), ``plan.md``, and each run's folder."""
    try:
        _write_experiment(plan)
    except OSError as exc:
        raise CkError(f"{plan.loaded.file}: cannot write the experiment under {plan.layout.root} "
                      f"(output_dir: {plan.loaded.model.output_dir}): {exc.strerror or exc} "
                      f"({exc.filename or ''}). Choose a writable output_dir (relative paths are relative "
                      "to the spec's folder), or free disk space.") from None


def _write_experiment(plan: Plan) -> None:
    layout = plan.layout
    layout.root.mkdir(parents=True, exist_ok=True)
    atomic_write_yaml(layout.spec, scrub(plan.loaded.raw))
    atomic_write_text(layout.plan, plan_markdown(plan))
    for run in plan.runs:
        run.layout.root.mkdir(parents=True, exist_ok=True)
        spec = scrub(run.spec)
        recorded = status.overrides(run.layout.root)
        if recorded:  # changes a scheduler made after the fact (e.g. a smaller batch after running out of memory)
            from cruijff_kit._engine.spec import apply_overrides

            spec = apply_overrides(spec, recorded, "status.json overrides")
        if not run.layout.spec.exists() or load_yaml(run.layout.spec.read_text()) != spec:
            atomic_write_yaml(run.layout.spec, spec)
        status.ensure_stages(run.layout.root, [s.name for s in run.stages])


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, PermissionError, ValueError):
        return False
    return True


def _reset_outputs(job: StageJob) -> None:
    """--force: remove a stage's outputs so it starts from scratch."""
    from cruijff_kit._base.layout import RunLayout

    layout = RunLayout(job.run_dir)
    if job.stage == "train":
        shutil.rmtree(layout.train_dir, ignore_errors=True)
    else:
        _, task, target = job.stage.split(".", 2)
        shutil.rmtree(layout.eval_dir(task, target), ignore_errors=True)


@dataclass
class Selection:
    """Jobs to submit, and how many stages were skipped because they are done or still active."""

    jobs: list[StageJob]
    skipped_done: int
    skipped_active: int
    skipped_failed: int = 0
    #: stages held back because a stage they depend on is still running in a live job
    skipped_waiting: int = 0


def select_jobs(plan: Plan, scheduler: Scheduler, *, force: bool = False, retry_failed: bool = True) -> Selection:
    """Stages still to do: not done (unless ``force``), and not active in a live job."""
    all_jobs = plan.jobs()
    live = scheduler.refresh([j for j in all_jobs]) if all_jobs else {}
    todo: list[StageJob] = []
    done = active = failed = 0
    failed_keys: set[tuple[str, str]] = set()
    active_keys: set[tuple[str, str]] = set()
    for job in all_jobs:
        entry = status.read(job.run_dir)["stages"].get(job.stage, {})
        state = entry.get("state", status.PENDING)
        if force:
            _reset_outputs(job)
            todo.append(job)
            continue
        if state == status.DONE:
            done += 1
            continue
        if state in status.ACTIVE_STATES:
            jid = entry.get("job_id")
            alive = live.get(str(jid)) in status.ACTIVE_STATES if jid and jid in live else False
            if entry.get("scheduler") == "local" or not jid:
                alive = _pid_alive(entry.get("pid")) and entry.get("host") in (None, os.uname().nodename)
            if alive:
                active += 1
                active_keys.add((job.run_name, job.stage))
                continue
        if state == status.FAILED and not retry_failed:
            failed += 1
            failed_keys.add((job.run_name, job.stage))
            continue
        todo.append(job)
    # a stage waiting for a failed stage that is not retried stays pending
    todo = [j for j in todo if not any((j.run_name, d) in failed_keys for d in j.depends_on)]
    # so does one whose dependency is still running in a live job of an earlier `ck run` (e.g. one that
    # was killed): started now it would find the dependency unfinished; the next `ck run` starts it
    waiting = [j for j in todo if any((j.run_name, d) in active_keys for d in j.depends_on)]
    todo = [j for j in todo if j not in waiting]
    keys = {(j.run_name, j.stage) for j in todo}
    for j in todo:
        j.depends_on = [d for d in j.depends_on if (j.run_name, d) in keys]
    return Selection(todo, done, active, failed, len(waiting))


def run_plan(plan: Plan, *, force: bool = False, dry_run: bool = False,
             retry_failed: bool | None = None) -> Selection:
    """Write the experiment and submit the stages still to do to the spec's scheduler.

    ``retry_failed``: submit failed stages again; None leaves it to the scheduler's
    ``retry_failed_default`` (the local scheduler retries; the slurm scheduler waits for
    ``ck run --retry-failed``).
    """
    from cruijff_kit._engine.profile import scheduler_profile

    write_experiment(plan)
    if not plan.runs:
        return Selection([], 0, 0)
    scheduler = plan.runs[0].scheduler()
    if retry_failed is None:
        retry_failed = bool(getattr(scheduler, "retry_failed_default", True))
    selection = select_jobs(plan, scheduler, force=force, retry_failed=retry_failed)
    if not selection.jobs:
        return selection
    for job in selection.jobs:
        status.update_stage(job.run_dir, job.stage, state=status.PENDING if dry_run else status.SUBMITTED,
                            scheduler=scheduler.name, submitted=status.now(), host=os.uname().nodename)
    if dry_run:
        dry = getattr(scheduler, "dry_run", None)
        if dry is not None:
            dry(selection.jobs, plan.layout.root, scheduler_profile(type(scheduler), plan.loaded.spec_dir))
        return selection
    scheduler.submit(selection.jobs, plan.layout.root, scheduler_profile(type(scheduler), plan.loaded.spec_dir))
    return selection


# --------------------------------------------------------------------------- reading back
def _is_experiment(folder: Path) -> bool:
    return (folder / "runs").is_dir() and (folder / "spec.yaml").is_file() and (folder / "plan.md").is_file()


def find_experiment(target: str | Path) -> ExperimentLayout:
    """An experiment folder from a path to it, to a spec file, or to one of its run folders."""
    p = Path(target).resolve()
    if p.is_file():
        if _is_experiment(p.parent):
            return ExperimentLayout(p.parent)
        if p.suffix in (".yaml", ".yml"):
            from cruijff_kit._engine.spec import load_spec

            return ExperimentLayout(load_spec(p).experiment_dir)
        p = p.parent
    for cand in (p, p.parent.parent):
        if _is_experiment(cand):
            return ExperimentLayout(cand)
    raise CkError(f"{target} is not an experiment folder (no runs/ and spec.yaml inside) nor a spec file. "
                  "Give the spec you ran, or <output_dir>/<experiment>.")


def experiment_status(exp: ExperimentLayout, *, refresh: bool = True) -> list[dict[str, Any]]:
    """Rows of (run, stage, state, ...) for every run of an experiment; asks schedulers once."""
    from cruijff_kit._engine.stage import load_run

    rows: list[dict[str, Any]] = []
    by_scheduler: dict[str, list[tuple[StageJob, dict[str, Any]]]] = {}
    runs = []
    for layout in exp.run_layouts():
        run = load_run(layout.root)
        runs.append(run)
        st = status.read(layout.root)["stages"]
        for s in run.stages:
            entry = dict(st.get(s.name, {"state": status.PENDING}))
            row = {"run": run.name, "stage": s.name, **entry, "sweep": run.sweep_values}
            if entry.get("state") == status.RUNNING and entry.get("scheduler") == "local" and \
                    entry.get("host") in (None, os.uname().nodename) and not _pid_alive(entry.get("pid")):
                row["state"] = status.INTERRUPTED
                row["error"] = "process is gone (killed?); `ck run` resumes it"
            rows.append(row)
            wanted = entry.get("state") in status.ACTIVE_STATES or entry.get("live") or \
                entry.get("scheduler", "local") != "local"  # the scheduler's wants_refresh decides below
            if refresh and wanted and entry.get("job_id"):
                job = StageJob(exp.root.name, run.name, layout.root, s.name, [], None, s.kind)  # type: ignore[arg-type]
                by_scheduler.setdefault(entry.get("scheduler", "local"), []).append((job, row))
    for name, items in by_scheduler.items():
        if name == "local":
            continue
        try:
            from cruijff_kit._api.registry import plugin_class

            cls = plugin_class("scheduler", name)
            sched = cls(cls.Config())
            wants = getattr(sched, "wants_refresh", None)
            items = [(j, r) for j, r in items if (wants(r) if wants is not None else
                                                   r.get("state") in status.ACTIVE_STATES or r.get("live"))]
            if not items:
                continue
            states = sched.refresh([j for j, _ in items])
        except CkError:
            continue
        for job, row in items:
            row.update(status.read(job.run_dir)["stages"].get(job.stage, {}))  # refresh may update entries
            new = states.get(str(row.get("job_id")))
            if new:
                row["state"] = new
    return rows


def cancel_experiment(exp: ExperimentLayout) -> int:
    """Cancel every active stage of an experiment; returns how many were cancelled."""
    from cruijff_kit._api.registry import plugin_class
    from cruijff_kit._engine.stage import load_run

    by_scheduler: dict[str, list[StageJob]] = {}
    active_stages: set[tuple[Path, str]] = set()
    for layout in exp.run_layouts():
        run = load_run(layout.root)
        for name, entry in status.read(layout.root)["stages"].items():
            state = entry.get("state")
            active = state in status.ACTIVE_STATES or state == status.PENDING and entry.get("job_id")
            if active or entry.get("live"):  # live: a billed resource still held for a settled stage
                kind = "train" if name == "train" else "eval"
                by_scheduler.setdefault(entry.get("scheduler") or "local", []).append(
                    StageJob(exp.root.name, run.name, layout.root, name, [], None, kind))  # type: ignore[arg-type]
                if active:
                    active_stages.add((layout.root, name))
    count = 0
    for name, jobs in by_scheduler.items():
        cls = plugin_class("scheduler", name)
        cls(cls.Config()).cancel(jobs)
        for job in jobs:
            if (job.run_dir, job.stage) not in active_stages:
                continue
            count += 1
            # a stage the scheduler found finished while cancelling (results came back) keeps its state
            if status.stage_state(job.run_dir, job.stage) not in (status.DONE, status.FAILED):
                status.update_stage(job.run_dir, job.stage, state=status.CANCELLED, ended=status.now())
    return count
