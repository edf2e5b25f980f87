"""`group_evals` against a real single-node SLURM: a run's evaluations in one job, each stage its own.

The stages run the `slurmtest` plugins of tests/slurm_fixtures.py, and the toy evaluator
(tests/toy_plugin, `sleep_seconds`) where an evaluation must last long enough to be cancelled.
"""

from __future__ import annotations

import json
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

STAGES = ["eval.check.epoch_0", "eval.check.epoch_1", "eval.check.epoch_2"]


def _submit(ck: Any, spec: Path, *args: str) -> subprocess.CompletedProcess[str]:
    res = ck("run", str(spec), *args, cwd=spec.parent)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
    return res


def _finished(rows: list[dict[str, Any]]) -> bool:
    return settled(rows) and all(r.get("usage") for r in rows)


def test_each_runs_evaluations_run_as_one_job_of_one_array(
        slurm_cluster: dict[str, Any], slurm_env: dict[str, str], ck: Any, tmp_path: Path,
        cancel_leftovers: Any) -> None:
    spec = slurm_spec(tmp_path, experiment="grouped", train={"epochs": 3}, evals={"checkpoints": "all"},
                      sweep={"train.lora.rank": [4, 8]}, profile={"partition": slurm_cluster["partition"]})
    exp = tmp_path / "out" / "grouped"
    cancel_leftovers(exp)
    res = _submit(ck, spec)
    assert "2 run(s); 8 stage(s) submitted" in res.stdout
    rows = poll(exp, _finished, timeout=240)
    assert {r["state"] for r in rows} == {"done"}, rows
    by = {(r["run"], r["stage"]): r for r in rows}
    runs = sorted({r["run"] for r in rows})
    jobs = {run: {by[(run, s)]["job_id"].split("/", 1)[0] for s in STAGES} for run in runs}
    assert all(len(j) == 1 for j in jobs.values()), jobs  # one job per run ...
    eval_jobs = [next(iter(j)) for j in jobs.values()]
    assert len({j.split("_")[0] for j in eval_jobs}) == 1 and len(set(eval_jobs)) == 2  # ... one array of two
    train_ids = [by[(run, "train")]["job_id"] for run in runs]
    acct = {r["JobID"]: r for r in sacct_rows(train_ids + eval_jobs)}
    assert sorted(acct) == sorted(train_ids + eval_jobs)  # 4 jobs in all: 2 trains, 2 evaluation jobs
    assert {r["State"] for r in acct.values()} == {"COMPLETED"}
    for run, t, e in zip(runs, train_ids, eval_jobs, strict=True):
        assert acct[e]["Start"] >= acct[t]["End"]
        pids = {read_status(exp)[run][s]["pid"] for s in STAGES}
        assert len(pids) == 1  # one process ran the three
        run_dir = exp / "runs" / run
        results = json.loads((run_dir / "eval" / "results.json").read_text())
        for stage in STAGES:
            target = stage.rsplit(".", 1)[1]
            assert json.loads((run_dir / "eval" / "check" / target / "result.json").read_text())["target"] == target
            assert "check" in json.dumps(results) and target in json.dumps(results)
            assert f"stage {stage} of run {run} done" in (run_dir / "logs" / f"{stage}.out").read_text()
            assert by[(run, stage)]["usage"]["job_id"] == e


def test_cancelling_the_job_keeps_the_finished_stage_and_ck_run_redoes_the_rest(
        slurm_cluster: dict[str, Any], slurm_env: dict[str, str], with_toy: Path, ck: Any, tmp_path: Path,
        cancel_leftovers: Any) -> None:
    spec = slurm_spec(tmp_path, experiment="cancelgroup", train={"epochs": 3},
                      evals={"plugin": "toy-eval", "checkpoints": "all", "sleep_seconds": 8},
                      profile={"partition": slurm_cluster["partition"]})
    exp = tmp_path / "out" / "cancelgroup"
    cancel_leftovers(exp)
    _submit(ck, spec)
    run = next((exp / "runs").iterdir()).name
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # the first evaluation done, the second one running (8 s)
        first = read_status(exp)[run]
        if first[STAGES[0]].get("state") == "done" and first[STAGES[1]].get("state") == "running":
            break
        time.sleep(0.1)
    assert first[STAGES[0]]["state"] == "done" and first[STAGES[1]]["state"] == "running", first
    job = first[STAGES[0]]["job_id"].split("/", 1)[0]
    subprocess.run(["scancel", job], check=True)  # while the second evaluation sleeps
    rows = poll(exp, lambda rows: _finished([r for r in rows if r["stage"] in STAGES]), timeout=120)
    by = {r["stage"]: r for r in rows}
    assert by[STAGES[0]]["state"] == "done"
    for stage in STAGES[1:]:
        assert by[stage]["state"] in ("interrupted", "failed", "cancelled"), by[stage]
        assert by[stage]["slurm_state"] == "CANCELLED"
    assert read_status(exp)[run][STAGES[1]]["attempts"] == 1  # it had started

    _submit(ck, spec)  # redoes only the two unfinished, again in one job
    rows = poll(exp, lambda rows: _finished(rows) and all(r["state"] == "done" for r in rows), timeout=180)
    after = read_status(exp)[run]
    assert after[STAGES[0]]["job_id"] == first[STAGES[0]]["job_id"] and after[STAGES[0]]["attempts"] == 1
    again = {after[s]["job_id"].split("/", 1)[0] for s in STAGES[1:]}
    assert len(again) == 1 and again != {job}
    assert after[STAGES[1]]["attempts"] == 2 and after[STAGES[1]]["job_stages"] == STAGES[1:]
