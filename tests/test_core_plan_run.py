"""Planning sweeps and running them through `ck` with a third-party plugin and the local scheduler."""

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
import yaml
from conftest import write_spec

from cruijff_kit import status
from cruijff_kit._base.fileio import read_jsonl

SWEEP = """
experiment: toy
model: {path: some-org/some-model}
dataset: {plugin: toy-data}
train: {plugin: toy, epochs: 2, steps_per_epoch: 2}
eval:
  - {plugin: toy-eval, task: exact, checkpoints: all}
sweep:
  train.lora.rank: [4, 8]
  train.learning_rate: [1.0e-4, 2.0e-4]
"""


def run_dirs(exp: Path) -> list[Path]:
    return sorted(p for p in (exp / "runs").iterdir() if p.is_dir())


# four toy runs through `ck run`, each stage its own process: 42 s measured on a busy 2-core machine, close to the unit limit
@pytest.mark.timeout(180)
def test_sweep_2x2_runs_through_ck_with_third_party_plugin(tmp_path, with_toy, ck):
    spec = write_spec(tmp_path, SWEEP)
    res = ck("plan", str(spec), check=True)
    # 2 ranks x 2 learning rates = 4 runs; each run's train, eval of epoch_0 and epoch_1 = 12 stages, and
    # the base eval, identical in the 4 runs, once = 13
    assert "Runs: 4, stages: 13 (4 run stages served by 1 shared)" in res.stdout
    rows = re.findall(r"^ (\S+) +finetune +(\d+) +(\S+) ", res.stdout, flags=re.MULTILINE)
    assert sorted((int(rank), float(lr)) for _, rank, lr in rows) == [(4, 1e-4), (4, 2e-4), (8, 1e-4), (8, 2e-4)]
    assert (tmp_path / "runs/toy/plan.md").exists()
    plan_md = (tmp_path / "runs/toy/plan.md").read_text()
    assert "train.lora.rank" in plan_md and plan_md.count("| finetune |") == 4

    res = ck("run", str(spec), check=True)
    # 4 runs x (train, epoch_0, epoch_1) + the base eval, the same in every run: once (shared) = 13
    assert "4 run(s); 13 stage(s) submitted" in res.stdout
    exp = tmp_path / "runs" / "toy"
    (shared,) = (exp / "shared").iterdir()
    assert status.read(shared)["stages"]["eval.exact.base"]["state"] == "done"
    assert json.loads((shared / "eval" / "results.json").read_text())["exact"]["base"]["accuracy"]["value"] == 0.5
    dirs = run_dirs(exp)
    assert len(dirs) == 4
    ranks = set()
    for d in dirs:
        spec_r = yaml.safe_load((d / "spec.yaml").read_text())
        ranks.add((spec_r["train"]["lora"]["rank"], spec_r["train"]["learning_rate"]))
        st = status.read(d)["stages"]
        assert set(st) == {"train", "eval.exact.base", "eval.exact.epoch_0", "eval.exact.epoch_1"}
        assert st["eval.exact.base"] == {"shared": f"shared/{shared.name}", "updated": st["eval.exact.base"]["updated"]}
        assert all(e["state"] == "done" for k, e in st.items() if k != "eval.exact.base"), st
        results = json.loads((d / "eval" / "results.json").read_text())
        assert results["exact"]["base"] == {"shared": f"shared/{shared.name}"}
        assert results["exact"]["epoch_1"]["accuracy"]["value"] == 1.0
        assert (d / "train/epoch_1/adapter/adapter_config.json").exists()
        assert not (d / "train/state").exists()  # removed after success (keep_state false)
        assert len(read_jsonl(d / "train/metrics.jsonl")) == 4
        env = json.loads((d / "env.json").read_text())
        assert "cruijff-kit" in env["packages"] and "train" in env["stages"]
        assert (d / "logs" / "train.out").exists()
    assert ranks == {(4, 1e-4), (4, 2e-4), (8, 1e-4), (8, 2e-4)}

    # names are stable: planning again gives the same folders
    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.spec import load_spec

    names = sorted(r.name for r in make_plan(load_spec(spec)).runs)
    assert names == [d.name for d in dirs]

    # re-running skips everything that finished
    mtimes = {d: (d / "train/metrics.jsonl").stat().st_mtime for d in dirs}
    res = ck("run", str(spec), check=True)
    assert "0 stage(s) submitted, 13 already done" in res.stdout
    assert all((d / "train/metrics.jsonl").stat().st_mtime == m for d, m in mtimes.items())

    # a changed value makes new runs; finished ones stay
    res = ck("run", str(spec), "--set", "train.epochs=1", "--set", "train.save_epochs=last",
             "--set", "eval[0].checkpoints=last", check=True)
    # each new run's train and epoch_0; their base eval is the one already done (same model, task, data, seed)
    assert "4 run(s); 8 stage(s) submitted, 1 already done" in res.stdout
    assert len(run_dirs(exp)) == 8 and list((exp / "shared").iterdir()) == [shared]
    users = yaml.safe_load((shared / "spec.yaml").read_text())["run"]["shared"]["used_by"]
    assert sorted(users) == [d.name for d in run_dirs(exp)]  # the runs of both plans

    # --force redoes
    res = ck("run", str(spec), "--force", check=True)
    assert "13 stage(s) submitted" in res.stdout

    # ck status shows the table
    res = ck("status", str(spec), check=True)
    for d in dirs:  # each run of the spec: trained, base eval done once in shared/, both epochs evaluated
        assert re.search(rf"│ {d.name} +│ done +│ done \(shared\) +│ done +│ done +│", res.stdout), res.stdout
    rows = json.loads(ck("status", str(spec), "--json", check=True).stdout)
    assert len(rows) == 16 + 12 and {r["state"] for r in rows} == {"done"}


def test_failed_stage_is_reported_and_blocks_its_evals(tmp_path, with_toy, ck):
    spec = write_spec(tmp_path, SWEEP.split("sweep:")[0].replace("steps_per_epoch: 2", "steps_per_epoch: 2, fail_at_step: 1"))
    res = ck("run", str(spec))
    assert res.returncode == 1
    assert "FAILED" in res.stderr and "toy failure at step 1" in res.stderr
    (d,) = run_dirs(tmp_path / "runs" / "toy")
    st = status.read(d)["stages"]
    assert st["train"]["state"] == "failed"
    assert "RuntimeError: toy failure at step 1" in st["train"]["error"]
    assert "toy failure" in st["train"]["error_tail"]
    assert st["eval.exact.base"]["state"] == "done"  # does not need training
    assert st["eval.exact.epoch_0"]["state"] == "pending"
    assert "did not finish" in st["eval.exact.epoch_0"]["error"]
    res = ck("status", str(tmp_path / "runs" / "toy"))
    assert res.returncode == 1  # a stage failed (docs/cli.md, "Exit codes")
    assert "failed" in res.stdout and "toy failure" in res.stdout


def test_stage_killed_with_sigkill_resumes(tmp_path, with_toy):
    text = SWEEP.split("sweep:")[0].replace("steps_per_epoch: 2", "steps_per_epoch: 10, step_seconds: 0.1")
    spec = write_spec(tmp_path, text)
    env = {**os.environ}
    proc = subprocess.Popen([sys.executable, "-m", "cruijff_kit", "run", str(spec)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    exp = tmp_path / "runs" / "toy"
    deadline = time.time() + 60
    state_file = None
    while time.time() < deadline:
        dirs = run_dirs(exp) if (exp / "runs").exists() else []
        if dirs and (dirs[0] / "train/state/state.json").exists():
            state_file = dirs[0] / "train/state/state.json"
            step = json.loads(state_file.read_text())["step"]
            if step >= 3:
                break
        time.sleep(0.05)
    assert state_file is not None, "training never started"
    run_dir = state_file.parents[2]
    pid = status.read(run_dir)["stages"]["train"]["pid"]
    os.kill(pid, signal.SIGKILL)  # the stage process dies without any chance to clean up
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    st = status.read(run_dir)["stages"]["train"]
    assert st["state"] == "interrupted" and st["exit_code"] == -9
    killed_at = json.loads(state_file.read_text())["step"]
    assert 3 <= killed_at < 20

    res = subprocess.run([sys.executable, "-m", "cruijff_kit", "run", str(spec)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"resuming from step {killed_at}" in (run_dir / "logs/train.out").read_text()
    steps = [r["step"] for r in read_jsonl(run_dir / "train/metrics.jsonl")]
    assert steps == list(range(1, 21))  # every step once: resumed, not redone
    assert len({r["pid"] for r in read_jsonl(run_dir / "train/metrics.jsonl")}) == 2
    assert status.read(run_dir)["stages"]["train"]["attempts"] == 2
    assert all(e["state"] == "done" for e in status.read(run_dir)["stages"].values())


def _wait_for_training(proc: subprocess.Popen[str], exp: Path, limit: float) -> Path:
    """The run folder once its train stage is running and has taken a step; fails (never guesses) otherwise."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert proc.poll() is None, "ck ended before its train stage was seen running:\n" + "".join(proc.communicate())
        dirs = run_dirs(exp) if (exp / "runs").exists() else []
        if (dirs and (dirs[0] / "train/state/state.json").exists()
                and status.read(dirs[0]).get("stages", {}).get("train", {}).get("state") == "running"):
            return dirs[0]
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the train stage was not seen running within {limit} s:\n" + "".join(proc.communicate()))


def test_ctrl_c_marks_running_stages_interrupted(tmp_path, with_toy):
    # a stage that cannot finish while the test runs (100000 steps of 0.05 s), interrupted only once it is
    # seen running: the outcome does not depend on how loaded the machine is
    text = SWEEP.split("sweep:")[0].replace("steps_per_epoch: 2", "steps_per_epoch: 100000, step_seconds: 0.05")
    spec = write_spec(tmp_path, text)
    proc = subprocess.Popen([sys.executable, "-m", "cruijff_kit", "run", str(spec)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    exp = tmp_path / "runs" / "toy"
    d = _wait_for_training(proc, exp, limit=40)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 130, out + err
    assert run_dirs(exp) == [d]
    st = status.read(d)["stages"]["train"]
    assert st["state"] == "interrupted"
    assert not (d / "train/epoch_0").exists()  # nothing half-done marked as done
    assert status.read(d)["stages"]["eval.exact.epoch_0"]["state"] != "done"


def test_status_file_survives_many_concurrent_writers(tmp_path):
    script = (
        "import sys\n"
        "from cruijff_kit import status\n"
        "run, i = sys.argv[1], int(sys.argv[2])\n"
        "for k in range(25):\n"
        "    status.update_stage(run, f'stage{i}', state='running', k=k, payload='x' * 2000)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(i)]) for i in range(12)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    data = json.loads((tmp_path / "status.json").read_text())
    assert {f"stage{i}" for i in range(12)} == set(data["stages"])
    assert all(e["k"] == 24 for e in data["stages"].values())
    assert not list(tmp_path.glob(".status.json.*.tmp"))


def test_local_scheduler_gives_each_slot_its_own_gpu(tmp_path, toy_site, ck):
    """With two GPUs visible, two runs train at once, each seeing only its own device."""
    text = SWEEP.split("sweep:")[0].replace("steps_per_epoch: 2", "steps_per_epoch: 4, step_seconds: 0.25")
    text = text.replace("eval:\n  - {plugin: toy-eval, task: exact, checkpoints: all}\n", "")
    text += "eval: []\nscheduler: {plugin: local, resources: {gpus: 1}}\nsweep:\n  train.lora.rank: [4, 8]\n"
    spec = write_spec(tmp_path, text)
    env = {"CUDA_VISIBLE_DEVICES": "0,1", "PYTHONPATH": str(toy_site)}
    ck("run", str(spec), env=env, check=True)
    rows = {d.name: read_jsonl(d / "train/metrics.jsonl") for d in run_dirs(tmp_path / "runs" / "toy")}
    devices = {name: {r["cuda"] for r in rs} for name, rs in rows.items()}
    assert sorted(d for ds in devices.values() for d in ds) == ["0", "1"], devices
    (a, b) = rows.values()
    overlap = min(a[-1]["time"], b[-1]["time"]) - max(a[0]["time"], b[0]["time"])
    assert overlap > 0, "the two runs did not train at the same time"


def test_models_tiny_through_cli(tmp_path, ck):
    res = ck("models", "tiny", str(tmp_path / "m"), "--family", "qwen2", check=True)
    assert "Built tiny qwen2 model" in res.stdout
    assert (tmp_path / "m" / "config.json").exists() and (tmp_path / "m" / "vocab.json").exists()
