"""``ck run``, ``ck status``, ``ck cancel``: write run folders, pick the stages still to do, hand them
to the scheduler, and read states back."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cruijff_kit import status
from cruijff_kit._api.kinds import Scheduler
from cruijff_kit._api.records import StageJob
from cruijff_kit._base.errors import CkError
from cruijff_kit._base.fileio import (
    atomic_write_text,
    atomic_write_yaml,
    keep_parsed_copy,
    load_written_yaml,
    load_yaml,
)
from cruijff_kit._base.layout import ExperimentLayout, RunLayout, folders_in
from cruijff_kit._base.secrets import refuse_secret_values
from cruijff_kit._engine.damage import repair_run
from cruijff_kit._engine.planner import Plan
from cruijff_kit._engine.report import plan_markdown
from cruijff_kit._engine.shared import point_runs, resolve_entry, shared_folders, with_earlier_users
from cruijff_kit.status import DamagedState


def write_experiment(plan: Plan) -> None:
    """Experiment ``spec.yaml`` (as given), ``plan.md``, and each run's folder; refused when a spec holds a
    secret's value (files read back are never rewritten, see ``refuse_secret_values``)."""
    try:
        _write_experiment(plan)
    except OSError as exc:
        raise CkError(f"{plan.loaded.file}: cannot write the experiment under {plan.layout.root} "
                      f"(output_dir: {plan.loaded.model.output_dir}): {exc.strerror or exc} "
                      f"({exc.filename or ''}). Choose a writable output_dir (relative paths are relative "
                      "to the spec's folder), or free disk space.") from None


def _write_experiment(plan: Plan) -> None:
    layout = plan.layout
    refuse_secret_values(plan.loaded.raw, file=str(plan.loaded.file), what="spec value", base=plan.loaded.spec_dir)
    for run in plan.runs:
        refuse_secret_values(run.spec, file=str(run.layout.spec), what="resolved spec value",
                             base=plan.loaded.spec_dir)
    layout.root.mkdir(parents=True, exist_ok=True)
    atomic_write_yaml(layout.spec, plan.loaded.raw)
    atomic_write_text(layout.plan, plan_markdown(plan))
    for run in [*plan.runs, *plan.shared]:
        run.layout.root.mkdir(parents=True, exist_ok=True)
        # damaged state files: moved aside (never deleted), their stages pending again; said on stderr
        notes = repair_run(run.layout, [s.name for s in run.stages])
        spec = run.spec
        recorded = status.overrides(run.layout.root)
        if recorded:  # changes a scheduler made after the fact (e.g. a smaller batch after running out of memory)
            from cruijff_kit._engine.spec import apply_overrides

            spec = apply_overrides(spec, recorded, "status.json overrides")
        on_disk = _written_spec(run.layout.spec)
        spec = with_earlier_users(spec, on_disk)  # a shared stage serves the runs of earlier plans too
        if on_disk != spec:
            if isinstance(on_disk, DamagedState):
                notes.append(f"{on_disk.path} was damaged: {on_disk.reason}; written again from the plan.")
            elif on_disk is None and run.layout.status.exists():
                notes.append(f"{run.layout.spec} was missing; written again from the plan.")
            atomic_write_yaml(run.layout.spec, spec, parsed_copy=True)
        else:  # a run written before parsed copies were kept gets one
            keep_parsed_copy(run.layout.spec)
        status.ensure_stages(run.layout.root, [s.name for s in run.stages])
        for note in notes:
            print(f"[ck] {note}", file=sys.stderr, flush=True)
    for note in point_runs(plan):
        print(f"[ck] {note}", file=sys.stderr, flush=True)


def _written_spec(path: Path) -> Any:
    """A run's ``spec.yaml`` as written (None when missing), or the :class:`DamagedState` that reading it raised."""
    if not path.exists():
        return None
    from cruijff_kit._engine.stage import load_run

    try:
        load_run(path.parent)
    except DamagedState as exc:
        return exc
    return load_written_yaml(path)  # read once more: a parsed copy, when it matches


def _proc_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), to tell it from a later process
    that reused its pid; None where /proc is not there."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _pid_alive(pid: int | None, start: str | None = None) -> bool:
    """Process ``pid`` lives on this machine (and, when ``start`` is known, is the one that started then)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, PermissionError, ValueError, OverflowError):
        return False
    return start is None or _proc_start(int(pid)) in (None, start)


def _here() -> str:
    return os.uname().nodename


def runner_info() -> dict[str, Any]:
    """Who this `ck run` is: pid, host, process start and the time; recorded as ``runner`` in each stage
    entry it claims, and in the experiment lock."""
    return {"pid": os.getpid(), "host": _here(), "start": _proc_start(os.getpid()), "since": status.now()}


def _runner_alive(entry: dict[str, Any]) -> bool:
    runner = entry.get("runner") or {}
    return isinstance(runner, dict) and runner.get("host") in (None, _here()) and \
        _pid_alive(runner.get("pid"), runner.get("start"))


def _holder_alive(entry: dict[str, Any]) -> bool:
    """The stage's own process or the `ck run` that claimed it still lives (on this machine)."""
    if entry.get("host") in (None, _here()) and _pid_alive(entry.get("pid")):
        return True
    return _runner_alive(entry)


def stale_reason(entry: dict[str, Any]) -> str | None:
    """Why a stage entry that says ``submitted`` or ``running`` is stale (nobody will finish it), or None.

    Only entries no scheduler follows are judged here: a stage not yet handed over (no job id: its
    `ck run` died before submitting it) or run by the local scheduler, by its process and its
    runner's on this machine. A SLURM job or a RunPod pod is judged by its scheduler's ``refresh``.
    """
    state = entry.get("state")
    if state not in status.ACTIVE_STATES:
        return None
    if entry.get("job_id") and entry.get("scheduler", "local") != "local":
        return None
    if _holder_alive(entry):
        return None
    runner = entry.get("runner") if isinstance(entry.get("runner"), dict) else {}
    if (entry.get("pid") and entry.get("host") not in (None, _here())) or \
            (runner.get("pid") and runner.get("host") not in (None, _here())):
        return None  # a process on another machine: cannot be checked from here
    if state == status.RUNNING or entry.get("job_id"):
        return "process is gone (killed?); `ck run` resumes it"
    who = f"its `ck run` (pid {runner['pid']})" if runner.get("pid") else "the `ck run` that claimed it"
    return f"{who} is gone and the stage never started (killed, or the disk was full?); `ck run` runs it"


def _is_live(entry: dict[str, Any], live: dict[str, str]) -> bool:
    """The stage is active and someone is on it: its job/pod (per the scheduler), process or runner."""
    if entry.get("state") not in status.ACTIVE_STATES:
        return False
    jid = entry.get("job_id")
    if jid and entry.get("scheduler", "local") != "local":
        return live.get(str(jid)) in status.ACTIVE_STATES
    return _holder_alive(entry)


def _reset_outputs(job: StageJob) -> None:
    """--force: remove a stage's outputs so it starts from scratch.

    Only a folder inside a run folder ck wrote (``spec.yaml`` and ``status.json``) is removed, and only
    when no part of its path below the run folder is a symbolic link: --force never follows a link out
    of the run folder, and never removes what it did not create."""
    from cruijff_kit._base.layout import RunLayout

    layout = RunLayout(job.run_dir)
    if job.stage == "train":
        folder = layout.train_dir
    else:
        _, task, target = job.stage.split(".", 2)
        folder = layout.eval_dir(task, target)
    if not os.path.lexists(folder):
        return
    if not (layout.spec.is_file() and layout.status.is_file()):
        raise CkError(f"ck run --force: {layout.root} is not a run folder ck wrote (no spec.yaml and status.json), "
                      f"so {folder} is left as it is. Remove it yourself if it should go.")
    rel = folder.relative_to(layout.root)
    links = [layout.root.joinpath(*rel.parts[:i]) for i in range(1, len(rel.parts) + 1)
             if layout.root.joinpath(*rel.parts[:i]).is_symlink()]
    if links or not folder.is_dir():
        why = f"reached through the symbolic link {links[0]}" if links else "not a folder"
        raise CkError(f"ck run --force: {folder} is {why}, which ck did not create, so it is left as it is and "
                      "the stage is not redone. Remove it (only the link, for a link) and run again.")
    shutil.rmtree(folder)


@dataclass
class Selection:
    """Jobs to submit, and how many stages were skipped because they are done or still active."""

    jobs: list[StageJob]
    skipped_done: int
    skipped_active: int
    skipped_failed: int = 0
    #: stages held back because a stage they depend on is still running in a live job
    skipped_waiting: int = 0
    #: the other live `ck run`s that hold some of the skipped active stages (described)
    held_by: list[str] = field(default_factory=list)


def select_jobs(plan: Plan, scheduler: Scheduler, *, force: bool = False, retry_failed: bool = True) -> Selection:
    """Stages still to do: not done (unless ``force``), and nobody on them (a live job, pod, stage
    process or `ck run`); a stale ``submitted``/``running`` entry is taken over."""
    all_jobs = plan.jobs()
    live = scheduler.refresh([j for j in all_jobs]) if all_jobs else {}
    todo: list[StageJob] = []
    done = active = failed = 0
    failed_keys: set[tuple[str, str]] = set()
    active_keys: set[tuple[str, str]] = set()
    held_by: dict[str, None] = {}
    stale: dict[tuple[str, str], bool] = {}  # active in status.json, and nobody on it
    for job in all_jobs:
        entry = status.read(job.run_dir)["stages"].get(job.stage, {})
        state = entry.get("state", status.PENDING)
        stale[(job.run_name, job.stage)] = state in status.ACTIVE_STATES
        if _is_live(entry, live):  # even --force never takes a stage from under a live process
            active += 1
            active_keys.add((job.run_name, job.stage))
            runner = entry.get("runner")
            if _runner_alive(entry) and isinstance(runner, dict) and runner.get("pid") != os.getpid():
                held_by[status.describe_holder(runner)] = None
            continue
        if force:
            _reset_outputs(job)
            todo.append(job)
            continue
        if state == status.DONE:
            done += 1
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
    chosen = {(j.run_name, j.stage) for j in todo} | active_keys
    for job in all_jobs:  # a stale claim of a stage held back is let go: it waits, nobody is on it
        if (job.run_name, job.stage) not in chosen and stale[(job.run_name, job.stage)]:
            status.update_stage(job.run_dir, job.stage, when=lambda e: not _holder_alive(e), state=status.PENDING,
                                runner=None, error="not run yet: a stage it depends on is still running or did not finish; "
                                      "the next `ck run` starts it")
    _trim_dependencies(todo)
    return Selection(todo, done, active, failed, len(waiting), list(held_by))


def _trim_dependencies(jobs: list[StageJob]) -> None:
    """Keep in each job's ``depends_on`` only the stages submitted with it (the others are done)."""
    keys = {(j.run_name, j.stage) for j in jobs}
    for j in jobs:
        j.depends_on = [d for d in j.depends_on if (j.run_name, d) in keys]


#: The experiment's lock, held by `ck run` while it chooses and claims stages (and, on a scheduler
#: that does not block, while it submits them); the kernel drops it when that process dies.
RUN_LOCK = ".ck-run.lock"
#: How long a `ck run` waits for another one to finish choosing its stages.
RUN_LOCK_WAIT = 15.0


def _another_runner(root: Path, holder: dict[str, Any]) -> CkError:
    who = status.describe_holder(holder) if holder else "another process"
    return CkError(f"another `ck run` ({who}) is running this experiment ({root}); wait for it, or stop it "
                   f"with `ck cancel {root}`. Nothing was started by this one.")


@contextmanager
def experiment_lock(root: Path, wait: float = RUN_LOCK_WAIT) -> Iterator[None]:
    """Hold ``<experiment>/.ck-run.lock``: one `ck run` at a time chooses and claims stages.

    Waits up to ``wait`` seconds for another holder, then raises a :class:`CkError` naming it.
    """
    import time

    path = root / RUN_LOCK
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = status.hold_lock(path, runner_info())
        except OSError as exc:
            raise CkError(f"cannot take the experiment's lock {path}: {exc.strerror or exc}. Choose a writable "
                          "output_dir (relative paths are relative to the spec's folder), or free disk "
                          "space.") from None
        if fd is not None:
            break
        if time.monotonic() >= deadline:
            raise _another_runner(root, status.lock_holder(path))
        time.sleep(0.1)
    try:
        yield
    finally:
        status.release_lock(fd)


def _claim(jobs: list[StageJob], scheduler: Scheduler, dry_run: bool) -> list[StageJob]:
    """Mark each job's stage ``submitted`` by this `ck run` (``pending`` for a dry run), unless a
    process took it since it was chosen (compare-and-set); returns the jobs claimed."""
    me, host = runner_info(), _here()
    lost: set[tuple[str, str]] = set()
    for job in jobs:
        ok = status.update_stage(
            job.run_dir, job.stage, when=lambda e: not _holder_alive(e) or e.get("state") not in status.ACTIVE_STATES,
            state=status.PENDING if dry_run else status.SUBMITTED, scheduler=scheduler.name,
            submitted=status.now(), host=host, runner=None if dry_run else me, job_id=None, pid=None)
        if not ok:
            lost.add((job.run_name, job.stage))
    kept = [j for j in jobs if (j.run_name, j.stage) not in lost]
    while True:  # a stage whose dependency was taken waits for the next `ck run`
        held = [j for j in kept if any((j.run_name, d) in lost for d in j.depends_on)]
        if not held:
            break
        for j in held:
            lost.add((j.run_name, j.stage))
            status.update_stage(j.run_dir, j.stage, state=status.PENDING, runner=None,
                                error="not run: a stage it depends on was taken by another process")
        kept = [j for j in kept if j not in held]
    return kept


def run_plan(plan: Plan, *, force: bool = False, dry_run: bool = False,
             retry_failed: bool | None = None) -> Selection:
    """Write the experiment and submit the stages still to do to the spec's scheduler.

    ``retry_failed``: submit failed stages again; None leaves it to the scheduler's
    ``retry_failed_default`` (the local scheduler retries; the slurm scheduler waits for
    ``ck run --retry-failed``).

    One runner per stage: under the experiment lock (:func:`experiment_lock`) it chooses the stages
    nobody is on and claims each (``submitted``, with this process as ``runner``). A scheduler that
    blocks (local) lets go of the lock once its stages are claimed, so a second `ck run` may run
    other stages; one that does not (SLURM, RunPod) keeps it until they are submitted. When every
    stage left to do is held by another live `ck run`, this one stops with a :class:`CkError`.
    """
    from cruijff_kit._engine.profile import scheduler_profile

    with ExitStack() as stack:
        stack.enter_context(experiment_lock(plan.layout.root))
        write_experiment(plan)
        if not plan.runs:
            return Selection([], 0, 0)
        scheduler = plan.runs[0].scheduler()
        if retry_failed is None:
            retry_failed = bool(getattr(scheduler, "retry_failed_default", True))
        selection = select_jobs(plan, scheduler, force=force, retry_failed=retry_failed)
        selection.jobs = _claim(selection.jobs, scheduler, dry_run)
        if not selection.jobs:
            if selection.held_by and not dry_run:
                raise CkError(f"another `ck run` ({'; '.join(selection.held_by)}) is running this experiment "
                              f"({plan.layout.root}) and holds the stages left to do; this one started nothing. "
                              f"Wait for it, or stop it with `ck cancel {plan.layout.root}`.")
            return selection
        profile = scheduler_profile(type(scheduler), plan.loaded.spec_dir)
        if dry_run:
            dry = getattr(scheduler, "dry_run", None)
            if dry is not None:
                dry(selection.jobs, plan.layout.root, profile)
            return selection
        if scheduler.blocking:
            stack.close()  # the stages are claimed: another `ck run` may take the others meanwhile
        scheduler.submit(selection.jobs, plan.layout.root, profile)
    return selection


# --------------------------------------------------------------------------- reading back
def _is_experiment(folder: Path) -> bool:
    if not (folder / "runs").is_dir():
        return False
    if (folder / "spec.yaml").is_file() and (folder / "plan.md").is_file():
        return True
    # its spec.yaml or plan.md lost: still an experiment when runs/ holds run folders (with a status.json)
    return any((d / "status.json").exists() for d in (folder / "runs").iterdir())


def experiment_damage(exp: ExperimentLayout) -> list[str]:
    """One line per missing or damaged experiment file (``spec.yaml``, ``plan.md``): nothing reads them
    back, so they only need writing again."""
    fix = "`ck run SPEC` (or `ck plan SPEC` for plan.md) writes it again."
    lines = []
    for path in (exp.spec, exp.plan):
        reason = None
        try:
            raw = path.read_bytes()
            if not raw.strip():
                reason = f"it is empty ({len(raw)} bytes)"
            elif path == exp.spec and not isinstance(load_yaml(raw.decode("utf-8")), dict):
                reason = "it is not a YAML mapping"
            else:
                raw.decode("utf-8")
        except FileNotFoundError:
            reason = "it is missing"
        except UnicodeDecodeError:
            reason = "it is not UTF-8 text"
        except yaml.YAMLError:
            reason = "it is not valid YAML (cut short?)"
        if reason:
            lines.append(f"{path} is damaged: {reason}. {fix}")
    return lines


def find_experiment(target: str | Path) -> ExperimentLayout:
    """An experiment folder from a path to it, to a spec file, or to one of its run folders."""
    p = Path(target).resolve()
    if p.is_file():
        if _is_experiment(p.parent):
            return ExperimentLayout(p.parent)
        if p.suffix in (".yaml", ".yml"):
            from cruijff_kit._engine.spec import load_spec

            folder = Path(load_spec(p).experiment_dir)
            if not (folder / "runs").is_dir():  # nothing to show, and nothing to write a summary beside
                raise CkError(f"{target} has not been run yet: its experiment folder {folder} holds no runs/. "
                              f"`ck run {target}` runs it (`ck plan {target}` shows what it would do).")
            return ExperimentLayout(folder)
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
    shared_states: dict[Path, dict[str, Any]] = {}  # each shared folder's status.json, read once
    for layout in run_folders(exp):
        try:
            run = load_run(layout.root)
        except DamagedState as exc:  # shown as damaged; the other runs are still listed
            rows.append(damaged_row(layout.name, None, exc, {}))
            continue
        runs.append(run)
        try:
            st = status.read(layout.root)["stages"]
        except DamagedState as exc:
            rows += [damaged_row(run.name, s.name, exc, run.sweep_values) for s in run.stages]
            continue
        for s in run.stages:
            try:
                where = resolve_entry(layout.root, s.name, dict(st.get(s.name, {"state": status.PENDING})),
                                      shared_states)
            except DamagedState as exc:
                rows.append(damaged_row(run.name, s.name, exc, run.sweep_values))
                continue
            entry = dict(where.entry)
            row = {"run": run.name, "stage": s.name, **entry, "sweep": run.sweep_values}
            if where.shared:
                row["shared"] = where.shared
            stale = stale_reason(entry)  # submitted/running, but its process and its `ck run` are gone
            if stale:
                row["state"] = status.INTERRUPTED
                row["error"] = stale
            rows.append(row)
            wanted = entry.get("state") in status.ACTIVE_STATES or entry.get("live") or \
                entry.get("scheduler", "local") != "local"  # the scheduler's wants_refresh decides below
            if refresh and wanted and entry.get("job_id"):
                job = StageJob(exp.root.name, where.layout.name, where.layout.root, s.name, [], None,  # type: ignore[arg-type]
                               s.kind)
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
        after: dict[Path, dict[str, Any]] = {}  # refresh may have updated entries: each file read again, once
        for job, row in items:
            if job.run_dir not in after:
                after[job.run_dir] = status.read(job.run_dir)["stages"]
            row.update(after[job.run_dir].get(job.stage, {}))
            new = states.get(str(row.get("job_id")))
            if new:
                row["state"] = new
    return rows


def run_folders(exp: ExperimentLayout) -> list[RunLayout]:
    """Every run folder of an experiment, also one whose ``spec.yaml`` is lost (it is shown damaged)."""
    return folders_in(exp.runs_dir)


def damaged_row(run: str, stage: str | None, exc: DamagedState, sweep: dict[str, Any]) -> dict[str, Any]:
    """A ``ck status`` row for a stage (``None``: every stage) whose state cannot be read."""
    return {"run": run, "stage": stage, "state": status.DAMAGED, "damaged": str(exc.path), "error": str(exc),
            "sweep": sweep}


def cancel_experiment(exp: ExperimentLayout) -> int:
    """Cancel every active stage of an experiment; returns how many were cancelled.

    Every run it can read is cancelled, whatever happens to the others. A run whose ``status.json``
    is damaged (its stages, processes and jobs cannot be read), or a scheduler that fails to cancel,
    is named afterwards in one :class:`CkError` (after all the rest is done) saying how many stages
    were cancelled, what was not and how to stop it.
    """
    from cruijff_kit._api.registry import plugin_class

    by_scheduler: dict[str, list[StageJob]] = {}
    active_stages: set[tuple[Path, str]] = set()
    problems: list[str] = []
    # a run's spec.yaml is not needed: a lost one does not stop this; a shared stage is its folder's
    for layout in [*run_folders(exp), *shared_folders(exp)]:
        try:
            entries = status.read(layout.root)["stages"]
        except DamagedState as exc:
            problems.append(f"run {layout.name}: {exc.path} is damaged ({exc.reason}), so its stages, processes "
                            f"and jobs cannot be read; stop what still runs of it by hand (the lock files in "
                            f"{layout.root / '.claims'} name the pid, host and job of each running stage), then "
                            "`ck reset RUN_DIR STAGE` or `ck run SPEC` rebuilds the file")
            continue
        for name, entry in entries.items():
            state = entry.get("state")
            active = state in status.ACTIVE_STATES or state == status.PENDING and entry.get("job_id")
            if active or entry.get("live"):  # live: a billed resource still held for a settled stage
                kind = "train" if name == "train" else "eval"
                by_scheduler.setdefault(entry.get("scheduler") or "local", []).append(
                    StageJob(exp.root.name, layout.name, layout.root, name, [], None, kind))  # type: ignore[arg-type]
                if active:
                    active_stages.add((layout.root, name))
    count = 0
    for name, jobs in by_scheduler.items():
        try:
            cls = plugin_class("scheduler", name)
            cls(cls.Config()).cancel(jobs)
        except CkError as exc:
            problems.append(f"the {name} scheduler could not cancel {len(jobs)} stage(s) "
                            f"({', '.join(f'{j.run_name} {j.stage}' for j in jobs)}): {exc}")
            continue
        for job in jobs:
            if (job.run_dir, job.stage) not in active_stages:
                continue
            try:
                # a stage the scheduler found finished while cancelling (results came back) keeps its state
                if status.stage_state(job.run_dir, job.stage) not in (status.DONE, status.FAILED):
                    status.update_stage(job.run_dir, job.stage, state=status.CANCELLED, ended=status.now())
            except DamagedState as exc:  # damaged meanwhile: it was stopped, but cannot be marked
                problems.append(f"run {job.run_name} {job.stage}: stopped, but {exc.path} is damaged "
                                f"({exc.reason}) and cannot say so; {exc.fix}")
            count += 1
    if problems:
        raise CkError(f"Cancelled {count} stage(s) of {exp.root.name}; could not cancel everything: "
                      + "; ".join(problems) + ".")
    return count
