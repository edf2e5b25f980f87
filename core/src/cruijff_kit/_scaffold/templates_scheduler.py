"""The scheduler template of ``ck new plugin scheduler``: each stage a ``ck stage`` subprocess, one at a time."""

from __future__ import annotations

SCHEDULER = '''"""The __NAME__ scheduler: runs each stage as a ``ck stage RUN_DIR STAGE`` subprocess, one at a time.

``submit`` returns when every stage has finished (``blocking``), as the ``local`` scheduler does. The
stage process marks its own stage running, done or failed in ``status.json``; this scheduler records
the process it started and, when the process died without saying (killed, out of memory), marks the
stage failed or interrupted with the exit code and the end of its error log. A stage whose dependency
did not finish is not started and stays pending with the reason. Replace ``start`` to send the same
command somewhere else (a queue, a remote machine).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from pydantic import Field

from cruijff_kit import PluginConfig, RunLayout, Scheduler, SchedulerConfig, StageJob, status

#: Exit status of a ``ck stage`` that refused because another process holds the stage.
CLAIMED_EXIT = 75


class __CLASS__Config(SchedulerConfig):
    """Options of __NAME__ (unknown keys are errors)."""

    env: dict[str, str] = Field(default_factory=dict, description="Environment variables set for every stage.")


def run_order(jobs: list[StageJob]) -> list[StageJob]:
    """``jobs`` with every job after the jobs of its run it depends on (otherwise in the given order)."""
    keys = {job.key for job in jobs}
    ordered: list[StageJob] = []
    placed: set[str] = set()
    left = list(jobs)
    while left:
        ready = [j for j in left if all(f"{j.run_name}/{d}" in placed or f"{j.run_name}/{d}" not in keys
                                        for d in j.depends_on)]
        if not ready:  # a cycle cannot come from the planner; keep the rest as given
            ready = left[:1]
        for job in ready:
            ordered.append(job)
            placed.add(job.key)
            left.remove(job)
    return ordered


class __CLASS__(Scheduler):
    """Runs stages here, one after another; ``submit`` returns when all are finished."""

    name = "__NAME__"
    description = "Run each stage as a subprocess on this machine, one at a time."
    Config = __CLASS__Config
    blocking = True

    def submit(self, jobs: list[StageJob], experiment_dir: Any, profile: PluginConfig | None) -> None:
        """Run every job in dependency order; print one line per finished stage."""
        finished: dict[str, str] = {}
        for job in run_order(jobs):
            deps = [f"{job.run_name}/{d}" for d in job.depends_on]
            if any(finished.get(d, status.DONE) != status.DONE for d in deps):
                status.update_stage(job.run_dir, job.stage, state=status.PENDING,
                                    error="not run: a stage it depends on did not finish")
                finished[job.key] = "blocked"
                print(f"- {job.run_name} {job.stage}: not run (a stage it depends on did not finish)", flush=True)
                continue
            if status.stage_state(job.run_dir, job.stage) != status.SUBMITTED:
                finished[job.key] = status.stage_state(job.run_dir, job.stage)  # cancelled, or taken by hand
                continue
            started = time.monotonic()
            code = self.start(job)
            finished[job.key] = self.settle(job, code)
            print(f"{job.run_name} {job.stage}: {finished[job.key]} ({time.monotonic() - started:.0f}s)", flush=True)

    def start(self, job: StageJob) -> int:
        """Run ``ck stage`` for ``job`` to its end (output in the stage's logs); return its exit code."""
        config: __CLASS__Config = job.scheduler(type(self)).config  # type: ignore[assignment]  # the job's own run
        layout = RunLayout(job.run_dir)
        layout.logs_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **config.env}
        with open(layout.log(job.stage, "out"), "ab") as out, open(layout.log(job.stage, "err"), "ab") as err:
            proc = subprocess.Popen(job.command(sys.executable), stdout=out, stderr=err, env=env,
                                    start_new_session=True)
        status.update_stage(job.run_dir, job.stage, when=lambda e: e.get("state") == status.SUBMITTED,
                            scheduler=self.name, pid=proc.pid, host=os.uname().nodename)
        try:
            return proc.wait()
        except KeyboardInterrupt:  # Ctrl-C: stop the stage, say so, and stop
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            status.update_stage(job.run_dir, job.stage, state=status.INTERRUPTED, ended=status.now(),
                                error="stopped by Ctrl-C", exit_code=130)
            raise

    def settle(self, job: StageJob, code: int) -> str:
        """The stage's final state; marks it failed or interrupted when its process could not say so."""
        state = status.stage_state(job.run_dir, job.stage)
        if (code == 0 and state == status.DONE) or code == CLAIMED_EXIT:
            return state
        if state in status.ACTIVE_STATES or state == status.PENDING or (code == 0 and state != status.DONE):
            new = status.INTERRUPTED if code < 0 or code in (130, 137, 143) else status.FAILED
            status.update_stage(job.run_dir, job.stage, state=new, exit_code=code, ended=status.now(),
                                error=f"stage process exited with code {code}",
                                error_tail=status.tail(RunLayout(job.run_dir).log(job.stage, "err"), 15))
            return new
        return state

    def cancel(self, jobs: list[StageJob]) -> None:
        """Stop the processes of active stages on this machine (SIGTERM to their process group)."""
        for job in jobs:
            entry = status.read(job.run_dir)["stages"].get(job.stage, {})
            if entry.get("pid") and entry.get("host") in (None, os.uname().nodename):
                try:
                    os.killpg(int(entry["pid"]), signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
'''

SCHEDULER_TESTS = '''
MINIMAL = {"env": {"OMP_NUM_THREADS": "1"}}


def _job(tmp_path, stage, depends_on=(), command=None):
    """A job of a one-run experiment in ``tmp_path`` whose process runs ``command`` instead of ``ck stage``."""
    import sys

    import yaml

    from cruijff_kit import Resources, StageJob, status

    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({"scheduler": {"plugin": "__NAME__", **MINIMAL},
                                                        "run": {"spec_dir": str(tmp_path)}}))
    status.update_stage(tmp_path, stage, state=status.SUBMITTED)

    class Job(StageJob):
        def command(self, python=None):
            return [python or sys.executable, "-c", command or "pass"]

    return Job("exp", "run", tmp_path, stage, list(depends_on), Resources(), "train" if stage == "train" else "eval")


def test_run_order_puts_dependencies_first(tmp_path) -> None:
    from __PACKAGE__.plugin import run_order

    evaluate = _job(tmp_path, "eval.t.epoch_0", ["train"])
    train = _job(tmp_path, "train")
    assert [j.stage for j in run_order([evaluate, train])] == ["train", "eval.t.epoch_0"]


def test_a_process_that_dies_fails_its_stage_and_blocks_what_depends_on_it(tmp_path) -> None:
    from cruijff_kit import status

    train = _job(tmp_path, "train", command="import sys; print('boom', file=sys.stderr); sys.exit(3)")
    evaluate = _job(tmp_path, "eval.t.epoch_0", ["train"])
    __CLASS__(__CLASS__.Config.model_validate(MINIMAL)).submit([train, evaluate], tmp_path, None)
    stages = status.read(tmp_path)["stages"]
    assert stages["train"]["state"] == status.FAILED and stages["train"]["exit_code"] == 3
    assert "boom" in stages["train"]["error_tail"]
    assert stages["eval.t.epoch_0"]["state"] == status.PENDING
    assert "did not finish" in stages["eval.t.epoch_0"]["error"]
'''
