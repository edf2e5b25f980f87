"""SIGKILL of `ck run` itself during its bookkeeping, and of an evaluation stage: a re-run finishes the
work, with nothing lost and nothing done twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_spec
from kill_fixtures import KILL_AFTER

from cruijff_kit import status
from cruijff_kit._base.fileio import read_jsonl

SWEEP = """
experiment: toy
model: {path: some-org/some-model}
dataset: {plugin: toy-data}
train: {plugin: toy, epochs: 1, steps_per_epoch: 3}
eval:
  - {plugin: toy-eval, task: exact, checkpoints: last}
sweep:
  train.lora.rank: [4, 8]
  train.learning_rate: [1.0e-4, 2.0e-4]
"""
STAGES = {"train", "eval.exact.base", "eval.exact.epoch_0"}



def run_dirs(exp: Path) -> list[Path]:
    return sorted(p for p in (exp / "runs").iterdir() if p.is_dir()) if (exp / "runs").is_dir() else []


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for_orphans(exp: Path, timeout: float = 120) -> None:
    """Stage processes started by the killed `ck run` go on (own session): wait until they end."""
    shared = sorted((exp / "shared").iterdir()) if (exp / "shared").is_dir() else []
    pids = {int(e["pid"]) for d in [*run_dirs(exp), *shared] for e in status.read(d)["stages"].values()
            if e.get("pid")}
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in pids), "orphaned stage processes did not finish"


# where `ck run` is killed: (module, function, after how many calls)
KILL_POINTS = {
    # writing run folders: the experiment spec, then the 1st run's spec; killed before the 2nd run's
    "writing-run-folders": ("cruijff_kit._engine.runner", "atomic_write_yaml", 2),
    # marking stages submitted, before any is started (after the 4 runs' pointers to the shared base eval)
    "marking-submitted": ("cruijff_kit.status", "update_stage", 9),
    # submitting: the 5th stage process was just started (it goes on alone)
    "starting-stages": ("cruijff_kit_local.scheduler", "LocalScheduler._start", 5),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_ck_run_killed_during_bookkeeping_then_rerun_finishes_once(tmp_path, with_toy, point):
    spec = write_spec(tmp_path, SWEEP)
    module, attr, after = KILL_POINTS[point]
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER, module, attr, str(after), "run", str(spec)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    exp = tmp_path / "runs" / "toy"
    before = {d.name: status.read(d)["stages"] for d in run_dirs(exp)}
    assert sum(e.get("state") == "done" for st in before.values() for e in st.values()) < 8  # work was left
    wait_for_orphans(exp)

    res = subprocess.run([sys.executable, "-m", "cruijff_kit", "run", str(spec)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    dirs = run_dirs(exp)
    assert len(dirs) == 4
    # the base eval is the same in every run: it ran once, in its shared folder
    (shared,) = (exp / "shared").iterdir()
    base = status.read(shared)["stages"]["eval.exact.base"]
    assert base["state"] == "done" and base["attempts"] == 1
    for d in dirs:
        st = status.read(d)["stages"]
        assert set(st) == STAGES and st.pop("eval.exact.base")["shared"] == f"shared/{shared.name}"
        assert all(e["state"] == "done" for e in st.values()), (d.name, st)
        assert all(e["attempts"] == 1 for e in st.values()), (d.name, st)  # no stage ran twice
        metrics = read_jsonl(d / "train" / "metrics.jsonl")
        assert [r["step"] for r in metrics] == [1, 2, 3]  # every step once, by one process
        assert len({r["pid"] for r in metrics}) == 1
        results = json.loads((d / "eval" / "results.json").read_text())
        assert set(results["exact"]) == {"base", "epoch_0"}
    # a third run has nothing left to do
    res = subprocess.run([sys.executable, "-m", "cruijff_kit", "run", str(spec)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "0 stage(s) submitted, 9 already done" in res.stdout, res.stdout


EVAL_SPEC = """
experiment: evalkill
model: {{path: {model}}}
dataset: {{plugin: json-instruct, path: data.json}}
eval:
  - {{plugin: inspect, task: exact-match, batch_size: 1, device: cpu, generation: {{max_tokens: 24}}}}
  - {{plugin: inspect, task: includes, limit: 2, device: cpu, generation: {{max_tokens: 4}}}}
scheduler: {{plugin: local, group_evals: false}}  # each stage its own process (one process: test_fast_loop.py)
"""


def write_eval_data(folder: Path, n_test: int) -> None:
    words = ["apple", "banana", "cherry", "dog", "house", "water", "city", "book"]
    rows = [{"input": words[i % len(words)], "output": words[i % len(words)].upper()} for i in range(n_test)]
    (folder / "data.json").write_text(json.dumps({"train": rows[:4], "validation": rows[:2], "test": rows}))


@pytest.mark.integration
def test_eval_stage_killed_with_sigkill_is_redone_once(tmp_path, tiny_llama):
    """The inspect evaluator on the tiny model, killed mid-evaluation; the re-run redoes that target only."""
    write_eval_data(tmp_path, n_test=60)
    spec = write_spec(tmp_path, EVAL_SPEC.format(model=tiny_llama))
    proc = subprocess.Popen([sys.executable, "-m", "cruijff_kit", "run", str(spec)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    exp = tmp_path / "runs" / "evalkill"
    killed_stage = "eval.exact-match.base"
    deadline = time.monotonic() + 300
    run_dir = None
    while time.monotonic() < deadline and proc.poll() is None:
        dirs = run_dirs(exp)
        if dirs:
            run_dir = dirs[0]
            entry = status.read(run_dir)["stages"].get(killed_stage, {})
            logs = list((run_dir / "eval" / "exact-match" / "base").glob("*.eval"))
            if entry.get("state") == "running" and logs:  # inspect has started writing its log
                break
        time.sleep(0.1)
    assert run_dir is not None and proc.poll() is None, "the evaluation never started"
    time.sleep(0.5)  # let it evaluate some samples
    os.kill(int(status.read(run_dir)["stages"][killed_stage]["pid"]), signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, out + err
    st = status.read(run_dir)["stages"]
    assert st[killed_stage]["state"] == "interrupted" and st[killed_stage]["exit_code"] == -9
    assert st["eval.includes.base"]["state"] == "done"  # the other stage went on
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert "exact-match" not in results and set(results["includes"]) == {"base"}
    other_log = (run_dir / "eval" / "includes" / "base").stat().st_mtime

    res = subprocess.run([sys.executable, "-m", "cruijff_kit", "run", str(spec)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 stage(s) submitted" in res.stdout, res.stdout
    st = status.read(run_dir)["stages"]
    assert all(e["state"] == "done" for e in st.values()), st
    assert st[killed_stage]["attempts"] == 2 and st["eval.includes.base"]["attempts"] == 1
    assert (run_dir / "eval" / "includes" / "base").stat().st_mtime == other_log  # not redone
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert set(results) == {"exact-match", "includes"}
    assert set(results["exact-match"]) == {"base"} and set(results["includes"]) == {"base"}
    from inspect_ai.log import read_eval_log

    log = read_eval_log(str(run_dir / results["exact-match"]["base"]["log"]))
    assert log.status == "success" and len(log.samples or []) == 60


def test_rerun_while_a_killed_runs_stage_goes_on_holds_its_dependents(tmp_path, with_toy):
    """`ck run` killed just after starting a training; run again at once, while that training goes on
    alone: its evals wait (no failure, no second training), and the next `ck run` finishes them."""
    text = SWEEP.split("sweep:")[0].replace("steps_per_epoch: 3", "steps_per_epoch: 3, step_seconds: 3")
    spec = write_spec(tmp_path, text)
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER, "cruijff_kit_local.scheduler",
                             "LocalScheduler._start", "1", "run", str(spec)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    (run_dir,) = run_dirs(tmp_path / "runs" / "toy")
    orphan = int(status.read(run_dir)["stages"]["train"]["pid"])
    assert pid_alive(orphan)

    res = subprocess.run([sys.executable, "-m", "cruijff_kit", "run", str(spec)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 still running" in res.stdout, res.stdout
    st = status.read(run_dir)["stages"]
    assert st["eval.exact.base"]["state"] == "done"
    assert st["eval.exact.epoch_0"]["state"] not in ("done", "failed", "running")  # held back, not started

    wait_for_orphans(tmp_path / "runs" / "toy")
    res = subprocess.run([sys.executable, "-m", "cruijff_kit", "run", str(spec)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "1 stage(s) submitted, 2 already done" in res.stdout, res.stdout
    st = status.read(run_dir)["stages"]
    assert all(e["state"] == "done" and e["attempts"] == 1 for e in st.values()), st
    metrics = read_jsonl(run_dir / "train" / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [1, 2, 3] and {r["pid"] for r in metrics} == {orphan}
