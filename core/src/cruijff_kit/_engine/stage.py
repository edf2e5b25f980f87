"""``ck stage RUN_DIR STAGE``: the one entry point that executes work, on every scheduler.

It reads the run's resolved spec, builds the stage's plugin and :class:`StageContext`, records
status and environment, runs the plugin, and marks the stage done only after it returned. What it
and the processes it starts print goes through a log filter that scrubs secret values
(:func:`filter_output`) and moves known third-party noise to ``logs/<stage>.noise.log``
(:func:`quiet_stage`, :mod:`cruijff_kit._base.noise`).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from cruijff_kit import status
from cruijff_kit._api.context import RunInfo, StageContext
from cruijff_kit._api.records import PlannedRun, StageDef
from cruijff_kit._base.errors import CkError, StageError, clip
from cruijff_kit._base.fileio import load_written_yaml
from cruijff_kit._base.layout import RunLayout
from cruijff_kit._base.noise import (
    NOISE_FILE_ENV,
    NOISE_START_ENV,
    count_line,
    file_of_descriptor,
    file_size,
    quiet,
    show_noise,
    side_file_of,
)
from cruijff_kit._base.secrets import secret_values
from cruijff_kit._engine.damage import record_results
from cruijff_kit.training._distributed import CHILD_ENV, leave_worker_error


class Interrupted(BaseException):
    """Raised in a stage process that received SIGTERM or SIGINT."""


#: How to recover from a damaged run ``spec.yaml`` (it is derived from the experiment's spec).
RUN_SPEC_FIX = ("It is derived from the experiment's spec: `ck run SPEC` (the spec and --set values that made "
                "this run) writes it again, keeping the run's status and outputs.")


def load_run(run_dir: str | Path) -> PlannedRun:
    """Rebuild a planned run from its folder's resolved ``spec.yaml``.

    A folder under ``runs/`` without one, or one that is empty, cut short, not text or not a resolved
    run spec raises :class:`~cruijff_kit.status.DamagedState` naming it and saying ``ck run SPEC``.
    """
    layout = RunLayout(Path(run_dir).resolve())
    if not layout.spec.exists():
        if layout.root.parent.name in ("runs", "shared") and layout.root.is_dir() and any(layout.root.iterdir()):
            raise status.DamagedState(layout.spec, "it is missing", RUN_SPEC_FIX)
        raise StageError(f"{layout.root} is not a run folder (no spec.yaml). Run `ck run SPEC` first, or "
                         "give the path of a folder under <output_dir>/<experiment>/runs/.")
    try:
        raw = layout.spec.read_bytes()
        if not raw.strip():
            raise status.DamagedState(layout.spec, f"it is empty ({len(raw)} bytes)", RUN_SPEC_FIX)
        return _planned_run(load_written_yaml(layout.spec, raw), layout)
    except UnicodeDecodeError as exc:
        raise status.DamagedState(layout.spec, f"it is not UTF-8 text (byte {exc.start} is not text)",
                                  RUN_SPEC_FIX) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise status.DamagedState(layout.spec, f"it is not valid YAML (cut short?){where}", RUN_SPEC_FIX) from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise status.DamagedState(layout.spec, f"it is not a resolved run spec ({type(exc).__name__}: "
                                               f"{clip(str(exc), 120)})", RUN_SPEC_FIX) from None


def _planned_run(spec: Any, layout: RunLayout) -> PlannedRun:
    """The run a resolved spec describes; a spec of the wrong shape raises KeyError, TypeError or ValueError."""
    if not isinstance(spec, dict) or not isinstance(spec.get("run"), dict):
        raise TypeError(f"it holds {type(spec).__name__}, with no `run:` mapping")
    meta = spec["run"]
    labels = {ev_label(ev): i for i, ev in enumerate(spec.get("eval") or [])}
    stages = []
    for name in meta["stages"]:
        if name == "train":
            stages.append(StageDef("train", "train"))
            continue
        _, label, target = str(name).split(".", 2)
        deps = ["train"] if target.startswith("epoch_") else []
        stages.append(StageDef(name, "eval", deps, labels[label], label, target))
    return PlannedRun(str(meta["name"]), str(meta["type"]), spec, dict(meta.get("sweep") or {}), stages, layout,
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


def _check_train_outputs(run: PlannedRun) -> None:
    from cruijff_kit._api.kinds import TrainConfig

    cfg = TrainConfig.model_validate({k: v for k, v in run.spec["train"].items()
                                      if k in TrainConfig.model_fields})
    missing = [e for e in cfg.saved_epochs() if not (run.layout.adapter_dir(e) / "adapter_config.json").exists()]
    if missing:
        raise StageError(f"the trainer finished without writing adapters for epochs {missing} "
                         f"(expected {run.layout.adapter_dir(missing[0])}/adapter_config.json).")


#: Exit status of a ``ck stage`` that found its stage claimed by another live process (EX_TEMPFAIL).
CLAIMED_EXIT = 75


class StageClaimed(StageError):
    """Another live process holds the claim of this stage: a second executor refuses, writing nothing."""

    exit_code = CLAIMED_EXIT


def claim_path(layout: RunLayout, stage_name: str) -> Path:
    """The file whose lock is a stage's claim: ``<run>/.claims/<stage>.lock``."""
    return layout.root / ".claims" / f"{stage_name}.lock"


def _job_here() -> str | None:
    """The scheduler's id of the job this process runs in (SLURM job or array task, RunPod pod), if any."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or env.get("RUNPOD_POD_ID") or None


def claim_stage(run: PlannedRun, stage_name: str) -> int:
    """Take the stage's claim (an exclusive lock the kernel drops when this process dies, SIGKILL
    included), recording pid, host, start time and job id; returns the descriptor that holds it.

    Raises :class:`StageClaimed` naming the holder when another live process has it.
    """
    path = claim_path(run.layout, stage_name)
    holder = {"pid": os.getpid(), "host": os.uname().nodename, "since": status.now(), "job": _job_here(),
              "stage": stage_name}
    try:
        fd = status.hold_lock(path, holder)
    except OSError as exc:
        raise StageError(f"cannot take the claim of stage `{stage_name}` of run {run.name} ({path}): "
                         f"{exc.strerror or exc}. Free disk space or fix the folder's permissions, then run "
                         "it again.") from None
    if fd is None:
        raise StageClaimed(f"stage `{stage_name}` of run {run.name} is already being run by "
                           f"{status.describe_holder(status.lock_holder(path))} (claim {path}); a second "
                           "`ck stage` would do the same work twice, so this one stops without touching it. "
                           "Wait for it to finish, or stop it with `ck cancel`; its claim ends with its process.")
    return fd


#: Set in a ``ck stage`` whose output goes through its log filter, and so in every process it starts
#: (relaunched workers, launchers, tools), which write into the same filtered pipes.
LOG_FILTER_ENV = "CK_LOG_FILTERED"
#: How long a ``ck stage`` that ends waits for its log filter to write the last lines.
FILTER_DRAIN_SECONDS = 5.0
_FILTER_CODE = "from cruijff_kit._base.noise import quiet_log_filter_main; quiet_log_filter_main()"


def _is_log(fd: int) -> bool:
    """Whether ``fd`` is open and not a terminal (a file or pipe a scheduler gave: the stage's log)."""
    try:
        os.fstat(fd)
    except OSError:
        return False
    return not os.isatty(fd)


def _std_descriptors() -> bool:
    """Whether Python's stdout and stderr are descriptors 1 and 2 (not captured in-process by a caller)."""
    try:
        return sys.stdout.fileno() == 1 and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


def _noise_file(fd: int) -> Path | None:
    """The side file of the log on ``fd`` (``logs/<stage>.err`` -> ``logs/<stage>.noise.log``), where
    the log filter keeps the known third-party noise it hides; None when every message is shown or
    the log is not a file."""
    log = None if show_noise() else file_of_descriptor(fd)
    return side_file_of(log) if log is not None else None


@contextmanager
def quiet_stage(run_dir: str | Path, stage_name: str) -> Iterator[None]:
    """Hide this process's known third-party warnings and log records (:mod:`cruijff_kit._base.noise`)
    while a stage runs, keeping them in ``logs/<stage>.noise.log``. Behind the log filter, its side file
    is used and the filter writes the count line at its end (with the lines it hid); otherwise the
    line ``ck: hid N known third-party messages (full text: FILE)`` is printed here at the stage's end."""
    if show_noise():
        yield
        return
    shared = os.environ.get(NOISE_FILE_ENV) if os.environ.get(LOG_FILTER_ENV) == "1" else None
    path = Path(shared) if shared else RunLayout(Path(run_dir).resolve()).logs_dir / f"{stage_name}.noise.log"
    with quiet(path) as sink:
        try:
            yield
        finally:
            if not shared and sink.count:
                print(count_line(sink.count, path), file=sys.stderr, flush=True)


def filter_output() -> None:
    """Send what this ``ck stage`` process, and every process it starts, writes to stdout and stderr
    (the stage's ``logs/<stage>.out|.err`` under every scheduler) through a log filter process that
    replaces secret values with ``<NAME>`` (:class:`cruijff_kit._base.secrets.StreamScrubber`).

    The stage's work stays in this process (its pid, claim, signals and exit code are unchanged); only
    its descriptors 1 and 2 become pipes to the filter. Nothing is done for a terminal, or in a process
    whose output is already filtered or captured in-process. The filter ends when every writer has closed the pipes; when this
    process dies without ending normally (SIGKILL), the filter stops the processes left in its process
    group (see :func:`cruijff_kit._base.secrets.filter_log_streams`), secrets set or not.
    """
    if os.environ.get(LOG_FILTER_ENV) == "1" or not _std_descriptors():
        return
    streams = [fd for fd in (1, 2) if _is_log(fd)]
    if not streams:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    noise = _noise_file(2 if 2 in streams else streams[-1])
    env = None if noise is None else {**os.environ, NOISE_FILE_ENV: str(noise), NOISE_START_ENV: str(file_size(noise))}
    pipes = {fd: os.pipe() for fd in streams}  # not inheritable until placed on 1 and 2
    ctl_r, ctl_w = os.pipe()
    args = [str(os.getpid()), str(ctl_r), "1" if os.getpgrp() == os.getpid() else "0",
            *(f"{r}:{fd}" for fd, (r, _w) in pipes.items())]
    try:
        proc = subprocess.Popen([sys.executable, "-c", _FILTER_CODE, *args], stdin=subprocess.DEVNULL, env=env,
                                pass_fds=[ctl_r, *(r for r, _w in pipes.values())], start_new_session=True)
    except OSError as exc:
        for fd in (ctl_r, ctl_w, *(f for pair in pipes.values() for f in pair)):
            os.close(fd)
        if not secret_values():
            return  # nothing to keep out: the stage runs as it always did
        raise StageError(f"cannot start the log filter that keeps secret values out of this stage's logs: "
                         f"{exc.strerror or exc}. Free memory or processes, or unset the secret environment "
                         "variables this stage does not need, then run it again.") from None
    os.close(ctl_r)
    saved = {}
    for fd, (r, w) in pipes.items():
        os.close(r)
        saved[fd] = os.dup(fd)  # the log itself, not inherited: written again at the end
        os.dup2(w, fd)
        os.close(w)
    os.environ[LOG_FILTER_ENV] = "1"
    if noise is not None:  # this process, and those it starts, keep their hidden warnings there too
        os.environ[NOISE_FILE_ENV] = str(noise)
    global _ACTIVE_FILTER
    if _ACTIVE_FILTER is None and not _FILTER_AT_EXIT:
        atexit.register(end_filter)
        _FILTER_AT_EXIT.append(True)
    _ACTIVE_FILTER = (proc, ctl_w, saved, os.getpid())


#: The log filter this process started and has not ended: (process, control pipe, saved logs, owner pid).
_ACTIVE_FILTER: tuple[subprocess.Popen[bytes], int, dict[int, int], int] | None = None
_FILTER_AT_EXIT: list[bool] = []


def end_filter() -> None:
    """End this process's log filter, if it started one (:func:`filter_output`): the last lines are
    written and descriptors 1 and 2 are the logs again. Called at exit, and between the stages of a
    several-stage ``ck stage`` before it moves on to the next stage's logs."""
    global _ACTIVE_FILTER
    active, _ACTIVE_FILTER = _ACTIVE_FILTER, None
    if active is not None:
        _end_filter(*active)
        os.environ.pop(LOG_FILTER_ENV, None)
        os.environ.pop(NOISE_FILE_ENV, None)


def _end_filter(proc: subprocess.Popen[bytes], control: int, saved: dict[int, int], owner: int) -> None:
    """Flush, tell the filter this is a normal end, give the logs back to 1 and 2 (closing the
    pipes), and wait a little for the filter to write the last lines."""
    if os.getpid() != owner:  # a forked child that exits through atexit: not its filter
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)  # C and C++ libraries' buffered output, still to the filter
    except (OSError, AttributeError):
        pass
    try:
        os.write(control, b"x")
    except OSError:
        pass
    for fd, log in saved.items():
        os.dup2(log, fd)
        os.close(log)
    os.close(control)
    try:
        proc.wait(timeout=FILTER_DRAIN_SECONDS)
    except subprocess.TimeoutExpired:  # a process this stage started still holds the pipes
        pass


def run_stage(run_dir: str | Path, stage_name: str, *, extra_plugins: list[object] | None = None) -> dict[str, Any]:
    """Execute one stage in this process, holding its claim (see :func:`claim_stage`) until its end
    is recorded; returns the eval results (empty for train)."""
    claim: int | None = None
    run_dir = shared_folder_of(run_dir, stage_name)
    if is_primary_process():
        run = load_run(run_dir)
        run.stage(stage_name)  # an unknown stage is refused before any claim file is made
        claim = claim_stage(run, stage_name)
    try:
        with quiet_stage(run_dir, stage_name):
            return _run_stage(run_dir, stage_name, extra_plugins=extra_plugins)
    finally:
        if claim is not None:
            status.release_lock(claim)


def run_stages(run_dir: str | Path, stage_names: list[str]) -> dict[str, str]:
    """Execute several stages of the run in ``run_dir`` one after another in this process (the
    evaluations of a run's targets: libraries are imported once, and an evaluator may keep the base
    model loaded between them); returns each stage's final state.

    Each stage keeps what a stage of its own has: its claim, its ``status.json`` entry (``done`` as
    soon as it finishes, so a kill redoes only the unfinished ones), its results, and, when this
    process writes to the first stage's ``logs/<stage>.out|.err`` (as the local scheduler starts it),
    its own logs. A stage that fails is recorded failed and the next one still runs; an interruption
    (SIGTERM, SIGINT) stops them all.
    """
    from cruijff_kit._base.errors import ExitCode

    layout = RunLayout(Path(run_dir).resolve())
    per_stage_logs = _writes_to_logs_of(layout, stage_names[0])
    states: dict[str, str] = {}
    for i, name in enumerate(stage_names):
        if i and per_stage_logs:
            _switch_logs(layout, name)
        try:
            run_stage(run_dir, name)
            states[name] = status.DONE
        except StageClaimed as exc:
            print(f"Error: {exc}", file=sys.stderr, flush=True)
            states[name] = "claimed"
        except CkError as exc:
            print(f"Error: {exc}", file=sys.stderr, flush=True)
            states[name] = status.INTERRUPTED if exc.exit_code == ExitCode.INTERRUPTED else status.FAILED
        except Exception:  # noqa: BLE001 - recorded in the stage's status by run_stage; the next stage runs
            traceback.print_exc()
            states[name] = status.FAILED
    return states


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _writes_to_logs_of(layout: RunLayout, stage_name: str) -> bool:
    """Whether this process's output is the stage's own ``logs/<stage>.out|.err`` (behind the log
    filter or not): then each further stage of a several-stage ``ck stage`` gets its own logs."""
    if not _std_descriptors():
        return False
    fds = {1: 1, 2: 2}
    if _ACTIVE_FILTER is not None:
        fds = {fd: log for fd, log in _ACTIVE_FILTER[2].items()}
    return all(_same_file(fds.get(fd, fd), layout.log(stage_name, stream)) for fd, stream in ((1, "out"), (2, "err")))


def _switch_logs(layout: RunLayout, stage_name: str) -> None:
    """Send this process's stdout and stderr to ``stage_name``'s logs (through a new log filter when
    one was running)."""
    filtered = _ACTIVE_FILTER is not None
    sys.stdout.flush()
    sys.stderr.flush()
    end_filter()
    layout.logs_dir.mkdir(parents=True, exist_ok=True)
    for fd, stream in ((1, "out"), (2, "err")):
        log = os.open(layout.log(stage_name, stream), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, fd)
        os.close(log)
    if filtered:
        filter_output()


def shared_folder_of(run_dir: str | Path, stage_name: str) -> Path:
    """The folder that executes ``stage_name`` of the run in ``run_dir``: the shared folder its status
    entry points to (said on stderr), else ``run_dir`` itself."""
    from cruijff_kit._engine.shared import pointer_of, shared_layout

    try:
        entry = status.read(Path(run_dir))["stages"].get(stage_name, {})
    except status.DamagedState:
        return Path(run_dir)  # load_run and the claim say what is wrong
    ptr = pointer_of(entry)
    if ptr is None:
        return Path(run_dir)
    shared = shared_layout(Path(run_dir), ptr, Path(run_dir) / "status.json").root
    print(f"[ck] stage {stage_name} of {Path(run_dir).name} is shared: it runs once, in {shared}", file=sys.stderr,
          flush=True)
    return shared


def _run_stage(run_dir: str | Path, stage_name: str, *, extra_plugins: list[object] | None = None) -> dict[str, Any]:
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
                                ended=None, pid=os.getpid(), host=os.uname().nodename, claim_job=_job_here(),
                                attempts=int(prev.get("attempts", 0)) + 1,
                                error=None, exit_code=None)
            envinfo.record(layout.root, stage_name, int(run.spec["seed"]), run.spec["run"].get("spec_dir"))
            hook.stage_started(run=info, stage=stage_name)
            print(f"[ck] {status.now()} stage {stage_name} of run {run.name} started", flush=True)
        if primary and plugin.uses_gpus():
            from cruijff_kit._api.kinds import SchedulerConfig
            from cruijff_kit._engine.devices import require_gpus

            section = run.spec["scheduler"]
            common = SchedulerConfig.common_of(section)
            require_gpus(common.stage_resources(stage.kind).gpus, f"stage {stage_name} of run {run.name}",
                         common.resources_option(stage.kind) + ".gpus")
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
