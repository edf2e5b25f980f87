"""One runner per experiment: two `ck run`s (or a `ck run` and a `ck stage`) never execute the same stage
twice, a killed runner's claims are taken over, and `ck status` never shows a stage nobody will finish
as `submitted` or `running`. Real `ck` processes, real SIGKILL/SIGSTOP, the toy plugin."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_spec
from kill_fixtures import KILL_AFTER
from runpod_fixtures import (
    run_ck,
    run_dirs,
    running_fake_runpod,
    running_fake_store,
    write_profile,
    write_toy_spec,
)
from slurm_fixtures import (
    cancel_leftovers_fixture,
    poll,
    read_status,
    slurm_cluster_fixture,
    slurm_env_fixture,
    slurm_plugin_site_fixture,
    slurm_spec,
)

from cruijff_kit import status
from cruijff_kit._base.fileio import read_jsonl

SLURM_FIXTURES = (cancel_leftovers_fixture, slurm_cluster_fixture, slurm_env_fixture, slurm_plugin_site_fixture)
fake_runpod = pytest.fixture(running_fake_runpod, name="fake_runpod")
fake_store = pytest.fixture(running_fake_store, name="fake_store")

SPEC = """
experiment: one
model: {path: some-org/some-model}
dataset: {plugin: toy-data}
train: {plugin: toy, epochs: 1, steps_per_epoch: 40, step_seconds: 0.05}
eval:
  - {plugin: toy-eval, task: exact, checkpoints: last}
scheduler: {plugin: local, slots: 1}  # one stage at a time: the evaluations wait, claimed, while training runs
"""
STAGES = ("train", "eval.exact.base", "eval.exact.epoch_0")



def ck_cmd(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cruijff_kit", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def ck_popen(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "cruijff_kit", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def the_run(tmp_path: Path, timeout: float = 120) -> Path:
    """The experiment's one run folder, once `ck run` has written it."""
    runs = tmp_path / "runs" / "one" / "runs"
    deadline = time.monotonic() + timeout
    while not (runs.is_dir() and [p for p in runs.iterdir() if (p / "status.json").exists()]):
        assert time.monotonic() < deadline, "the run folder was never written"
        time.sleep(0.05)
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    return run_dir


def wait_training(run_dir: Path, proc: subprocess.Popen[str], timeout: float = 120) -> int:
    """Wait until the train stage runs and has logged a step (its metrics file: the handshake); its pid."""
    deadline = time.monotonic() + timeout
    while True:
        entry = status.read(run_dir)["stages"].get("train", {})
        if entry.get("state") == "running" and read_jsonl(run_dir / "train" / "metrics.jsonl"):
            return int(entry["pid"])
        assert proc.poll() is None, "ck run ended before its training was seen: " + proc.communicate()[1]
        assert time.monotonic() < deadline, "the training never started"
        time.sleep(0.02)


def executions(run_dir: Path, stage: str, what: str = "started") -> int:
    """How many times the stage's process said `stage <stage> ... started` (or `done`) in its log."""
    log = run_dir / "logs" / f"{stage}.out"
    text = log.read_text() if log.exists() else ""
    return len(re.findall(rf"stage {re.escape(stage)} of run \S+ {what}", text))


def states(tmp_path: Path, spec: Path) -> dict[str, dict]:
    res = ck_cmd("status", "--json", str(spec), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    return {r["stage"]: r for r in json.loads(res.stdout)}


def pid_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} did not end")


def test_while_a_ck_run_runs_neither_a_second_ck_run_nor_ck_stage_runs_its_stages(tmp_path, with_toy):
    spec = write_spec(tmp_path, SPEC)
    first = ck_popen("run", str(spec), cwd=tmp_path)
    try:
        run_dir = the_run(tmp_path)
        train_pid = wait_training(run_dir, first)
        os.kill(train_pid, signal.SIGSTOP)  # the first runner is now held mid-training, for as long as needed
        try:
            second = ck_cmd("run", str(spec), cwd=tmp_path)
            assert second.returncode == 2, second.stdout + second.stderr
            assert f"another `ck run` (pid {first.pid} on host {os.uname().nodename} since " in second.stderr
            assert "started nothing" in second.stderr and "ck cancel" in second.stderr
            assert "Traceback" not in second.stderr

            by_hand = ck_cmd("stage", str(run_dir), "train", cwd=tmp_path)
            assert by_hand.returncode == 75, by_hand.stdout + by_hand.stderr
            assert f"already being run by pid {train_pid} on host {os.uname().nodename}" in by_hand.stderr
            assert "Traceback" not in by_hand.stderr
            entry = status.read(run_dir)["stages"]["train"]
            assert (entry["state"], entry["pid"], entry["attempts"]) == ("running", train_pid, 1)  # untouched
        finally:
            os.kill(train_pid, signal.SIGCONT)
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, out + err
    st = status.read(run_dir)["stages"]
    for stage in STAGES:
        assert st[stage]["state"] == "done" and st[stage]["attempts"] == 1, (stage, st[stage])
        assert executions(run_dir, stage) == 1, stage  # the first runner's, and nobody else's
    metrics = read_jsonl(run_dir / "train" / "metrics.jsonl")
    assert [r["step"] for r in metrics] == list(range(1, 41)) and {r["pid"] for r in metrics} == {train_pid}


def test_a_second_ck_run_runs_only_the_stages_the_first_does_not_hold(tmp_path, with_toy):
    """The rule: stages are claimed one by one, so a second `ck run` (here after a run was added to the
    sweep) runs the stages nobody holds, leaves the first runner's to it, and says so."""
    spec = write_spec(tmp_path, SPEC + "sweep:\n  train.lora.rank: [4]\n")
    first = ck_popen("run", str(spec), cwd=tmp_path)
    try:
        (old,) = [the_run(tmp_path)]
        train_pid = wait_training(old, first)
        os.kill(train_pid, signal.SIGSTOP)
        try:
            write_spec(tmp_path, SPEC + "sweep:\n  train.lora.rank: [4, 8]\n")
            second = ck_cmd("run", str(spec), cwd=tmp_path)
        finally:
            os.kill(train_pid, signal.SIGCONT)
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 0, second.stdout + second.stderr
    # the new run's train and epoch eval, and the base eval the two runs now share (run once, in shared/);
    # the first runner keeps the old run's train and epoch eval, and the old run's own base eval it claimed
    assert "3 stage(s) submitted, 0 already done, 2 still running" in second.stdout, second.stdout
    assert f"Another `ck run` (pid {first.pid} on host {os.uname().nodename} since " in second.stdout
    assert "the next `ck run` points it to shared/" in second.stderr, second.stderr
    assert first.returncode == 0, out + err
    runs = [p for p in (tmp_path / "runs" / "one" / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 2
    (new,) = [r for r in runs if r != old]
    for run_dir in runs:
        for stage in ("train", "eval.exact.epoch_0"):
            assert status.read(run_dir)["stages"][stage]["state"] == "done", (run_dir.name, stage)
            assert executions(run_dir, stage) == 1, (run_dir.name, stage)
    (shared,) = (tmp_path / "runs" / "one" / "shared").iterdir()
    assert status.read(shared)["stages"]["eval.exact.base"]["state"] == "done"
    assert executions(shared, "eval.exact.base") == 1
    assert status.read(new)["stages"]["eval.exact.base"]["shared"] == f"shared/{shared.name}"
    assert status.read(old)["stages"]["eval.exact.base"]["state"] == "done"  # its own copy, run by the first
    assert executions(old, "eval.exact.base") == 1
    third = ck_cmd("run", str(spec), cwd=tmp_path)  # points the old run to the shared result too, keeping its own
    assert third.returncode == 0 and "0 stage(s) submitted" in third.stdout, third.stdout + third.stderr
    assert status.read(old)["stages"]["eval.exact.base"]["shared"] == f"shared/{shared.name}"
    assert (old / "eval" / "exact" / "base" / "own-result.json").is_file()


def test_killed_ck_run_and_stage_are_shown_stale_and_the_next_ck_run_takes_over(tmp_path, with_toy):
    spec = write_spec(tmp_path, SPEC)
    first = ck_popen("run", str(spec), cwd=tmp_path)
    try:
        run_dir = the_run(tmp_path)
        train_pid = wait_training(run_dir, first)
        first.kill()  # SIGKILL the runner mid-stage ...
        os.killpg(train_pid, signal.SIGKILL)  # ... and its stage process (its own session)
        first.communicate(timeout=60)
        pid_gone(train_pid)
    finally:
        if first.poll() is None:
            first.kill()
    rows = states(tmp_path, spec)
    assert rows["train"]["state"] == "interrupted" and "process is gone" in rows["train"]["error"]
    for stage in ("eval.exact.base", "eval.exact.epoch_0"):  # claimed by the dead runner, never started
        assert rows[stage]["state"] == "interrupted", rows[stage]
        assert f"its `ck run` (pid {first.pid}) is gone and the stage never started" in rows[stage]["error"]
    # the killed stage's claim file still names it, but its lock went with the process
    assert json.loads((run_dir / ".claims" / "train.lock").read_text())["pid"] == train_pid

    res = ck_cmd("run", str(spec), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "3 stage(s) submitted, 0 already done" in res.stdout, res.stdout
    st = status.read(run_dir)["stages"]
    assert all(st[s]["state"] == "done" for s in STAGES), st
    for stage in STAGES:  # each finished once; the evals started once, the train twice (killed, resumed)
        assert executions(run_dir, stage, "done") == 1, stage
        assert executions(run_dir, stage) == (2 if stage == "train" else 1), stage
    assert json.loads((run_dir / ".claims" / "train.lock").read_text())["pid"] == st["train"]["pid"] != train_pid
    assert set(json.loads((run_dir / "eval" / "results.json").read_text())["exact"]) == {"base", "epoch_0"}
    assert {r["state"] for r in states(tmp_path, spec).values()} == {"done"}


def test_stages_claimed_by_a_runner_killed_before_starting_them_are_redone(tmp_path, with_toy):
    """`ck run` SIGKILLed after marking its stages `submitted`, before handing them to the scheduler."""
    spec = write_spec(tmp_path, SPEC.replace("steps_per_epoch: 40", "steps_per_epoch: 3"))
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER, "cruijff_kit._engine.profile", "scheduler_profile",
                             "1", "run", str(spec)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    run_dir = the_run(tmp_path)
    assert {e["state"] for e in status.read(run_dir)["stages"].values()} == {"submitted"}  # as left

    rows = states(tmp_path, spec)
    for stage in STAGES:
        assert rows[stage]["state"] == "interrupted", rows[stage]
        assert "is gone and the stage never started" in rows[stage]["error"]

    res = ck_cmd("run", str(spec), cwd=tmp_path)
    assert res.returncode == 0 and "3 stage(s) submitted" in res.stdout, res.stdout + res.stderr
    st = status.read(run_dir)["stages"]
    for stage in STAGES:
        assert st[stage]["state"] == "done" and st[stage]["attempts"] == 1, (stage, st[stage])
        assert executions(run_dir, stage) == 1, stage


def test_runpod_a_pod_alive_is_not_started_again_a_gone_one_is(fake_runpod, fake_store, tmp_path, capsys):
    """RunPod: a `ck run` killed before creating its pod leaves nothing `submitted` for good; while a
    stage's pod is alive a second `ck run` starts no other pod; once the pod is gone, the next one does."""
    from cruijff_kit_runpod.api import RunPodApi

    spec = write_toy_spec(tmp_path, train="steps_per_epoch: 600\nstep_seconds: 0.1\n")
    write_profile(tmp_path, fake_store)
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER, "cruijff_kit_runpod.pods", "group_jobs", "1",
                             "run", str(spec)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    (run_dir,) = run_dirs(tmp_path)
    assert fake_runpod.calls("podFindAndDeployOnDemand") == []
    code, out = run_ck(capsys, "status", "--json", str(spec))
    rows = json.loads(out)
    assert {r["state"] for r in rows} == {"interrupted"}, rows  # not `submitted` for good
    assert all("is gone and the stage never started" in r["error"] for r in rows)

    code, out = run_ck(capsys, "run", str(spec))
    assert code == 0 and "3 stage(s) submitted" in out, out
    (pod_id,) = fake_runpod.running()
    code, out = run_ck(capsys, "run", str(spec))  # the pod is alive: nothing is started again
    assert code == 0 and "0 stage(s) submitted, 0 already done, 3 still running" in out, out
    assert len(fake_runpod.calls("podFindAndDeployOnDemand")) == 1 and fake_runpod.running() == [pod_id]

    RunPodApi().terminate_pod(pod_id)  # terminated in the RunPod console: the stages are nobody's now
    code, out = run_ck(capsys, "run", str(spec))
    assert code == 0 and "3 stage(s) submitted" in out, out
    assert len(fake_runpod.calls("podFindAndDeployOnDemand")) == 2
    (second,) = fake_runpod.running()
    assert second != pod_id
    assert {status.read(run_dir)["stages"][s]["pod_id"] for s in ("train", "eval.toy.base")} == {second}
    code, out = run_ck(capsys, "cancel", str(spec))
    assert code == 0 and fake_runpod.running() == []


@pytest.mark.slurm
@pytest.mark.integration
@pytest.mark.slow
def test_slurm_a_queued_job_is_not_submitted_again_a_cancelled_one_is(slurm_cluster, slurm_env, ck, tmp_path,
                                                                     cancel_leftovers):
    """SLURM: a `ck run` killed before sbatch leaves nothing `submitted` for good; while the stage's job
    is alive a second `ck run` submits nothing; once the job is cancelled (outside ck) the next one does."""
    spec = slurm_spec(tmp_path, experiment="one-slurm", train={"mode": "sleep", "steps": 400, "step_seconds": 0.25})
    exp = tmp_path / "out" / "one-slurm"
    cancel_leftovers(exp)
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER, "cruijff_kit_slurm.scheduler", "SlurmScheduler._plan",
                             "1", "run", str(spec)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    res = ck("status", "--json", str(spec))
    rows = json.loads(res.stdout)
    assert {r["state"] for r in rows} == {"interrupted"} and not any(r.get("job_id") for r in rows), rows
    assert all("is gone and the stage never started" in r["error"] for r in rows)

    res = ck("run", str(spec))
    assert res.returncode == 0 and "2 stage(s) submitted" in res.stdout, res.stdout + res.stderr
    rows = poll(exp, lambda rows: any(r["stage"] == "train" and r["state"] == "running" for r in rows))
    first = {r["stage"]: r["job_id"] for r in rows}
    res = ck("run", str(spec))  # its jobs are queued or running: nothing is submitted again
    assert res.returncode == 0 and "0 stage(s) submitted, 0 already done, 2 still running" in res.stdout, res.stdout
    assert {s: e["job_id"] for s, e in next(iter(read_status(exp).values())).items()} == first

    subprocess.run(["scancel", *first.values()], check=True)  # cancelled outside ck
    poll(exp, lambda rows: all(r["state"] not in ("submitted", "running") for r in rows))
    res = ck("run", str(spec))
    assert res.returncode == 0 and "2 stage(s) submitted" in res.stdout, res.stdout + res.stderr
    again = {s: e["job_id"] for s, e in next(iter(read_status(exp).values())).items()}
    assert set(again) == set(first) and not set(again.values()) & set(first.values())
