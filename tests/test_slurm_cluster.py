"""The slurm scheduler against a real single-node SLURM (slurmctld, slurmd, slurmdbd for sacct).

Every test submits real jobs with `ck run`, follows them through squeue/sacct, and checks what the
jobs did in the run folders. The stages run the `slurmtest` plugins from tests/slurm_fixtures.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from slurm_fixtures import (
    cancel_leftovers_fixture,
    poll,
    read_status,
    sacct_rows,
    settled,
    slurm_cluster_fixture,
    slurm_env_fixture,
    slurm_plugin_site_fixture,
    slurm_spec,
)

FIXTURES = (cancel_leftovers_fixture, slurm_cluster_fixture, slurm_env_fixture, slurm_plugin_site_fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.integration, pytest.mark.slow]

SECRET = "hf_slurmtest_secret_value_4711"


def _exp(folder: Path, name: str) -> Path:
    return folder / "out" / name


def _submit(ck: Any, spec: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    res = ck("run", str(spec), *args, cwd=spec.parent, env=env)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
    return res


def _by_stage(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["run"], r["stage"]): r for r in rows}


def finished(rows: list[dict[str, Any]]) -> bool:
    """Settled, and sacct has every job's final record (usage)."""
    return settled(rows) and all(r.get("usage") for r in rows)


def _step(progress: Path) -> int:
    return int(json.loads(progress.read_text()).get("step", 0)) if progress.exists() else 0


def _sacct_by_id(job_ids: list[str]) -> dict[str, dict[str, str]]:
    return {r["JobID"]: r for r in sacct_rows(job_ids)}


def test_sweep_runs_as_arrays_with_afterok_and_queue_cap(
        slurm_cluster: dict[str, Any], slurm_env: dict[str, str], ck: Any, tmp_path: Path,
        cancel_leftovers: Any) -> None:
    """A 2x2 sweep: one array per stage, each eval after its own train, never more than max_queued."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    smi = fake_bin / "nvidia-smi"
    smi.write_text("#!/bin/bash\nwhile true; do echo '2026/01/01 00:00:00.000, 0, Fake GPU, 55, 12, 1000, "
                   "80000, 101.5, 41'; sleep 0.3; done\n")
    smi.chmod(0o755)
    spec = slurm_spec(tmp_path, experiment="sweep", train={"steps": 2, "step_seconds": 0.2},
                      sweep={"train.lora.rank": [4, 8], "train.learning_rate": [0.001, 0.002]},
                      profile={"max_queued": 6, "partition": slurm_cluster["partition"],
                               "setup": ["echo setup-line-ran"]},
                      marker=True)
    exp = _exp(tmp_path, "sweep")
    cancel_leftovers(exp)
    env = {"HF_TOKEN": SECRET, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
    res = _submit(ck, spec, env=env)
    assert "4 run(s); 8 stage(s) submitted" in res.stdout
    assert "queued (max_queued 6); waiting" in res.stderr  # back-pressure: 4 trains + 4 evals > 6

    rows = poll(exp, finished)
    assert {r["state"] for r in rows} == {"done"}, rows
    by = _by_stage(rows)
    runs = sorted({r["run"] for r in rows})
    assert len(runs) == 4

    # one array per stage, every task of it one run; evals depend per task on their own train
    train_ids = [by[(r, "train")]["job_id"] for r in runs]
    eval_ids = [by[(r, "eval.check.epoch_0")]["job_id"] for r in runs]
    assert len({j.split("_")[0] for j in train_ids}) == 1 and all("_" in j for j in train_ids)
    assert len({j.split("_")[0] for j in eval_ids}) == 1 and all("_" in j for j in eval_ids)
    train_array = train_ids[0].split("_")[0]
    assert {by[(r, "eval.check.epoch_0")]["dependency"] for r in runs} == {f"aftercorr:{train_array}"}
    acct = _sacct_by_id(train_ids + eval_ids)
    for t, e in zip(train_ids, eval_ids, strict=True):
        assert acct[t]["State"] == acct[e]["State"] == "COMPLETED"
        assert acct[e]["Start"] >= acct[t]["End"], (acct[t], acct[e])  # afterok per run

    # the queue never held more than max_queued jobs of this experiment
    events = sorted({row["Submit"] for row in acct.values()})
    for t in events:
        queued = [row for row in acct.values() if row["Submit"] <= t < row["End"]]
        assert len(queued) <= 6, (t, queued)

    # caches prepared once, before submitting (not in the jobs)
    marker = [json.loads(line) for line in (tmp_path / "prepared.jsonl").read_text().splitlines()]
    assert len(marker) == 1 and marker[0]["job"] is None

    for run in runs:
        run_dir = exp / "runs" / run
        attempt = json.loads((run_dir / "train" / "attempts.jsonl").read_text().splitlines()[0])
        assert attempt["hf_hub_offline"] == "1"
        assert attempt["has_hf_token"] is True  # the job got the secret from the environment ...
        assert (run_dir / "train" / "epoch_0" / "adapter" / "adapter_config.json").exists()
        log = (run_dir / "logs" / "train.out").read_text()
        assert "setup-line-ran" in log
        gpu = (run_dir / "logs" / "train.gpu.csv").read_text().splitlines()
        assert gpu[0].startswith("timestamp,index,name") and "Fake GPU" in gpu[1]
        usage = json.loads((run_dir / "slurm" / "train.sacct.json").read_text())
        assert usage["job"]["state"] == "COMPLETED" and usage["job"]["elapsed"]
        assert by[(run, "train")]["usage"]["job_id"] == by[(run, "train")]["job_id"]
    for path in exp.rglob("*"):  # ... and no file of the experiment holds it
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path

    logs = ck("logs", str(exp / "runs" / runs[0]), "train")
    assert logs.returncode == 0 and "[ck-slurm] job" in logs.stdout and "exited with code 0" in logs.stdout


def test_failing_stage_reported_then_retried_on_request(
        slurm_cluster: dict[str, Any], slurm_env: dict[str, str], ck: Any, tmp_path: Path,
        cancel_leftovers: Any) -> None:
    """A failed train shows its SLURM state and log tail; its eval is not run; --retry-failed reruns both."""
    flag = tmp_path / "may-succeed"
    spec = slurm_spec(tmp_path, experiment="failing", train={"fail_until": str(flag)})
    exp = _exp(tmp_path, "failing")
    cancel_leftovers(exp)
    _submit(ck, spec)
    rows = poll(exp, finished)
    by = {r["stage"]: r for r in rows}
    train, ev = by["train"], by["eval.check.epoch_0"]
    assert train["state"] == "failed" and train["slurm_state"] == "FAILED" and train["exit_code"] == 1
    assert "deliberate failure" in train["error"] and "deliberate failure" in train["error_tail"]
    assert ev["state"] == "pending" and "not run" in ev["error"]
    acct = _sacct_by_id([train["job_id"], ev["last_job_id"]])
    assert acct[train["job_id"]]["ExitCode"] == "1:0"  # the stage's exit code is the job's
    assert acct[ev["last_job_id"]]["State"] == "CANCELLED"

    shown = ck("status", str(spec))
    assert "failed" in shown.stdout and "deliberate failure" in shown.stdout
    assert "RuntimeError" in shown.stdout  # the log tail

    again = _submit(ck, spec)  # nothing is resubmitted silently
    assert "0 stage(s) submitted" in again.stdout and "--retry-failed" in again.stdout
    assert read_status(exp)[train["run"]]["train"]["job_id"] == train["job_id"]

    flag.write_text("ok")
    _submit(ck, spec, "--retry-failed")
    rows = poll(exp, settled)
    assert {r["state"] for r in rows} == {"done"}, rows


def test_cancel_shows_cancelled(slurm_cluster: dict[str, Any], slurm_env: dict[str, str], ck: Any,
                                tmp_path: Path, cancel_leftovers: Any) -> None:
    """`ck cancel` cancels running trains and their waiting evals; SLURM and `ck status` agree."""
    spec = slurm_spec(tmp_path, experiment="cancel", train={"mode": "sleep", "steps": 400, "step_seconds": 0.25},
                      sweep={"train.lora.rank": [4, 8]})
    exp = _exp(tmp_path, "cancel")
    cancel_leftovers(exp)
    _submit(ck, spec)
    poll(exp, lambda rows: all(r["state"] == "running" for r in rows if r["stage"] == "train"))
    res = ck("cancel", str(spec))
    assert res.returncode == 0 and "Cancelled 4 stage(s)" in res.stdout
    rows = poll(exp, lambda rows: all(r.get("slurm_state") == "CANCELLED" for r in rows))
    assert {r["state"] for r in rows} == {"cancelled"}
    acct = _sacct_by_id([r["job_id"] for r in rows])
    assert {row["State"].split()[0] for row in acct.values()} == {"CANCELLED"}


def test_out_of_memory_is_retried_with_half_the_batch(
        slurm_cluster: dict[str, Any], slurm_env: dict[str, str], ck: Any, tmp_path: Path,
        cancel_leftovers: Any) -> None:
    """CUDA OOM at batch 8 and 4: retried at 4 then 2 with accumulation 2 then 4; recorded everywhere."""
    spec = slurm_spec(tmp_path, experiment="oom",
                      train={"mode": "oom", "oom_above": 2, "batch_size": 8, "gradient_accumulation": 1})
    exp = _exp(tmp_path, "oom")
    cancel_leftovers(exp)
    _submit(ck, spec)
    rows = poll(exp, settled)
    assert {r["state"] for r in rows} == {"done"}, rows
    run_dir = exp / "runs" / rows[0]["run"]
    attempts = [json.loads(x) for x in (run_dir / "train" / "attempts.jsonl").read_text().splitlines()]
    assert [(a["batch_size"], a["gradient_accumulation"]) for a in attempts] == [(8, 1), (4, 2), (2, 4)]
    assert len({a["job"] for a in attempts}) == 1  # the same job, so the eval's dependency held
    train = read_status(exp)[rows[0]["run"]]["train"]
    assert train["oom_retries"] == 2
    assert [a["batch_size"] for a in train["adjustments"]] == [[8, 4], [4, 2]]
    import yaml

    resolved = yaml.safe_load((run_dir / "spec.yaml").read_text())["train"]
    assert (resolved["batch_size"], resolved["gradient_accumulation"]) == (2, 4)
    # `ck run` again keeps the recorded change in the resolved spec, and has nothing to do
    res = _submit(ck, spec)
    assert "0 stage(s) submitted, 2 already done" in res.stdout
    assert yaml.safe_load((run_dir / "spec.yaml").read_text())["train"]["batch_size"] == 2


def test_pre_timeout_signal_requeues_and_resumes(
        slurm_cluster: dict[str, Any], slurm_env: dict[str, str], ck: Any, tmp_path: Path,
        cancel_leftovers: Any) -> None:
    """SLURM's warning signal (USR2 to the batch shell): state saved, job requeued, training resumes."""
    spec = slurm_spec(tmp_path, experiment="requeue", train={"mode": "sleep", "steps": 40, "step_seconds": 0.25})
    exp = _exp(tmp_path, "requeue")
    cancel_leftovers(exp)
    _submit(ck, spec)
    rows = poll(exp, lambda rows: any(r["stage"] == "train" and r["state"] == "running" for r in rows))
    run_dir = exp / "runs" / rows[0]["run"]
    progress = run_dir / "train" / "state" / "progress.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _step(progress) < 3:  # some state saved before the signal
        time.sleep(0.2)
    run = rows[0]["run"]
    job_id = read_status(exp)[run]["train"]["job_id"]
    # exactly what SLURM does signal_seconds before the time limit (--signal=B:USR2@N)
    subprocess.run(["scancel", "--batch", "--signal=USR2", job_id], check=True)
    # the first attempt stopped and the job is requeued: what it logged, before the second attempt starts
    # (SLURM holds a requeued job for cred_expire, 5 s on the test cluster)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        entry = read_status(exp)[run]["train"]
        if entry.get("requeues") == 1:
            break
        time.sleep(0.1)
    assert entry.get("requeues") == 1 and entry["attempts"] == 1, entry
    before = [json.loads(x)["step"] for x in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    assert before == list(range(1, len(before) + 1)) and 3 <= len(before) < 40, before
    rows = poll(exp, finished)
    assert {r["state"] for r in rows} == {"done"}, rows
    entry = read_status(exp)[run]["train"]
    assert entry["attempts"] == 2 and entry["requeues"] == 1, entry
    metrics = [json.loads(x)["step"] for x in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    # the second attempt went on from the saved state: its first step is the one after the last logged
    # before the requeue, and no step is lost or logged twice
    assert metrics == list(range(1, 41)), metrics
    attempts = [json.loads(x) for x in (run_dir / "train" / "attempts.jsonl").read_text().splitlines()]
    assert [a["resumed_from"] for a in attempts] == [0, len(before)]
    assert attempts[1]["restart"] == "1" and attempts[0]["job"] == attempts[1]["job"]  # the same job, requeued
    err = (run_dir / "logs" / "train.err").read_text()
    assert "requeueing job" in err and "restart 0" in err and "restart 1" in err


def test_torchrun_launch_across_the_allocation(
        slurm_cluster: dict[str, Any], slurm_env: dict[str, str], ck: Any, tmp_path: Path,
        cancel_leftovers: Any) -> None:
    """The multi-node path (srun + torchrun rendezvous), forced on one node: 2 ranks, one bookkeeper."""
    spec = slurm_spec(tmp_path, experiment="torchrun", train={"distributed": True},
                      scheduler={"launcher": "torchrun",
                                 "resources": {"cpus": 2, "memory": "2GB", "time": "00:10:00", "processes": 2}})
    exp = _exp(tmp_path, "torchrun")
    cancel_leftovers(exp)
    _submit(ck, spec)
    rows = poll(exp, settled, timeout=180)
    assert {r["state"] for r in rows} == {"done"}, rows
    run_dir = exp / "runs" / rows[0]["run"]
    attempts = [json.loads(x) for x in (run_dir / "train" / "attempts.jsonl").read_text().splitlines()]
    assert sorted(a["rank"] for a in attempts) == [0, 1]
    assert {a["world_size"] for a in attempts} == {2} and {a["all_reduce"] for a in attempts} == {3.0}
    assert read_status(exp)[rows[0]["run"]]["train"]["attempts"] == 1  # only rank 0 kept the books
