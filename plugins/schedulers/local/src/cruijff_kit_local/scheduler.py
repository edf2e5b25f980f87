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

from cruijff_kit import PluginConfig, RunLayout, Scheduler, SchedulerConfig, StageJob, status

#: Exit status of a `ck stage` that refused because another process holds the stage (see `ck stage`).
CLAIMED_EXIT = 75


class LocalConfig(SchedulerConfig):
    """Options of the local scheduler."""

    slots: int | None = Field(None, gt=0, description="Stages at once; default one per GPU, 1 on CPU.")
    poll_seconds: float = Field(0.2, gt=0, description="How often finished children are collected.")


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


@dataclass
class _Running:
    job: StageJob
    proc: subprocess.Popen[bytes]
    gpus: list[str]
    started: float


class LocalScheduler(Scheduler):
    """Runs stages here, ``slots`` at a time; ``submit`` returns when all are finished."""

    name = "local"
    Config = LocalConfig
    blocking = True
    description = "Run stages as subprocesses on this machine."

    def submit(self, jobs: list[StageJob], experiment_dir: Any, profile: PluginConfig | None) -> None:
        """Run every job (dependencies first), ``slots`` at once, with a progress display."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        gpus = visible_gpus()
        # each run's own settings (runs may differ in them); a stage starts while fewer stages run
        # than its own run's `slots`
        own = {d: self.run_config(j) for d, j in {j.run_dir: j for j in jobs}.items()}
        slots = {d: c.slots or max(1, len(gpus)) for d, c in own.items()}
        poll = min((c.poll_seconds for c in own.values()), default=self.config.poll_seconds)  # type: ignore[attr-defined]
        free_gpus = list(gpus)
        pending = list(jobs)
        running: list[_Running] = []
        finished: dict[str, str] = {}
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      transient=False) as progress:
            bar = progress.add_task("stages", total=len(jobs))
            try:
                while pending or running:
                    for r in list(running):
                        code = r.proc.poll()
                        if code is None:
                            continue
                        running.remove(r)
                        free_gpus.extend(r.gpus)
                        state = self._settle(r.job, code)
                        finished[r.job.key] = state
                        progress.advance(bar)
                        progress.console.print(f"{'✓' if state == status.DONE else '✗'} {r.job.run_name} "
                                               f"{r.job.stage}: {state} ({time.monotonic() - r.started:.0f}s)")
                    for job in list(pending):
                        deps = [f"{job.run_name}/{d}" for d in job.depends_on]
                        if any(finished.get(d, status.DONE) != status.DONE for d in deps if d in finished):
                            pending.remove(job)
                            finished[job.key] = "blocked"
                            status.update_stage(job.run_dir, job.stage, state=status.PENDING,
                                                error="not run: a stage it depends on did not finish")
                            progress.advance(bar)
                            continue
                        if any(d not in finished for d in deps):
                            continue
                        if len(running) >= slots[job.run_dir]:
                            continue
                        want = max(1, job.resources.gpus) if gpus else 0
                        if want > len(free_gpus) and running:
                            continue
                        state = status.stage_state(job.run_dir, job.stage)
                        if state != status.SUBMITTED:  # no longer this runner's: `ck cancel`, or taken
                            pending.remove(job)
                            finished[job.key] = state
                            progress.advance(bar)
                            continue
                        mine, free_gpus = free_gpus[:want], free_gpus[want:]
                        pending.remove(job)
                        running.append(_Running(job, self._start(job, mine), mine, time.monotonic()))
                    time.sleep(poll)
            except KeyboardInterrupt:
                self._stop_all(running)
                raise

    # -- helpers
    def run_config(self, job: StageJob) -> LocalConfig:
        """The ``scheduler:`` section of the job's own run (not of the first run of the plan)."""
        return job.scheduler(type(self)).config  # type: ignore[return-value]

    def _start(self, job: StageJob, gpus: list[str]) -> subprocess.Popen[bytes]:
        layout = RunLayout(job.run_dir)
        layout.logs_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        env.setdefault("PYTHONUNBUFFERED", "1")
        out = open(layout.log(job.stage, "out"), "ab")  # noqa: SIM115 - owned by the child
        err = open(layout.log(job.stage, "err"), "ab")  # noqa: SIM115
        proc = subprocess.Popen(job.command(), stdout=out, stderr=err, env=env, start_new_session=True)
        out.close()
        err.close()
        # only while the stage is still this runner's claim: a `ck stage` started by hand may have taken it
        status.update_stage(job.run_dir, job.stage, when=lambda e: e.get("state") == status.SUBMITTED,
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
            state = status.stage_state(r.job.run_dir, r.job.stage)
            if state != status.DONE:
                status.update_stage(r.job.run_dir, r.job.stage, state=status.INTERRUPTED, ended=status.now(),
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


__all__ = ["LocalConfig", "LocalScheduler", "Path"]
