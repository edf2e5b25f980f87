"""Run stage jobs as subprocesses with a fixed number of slots, honouring dependencies."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from cruijff_kit import PluginConfig, RunLayout, Scheduler, SchedulerConfig, StageJob, parse_memory, status

#: Exit status of a `ck stage` that refused because another process holds the stage (see `ck stage`).
CLAIMED_EXIT = 75


class LocalConfig(SchedulerConfig):
    """Options of the local scheduler."""

    slots: int | None = Field(
        None, gt=0, description="Stages at once. Default: one per GPU; on CPU as many as the cores and memory "
        "hold (cores // resources.cpus, memory // resources.memory), each with resources.cpus torch threads "
        "(cores // slots when slots is set).")
    poll_seconds: float = Field(0.2, gt=0, description="How often finished children are collected.")
    group_evals: bool = Field(
        True, description="Run the evaluations of one run that are ready at the same time in one process, "
        "one after another (the libraries and the base model load once; each target keeps its own state, "
        "results and logs).")


def visible_gpus() -> list[str]:
    """GPU ids this machine offers (CUDA_VISIBLE_DEVICES, else nvidia-smi), without importing torch."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return []
        return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU")]
    return []


def gpu_source() -> str:
    """Where :func:`visible_gpus` read the GPUs from, for messages."""
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"CUDA_VISIBLE_DEVICES={seen!r}" if seen is not None else "as nvidia-smi lists them"


def cpu_cores() -> int:
    """The CPU cores this process may use (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def memory_bytes() -> int | None:
    """This machine's physical memory, or None where it cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def cpu_slots(cfg: LocalConfig, cores: int, memory: int | None) -> tuple[int, int]:
    """(stages at once, torch threads per stage) on a machine without GPUs.

    ``slots`` set: that many, each with ``cores // slots`` threads (at least 1). Otherwise as many as
    the cores hold at ``resources.cpus`` each, and the memory at ``resources.memory`` each, at least
    one; each stage gets ``resources.cpus`` threads. The thread count depends only on the spec and the
    machine, never on what else happens to run, so a run's numbers do not depend on its neighbours.
    """
    if cfg.slots:
        return cfg.slots, max(1, cores // cfg.slots)
    cpus = cfg.resources.cpus
    slots = max(1, cores // cpus)
    if memory:
        slots = max(1, min(slots, memory // max(1, parse_memory(cfg.resources.memory))))
    return slots, cpus


@dataclass
class _Running:
    jobs: list[StageJob]
    proc: subprocess.Popen[bytes]
    gpus: list[str]
    cores: int
    started: float
    task: Any = None

    @property
    def job(self) -> StageJob:
        return self.jobs[0]


class LocalScheduler(Scheduler):
    """Runs stages here, ``slots`` at a time; ``submit`` returns when all are finished."""

    name = "local"
    Config = LocalConfig
    blocking = True
    description = "Run stages as subprocesses on this machine."

    def submit(self, jobs: list[StageJob], experiment_dir: Any, profile: PluginConfig | None) -> None:
        """Run every job (dependencies first, training before evaluations), as many at once as the
        slots allow, the ready evaluations of a run together in one process, with a live display of
        each running stage (step and loss, samples done)."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        gpus = visible_gpus()
        cores, memory = cpu_cores(), memory_bytes()
        # each run's own settings (runs may differ in them); a stage starts while fewer stages run
        # than its own run's `slots`
        own = {d: self.run_config(j) for d, j in {j.run_dir: j for j in jobs}.items()}
        slots: dict[Any, int] = {}
        threads: dict[Any, int] = {}
        for d, c in own.items():
            if gpus:
                slots[d], threads[d] = c.slots or max(1, len(gpus)), 0
            else:
                slots[d], threads[d] = cpu_slots(c, cores, memory)
        poll = min((c.poll_seconds for c in own.values()), default=self.config.poll_seconds)  # type: ignore[attr-defined]
        free_gpus = list(gpus)
        pending = sorted(jobs, key=lambda j: j.kind != "train")  # training first: evaluations wait for it
        running: list[_Running] = []
        finished: dict[str, str] = {}
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[live]}"),
                      TimeElapsedColumn(), transient=False) as progress:
            bar = progress.add_task("stages", total=len(jobs), live="")
            try:
                while pending or running:
                    for r in list(running):
                        code = r.proc.poll()
                        if code is None:
                            progress.update(r.task, live=_live_text(r.jobs))
                            continue
                        running.remove(r)
                        free_gpus.extend(r.gpus)
                        progress.remove_task(r.task)
                        for job in r.jobs:
                            state = self._settle(job, code)
                            finished[job.key] = state
                            progress.advance(bar)
                            progress.console.print(f"{'✓' if state == status.DONE else '✗'} {job.run_name} "
                                                   f"{job.stage}: {state} ({time.monotonic() - r.started:.0f}s)")
                    for job in list(pending):
                        if job not in pending:  # started with an earlier job's group
                            continue
                        verdict = self._ready(job, finished)
                        if verdict == "blocked":
                            pending.remove(job)
                            finished[job.key] = "blocked"
                            status.update_stage(job.run_dir, job.stage, state=status.PENDING,
                                                error="not run: a stage it depends on did not finish")
                            progress.advance(bar)
                            continue
                        if verdict != "ready":
                            continue
                        want = job.resources.gpus
                        if want > len(gpus):  # never started with fewer devices than it asks for
                            pending.remove(job)
                            finished[job.key] = self._refuse(job, len(gpus))
                            progress.advance(bar)
                            continue
                        if len(running) >= slots[job.run_dir] or want > len(free_gpus):
                            continue
                        # the cores a stage takes count against the machine's only where its run left
                        # `slots` to the scheduler (set by hand, slots are the user's call)
                        need = 0 if gpus or own[job.run_dir].slots else threads[job.run_dir]
                        if need and running and sum(r.cores for r in running) + need > cores:
                            continue
                        group = self._group(job, pending, finished, own)
                        taken = [g for g in group if status.stage_state(g.run_dir, g.stage) == status.SUBMITTED]
                        for g in group:
                            pending.remove(g)
                            if g not in taken:  # no longer this runner's: `ck cancel`, or taken
                                finished[g.key] = status.stage_state(g.run_dir, g.stage)
                                progress.advance(bar)
                        if not taken:
                            continue
                        mine, free_gpus = free_gpus[:want], free_gpus[want:]  # exactly what it asks
                        # `mine` is empty for a stage that asks for no GPU: it sees none, even where
                        # the machine's GPUs could not be listed here (no nvidia-smi) but torch finds them
                        proc = self._start(taken, mine, 0 if gpus else threads[job.run_dir])
                        started = _Running(taken, proc, mine, need, time.monotonic())
                        label = taken[0].stage if len(taken) == 1 else f"{len(taken)} evaluations"
                        started.task = progress.add_task(f"  {taken[0].run_name} {label}", total=None, live="")
                        running.append(started)
                    time.sleep(poll)
            except KeyboardInterrupt:
                self._stop_all(running)
                raise

    @staticmethod
    def _ready(job: StageJob, finished: dict[str, str]) -> str:
        """``ready`` (its dependencies are done), ``blocked`` (one did not finish) or ``waiting``."""
        deps = [f"{job.run_name}/{d}" for d in job.depends_on]
        if any(finished.get(d, status.DONE) != status.DONE for d in deps if d in finished):
            return "blocked"
        return "waiting" if any(d not in finished for d in deps) else "ready"

    def _group(self, job: StageJob, pending: list[StageJob], finished: dict[str, str],
               own: dict[Any, LocalConfig]) -> list[StageJob]:
        """``job`` and, for an evaluation of a run whose scheduler section has ``group_evals``, the
        other evaluations of the same run folder that are ready now (one process runs them in turn)."""
        if job.kind != "eval" or not own[job.run_dir].group_evals:
            return [job]
        return [job, *(j for j in pending if j is not job and j.kind == "eval" and j.run_dir == job.run_dir
                       and j.resources == job.resources and self._ready(j, finished) == "ready")]

    def check(self, run: Any) -> list[str] | None:
        """A note for each resources option whose stages ask for more GPUs than this machine has: those
        stages would be refused here. Each stage counts with what it asks (``eval_resources`` for an
        evaluation when set, else one GPU where ``resources`` asks any), so an evaluation-only run on a
        machine with one GPU gets no note for ``resources.gpus: 4``."""
        config: LocalConfig = self.config  # type: ignore[assignment]
        asks: dict[str, tuple[int, int]] = {}  # option -> (its value, the most GPUs a stage it decides asks)
        for stage in run.stages:
            option = config.resources_option(stage.kind) + ".gpus"
            value = (config.eval_resources or config.resources).gpus if stage.kind == "eval" else config.resources.gpus
            asks[option] = (value, max(asks.get(option, (0, 0))[1], config.stage_resources(stage.kind).gpus))
        have = len(visible_gpus())
        notes = []
        for option, (value, wanted) in asks.items():
            if wanted <= have:
                continue
            asked = "" if value == wanted else f" (its evaluations ask for {wanted})"
            notes.append(f"{option} is {value}{asked} but this machine has {have} GPU(s) ({gpu_source()}): the "
                         "local scheduler will not start those stages here (never on the CPU instead). Run the "
                         f"spec where the GPUs are, or set {option} to at most {have} (0: on the CPU).")
        return notes or None

    # -- helpers
    def run_config(self, job: StageJob) -> LocalConfig:
        """The ``scheduler:`` section of the job's own run (not of the first run of the plan)."""
        return job.scheduler(type(self)).config  # type: ignore[return-value]

    def _refuse(self, job: StageJob, have: int) -> str:
        """Fail a stage that asks for more GPUs than this machine has (it would wait forever)."""
        where, option = gpu_source(), self.run_config(job).resources_option(job.kind) + ".gpus"
        status.update_stage(job.run_dir, job.stage, state=status.FAILED, ended=status.now(), exit_code=None,
                            error=f"not started: it asks for {job.resources.gpus} GPU(s) ({option}) "
                                  f"and this machine has {have} ({where}). Run it where the GPUs are (another "
                                  f"scheduler), or set {option} to at most {have} (0: on the CPU).")
        return status.FAILED

    def _start(self, jobs: list[StageJob], gpus: list[str], threads: int) -> subprocess.Popen[bytes]:
        """Start one ``ck stage`` process for ``jobs`` (stages of one run folder), its output in the first
        stage's logs (the process moves on to each stage's own logs). ``gpus``: the devices it may see,
        set as CUDA_VISIBLE_DEVICES (an empty list, for a stage that asks for none: it sees none)."""
        job = jobs[0]
        layout = RunLayout(job.run_dir)
        layout.logs_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        if threads:  # the stage's share of the cores (a value the user set wins)
            env.setdefault("OMP_NUM_THREADS", str(threads))
        env.setdefault("PYTHONUNBUFFERED", "1")
        for j in jobs:
            layout.live(j.stage).unlink(missing_ok=True)
        out = open(layout.log(job.stage, "out"), "ab")  # noqa: SIM115 - owned by the child
        err = open(layout.log(job.stage, "err"), "ab")  # noqa: SIM115
        command = job.command() + [j.stage for j in jobs[1:]]
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env, start_new_session=True)
        out.close()
        err.close()
        for j in jobs:
            # only while the stage is still this runner's claim: a `ck stage` started by hand may have taken it
            status.update_stage(j.run_dir, j.stage, when=lambda e: e.get("state") == status.SUBMITTED,
                                scheduler=self.name, job_id=str(proc.pid), pid=proc.pid, host=os.uname().nodename)
        return proc

    def _settle(self, job: StageJob, code: int) -> str:
        """Final state of a finished child; fixes up status when the child could not (SIGKILL)."""
        state = status.stage_state(job.run_dir, job.stage)
        if code == 0 and state == status.DONE:
            return state
        if code == CLAIMED_EXIT:  # another process holds the stage's claim: its entry is that process's
            return state
        if state in (status.RUNNING, status.SUBMITTED, status.PENDING) or (code == 0 and state != status.DONE):
            new = status.INTERRUPTED if code < 0 or code in (130, 137, 143) else status.FAILED
            tail = status.tail(RunLayout(job.run_dir).log(job.stage, "err"), 15)
            status.update_stage(job.run_dir, job.stage, state=new, exit_code=code, ended=status.now(),
                                error=f"stage process exited with code {code}", error_tail=tail)
            return new
        return state

    def _stop_all(self, running: list[_Running]) -> None:
        """Ctrl-C: stop every running process (SIGTERM, then SIGKILL after 10 s); their unfinished stages
        are marked interrupted."""
        for r in running:
            try:
                os.killpg(r.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        for r in running:
            try:
                r.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(r.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                r.proc.wait()
            for job in r.jobs:
                if status.stage_state(job.run_dir, job.stage) != status.DONE:
                    status.update_stage(job.run_dir, job.stage, state=status.INTERRUPTED, ended=status.now(),
                                        error="stopped by Ctrl-C", exit_code=130)

    def cancel(self, jobs: list[StageJob]) -> None:
        """Terminate the local processes of active stages."""
        for job in jobs:
            entry = status.read(job.run_dir)["stages"].get(job.stage, {})
            pid = entry.get("pid")
            if pid and entry.get("host") in (None, os.uname().nodename):
                try:
                    os.killpg(int(pid), signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass


def _live_text(jobs: list[StageJob]) -> str:
    """What a running process is doing, from its stages' ``logs/<stage>.live.json`` (the newest)."""
    import json

    newest: tuple[float, StageJob, dict[str, Any]] | None = None
    for job in jobs:
        path = RunLayout(job.run_dir).live(job.stage)
        try:
            mtime = path.stat().st_mtime
            if newest is None or mtime > newest[0]:
                newest = (mtime, job, json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    if newest is None:
        return "starting"
    _, job, live = newest
    parts = [job.stage] if len(jobs) > 1 else []
    if "step" in live:
        parts.append(f"step {live['step']}")
    if isinstance(live.get("loss"), (int, float)):
        parts.append(f"loss {live['loss']:.4g}")
    if "done" in live:
        total = f"/{live['total']}" if live.get("total") else ""
        parts.append(f"{live.get('what') or 'done'} {live['done']}{total}")
    return " ".join(parts)


__all__ = ["LocalConfig", "LocalScheduler", "Path", "cpu_cores", "cpu_slots", "visible_gpus"]
