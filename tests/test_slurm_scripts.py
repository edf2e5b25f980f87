"""The slurm scheduler's job scripts, options and bookkeeping, without a SLURM cluster.

`ck run --dry-run` writes every script; the scripts are read for their resources and secrets, and
run directly with bash (as a compute node would) to check that the stage's exit code is theirs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from slurm_fixtures import read_status, slurm_env_fixture, slurm_plugin_site_fixture, slurm_spec

FIXTURES = (slurm_env_fixture, slurm_plugin_site_fixture)
ROOT = Path(__file__).resolve().parents[1]
SECRET = "hf_dry_run_secret_value_0815"
WANDB = "wandb_secret_value_4242"


def _sbatch_options(text: str) -> list[str]:
    return [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("#SBATCH ")]


def _dry_run(ck: Any, spec: Path, *args: str) -> subprocess.CompletedProcess[str]:
    res = ck("run", str(spec), "--dry-run", *args, cwd=spec.parent)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
    return res


def test_dry_run_writes_scripts_with_the_resources_asked(slurm_env: dict[str, str], ck: Any, tmp_path: Path) -> None:
    spec = slurm_spec(
        tmp_path, experiment="dry", sweep={"train.lora.rank": [4, 8]},
        scheduler={"resources": {"gpus": 2, "cpus": 6, "memory": "1.5GB", "time": "1-02:03:00", "nodes": 2},
                   "eval_resources": {"gpus": 1, "cpus": 2, "memory": "4GB", "time": "00:20:00"},
                   "constraint": "a100|h100", "array_parallelism": 3, "signal_seconds": 300},
        profile={"account": "proj-42", "partition": "gpu", "qos": "high", "reservation": "workshop",
                 "gpu_type": "a100", "setup": ["module load cuda/12.4", "source $HOME/venvs/ck/bin/activate"],
                 "sbatch": ["#SBATCH --mail-type=FAIL", "--exclusive"], "python": "python3"})
    res = _dry_run(ck, spec)
    assert "2 run(s); 4 stage(s) planned (dry run)" in res.stdout
    exp = tmp_path / "out" / "dry"
    runs = sorted(p.name for p in (exp / "runs").iterdir())
    train = (exp / "runs" / runs[0] / "slurm" / "train.sbatch").read_text()
    opts = _sbatch_options(train)
    for want in ("--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=6", "--mem=1536M", "--time=1563",
                 "--gres=gpu:a100:2", "--constraint=a100|h100", "--account=proj-42", "--partition=gpu",
                 "--qos=high", "--reservation=workshop", "--requeue", "--signal=B:USR2@300",
                 "--kill-on-invalid-dep=yes", "--mail-type=FAIL", "--exclusive",
                 f"--output={exp / 'runs' / runs[0] / 'logs' / 'train.out'}"):
        assert want in opts, (want, opts)
    assert "module load cuda/12.4\nsource $HOME/venvs/ck/bin/activate" in train
    assert "export HF_HUB_OFFLINE=1" in train
    assert "PY=python3" in train
    # nodes > 1: the trainer's distributed path across the allocation, 2 processes per node (one per GPU)
    assert "srun --ntasks-per-node=1" in train and "-m torch.distributed.run" in train
    assert "--nproc-per-node=2" in train and '-m cruijff_kit stage "$RUN_DIR" "$STAGE"' in train

    ev = (exp / "runs" / runs[0] / "slurm" / "eval.check.epoch_0.sbatch").read_text()
    ev_opts = _sbatch_options(ev)
    for want in ("--nodes=1", "--cpus-per-task=2", "--mem=4096M", "--time=20", "--gres=gpu:a100:1",
                 "--signal=B:USR2@300"):
        assert want in ev_opts, (want, ev_opts)
    assert "torch.distributed.run" not in ev and 'ck_run "$PY" -m cruijff_kit stage' in ev
    assert "CK_OOM_RETRIES=0" in ev and "CK_OOM_RETRIES=2" in train

    arrays = sorted((exp / "slurm").glob("*.sbatch"))
    assert [a.name.split("-", 3)[-1] for a in arrays] == ["train.sbatch", "eval.check.epoch_0.sbatch"]
    array = arrays[0].read_text()
    assert "--array=0,1%2" in _sbatch_options(array)  # both runs, at most min(3, 2) at once
    tasks = re.findall(r"^  (\d+)\) ck_script=(\S+); export CK_ARRAY_POS=(\d+) ;;$", array, re.M)
    assert sorted(Path(path).parent.parent.name for _, path, _ in tasks) == runs
    assert [(i, pos) for i, _, pos in tasks] == [("0", "0"), ("1", "1")]
    assert all(Path(path).name == "train.sbatch" for _, path, _ in tasks)
    status = read_status(exp)
    for run in runs:
        assert status[run]["train"]["state"] == "pending" and "job_id" not in status[run]["train"]
        assert status[run]["eval.check.epoch_0"]["dependency"] == "afterok: its train job"


def test_scripts_and_run_folders_hold_no_secret(slurm_env: dict[str, str], ck: Any, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("WANDB_API_KEY", WANDB)
    spec = slurm_spec(tmp_path, experiment="secret",
                      profile={"setup": ["export HF_TOKEN=$HF_TOKEN", "echo ready > /dev/null"]})
    _dry_run(ck, spec)
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert any(p.suffix == ".sbatch" for p in files)
    for path in files:
        text = path.read_text(errors="replace")
        assert SECRET not in text and WANDB not in text, path
    script = next(p for p in files if p.name == "train.sbatch").read_text()
    assert "export HF_TOKEN=$HF_TOKEN" in script and "echo ready > /dev/null" in script
    # (a setup line holding the value itself is refused: tests/test_reliability_secrets.py)


def test_a_literal_secret_in_the_profile_is_refused(slurm_env: dict[str, str], ck: Any, tmp_path: Path) -> None:
    spec = slurm_spec(tmp_path, experiment="literal",
                      profile={"setup": ["module load cuda", "export WANDB_API_KEY=abcdef0123456789"]})
    res = ck("run", str(spec), "--dry-run", cwd=tmp_path)
    assert res.returncode == 2
    assert "slurm.setup" in res.stderr and "WANDB_API_KEY" in res.stderr and "ck.profile.yaml" in res.stderr
    assert not list((tmp_path / "out").rglob("*.sbatch"))


@pytest.mark.parametrize(("key", "value", "message"), [
    ("resources", {"memory": "lots"}, "is not a size"),
    ("resources", {"time": "90 minutes"}, "is not HH:MM:SS"),
    ("launcher", "mpirun", "scheduler.launcher"),
    ("array_paralelism", 4, "Did you mean `array_parallelism`?"),
])
def test_bad_scheduler_options_name_the_field(slurm_env: dict[str, str], ck: Any, tmp_path: Path, key: str,
                                              value: Any, message: str) -> None:
    spec = slurm_spec(tmp_path, experiment="bad", scheduler={key: value})
    res = ck("validate", str(spec), cwd=tmp_path)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert "spec.yaml" in res.stderr


def _run_script(script: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a stage script the way a compute node would (no SLURM variables needed)."""
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_the_job_exit_code_is_the_stages(slurm_env: dict[str, str], ck: Any, tmp_path: Path) -> None:
    flag = tmp_path / "may-succeed"
    spec = slurm_spec(tmp_path, experiment="exitcode", train={"fail_until": str(flag)})
    _dry_run(ck, spec)
    run_dir = next((tmp_path / "out" / "exitcode" / "runs").iterdir())
    script = run_dir / "slurm" / "train.sbatch"
    failed = _run_script(script, slurm_env)
    assert failed.returncode == 1
    assert read_status(run_dir.parent.parent)[run_dir.name]["train"]["state"] == "failed"
    assert "[ck-slurm] stage train exited with code 1" in (run_dir / "logs" / "train.err").read_text()
    flag.write_text("ok")
    assert _run_script(script, slurm_env).returncode == 0
    assert read_status(run_dir.parent.parent)[run_dir.name]["train"]["state"] == "done"


def test_out_of_memory_in_the_log_halves_the_batch_and_ck_run_keeps_it(
        slurm_env: dict[str, str], ck: Any, tmp_path: Path) -> None:
    """The script's retry loop without SLURM: CUDA OOM at 8, success at 4; the change survives `ck run`."""
    spec = slurm_spec(tmp_path, experiment="oomdry",
                      train={"mode": "oom", "oom_above": 4, "batch_size": 8, "gradient_accumulation": 3},
                      scheduler={"oom_retries": 1})
    _dry_run(ck, spec)
    run_dir = next((tmp_path / "out" / "oomdry" / "runs").iterdir())
    res = _run_script(run_dir / "slurm" / "train.sbatch", slurm_env)
    assert res.returncode == 0
    err = (run_dir / "logs" / "train.err").read_text()
    assert "retrying with batch_size 4 and gradient_accumulation 6" in err
    data = json.loads((run_dir / "status.json").read_text())
    assert data["overrides"] == {"train.batch_size": 4, "train.gradient_accumulation": 6}
    assert data["stages"]["train"]["oom_retries"] == 1 and data["stages"]["train"]["state"] == "done"
    # a second dry run rewrites the run folder from the spec and keeps the recorded change
    _dry_run(ck, spec)
    train = yaml.safe_load((run_dir / "spec.yaml").read_text())["train"]
    assert (train["batch_size"], train["gradient_accumulation"]) == (4, 6)


def test_out_of_memory_without_retries_left_fails(slurm_env: dict[str, str], ck: Any, tmp_path: Path) -> None:
    spec = slurm_spec(tmp_path, experiment="oomfail", train={"mode": "oom", "oom_above": 1, "batch_size": 4},
                      scheduler={"oom_retries": 1})
    _dry_run(ck, spec)
    run_dir = next((tmp_path / "out" / "oomfail" / "runs").iterdir())
    res = _run_script(run_dir / "slurm" / "train.sbatch", slurm_env)
    assert res.returncode == 1
    entry = json.loads((run_dir / "status.json").read_text())["stages"]["train"]
    assert entry["state"] == "failed" and entry["oom"] is True and entry["oom_retries"] == 1
    assert "not retried" in entry["error"]


def test_failed_stages_wait_for_retry_failed(slurm_env: dict[str, str], ck: Any, tmp_path: Path) -> None:
    spec = slurm_spec(tmp_path, experiment="retry")
    _dry_run(ck, spec)
    exp = tmp_path / "out" / "retry"
    run_dir = next((exp / "runs").iterdir())
    from cruijff_kit import status

    status.update_stage(run_dir, "train", state="failed", error="boom")
    res = _dry_run(ck, spec)
    assert "0 stage(s) planned" in res.stdout and "1 failed stage(s) not submitted again" in res.stdout
    res = _dry_run(ck, spec, "--retry-failed")
    assert "2 stage(s) planned" in res.stdout


def test_example_spec_validates(slurm_env: dict[str, str], ck: Any, tmp_path: Path) -> None:
    data = tmp_path / "capitalize.json"
    assert ck("data", "capitalize", str(data)).returncode == 0
    example = ROOT / "examples" / "llama-3.2-1b-slurm.yaml"
    res = ck("validate", str(example), "--set", f"dataset.path={data}")
    assert res.returncode == 0, res.stderr
    assert "4 run(s), 16 stage(s)" in res.stdout
    spec = yaml.safe_load(example.read_text())
    assert spec["scheduler"]["plugin"] == "slurm" and spec["model"]["path"] == "meta-llama/Llama-3.2-1B-Instruct"


def test_state_mapping_and_sacct_ids() -> None:
    from cruijff_kit_slurm import slurmcli

    def state(s: str, **kw: Any) -> str:
        return slurmcli.stage_state(slurmcli.JobInfo("1", s, **kw))

    assert [state(s) for s in ("PENDING", "RUNNING", "COMPLETED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY",
                               "NODE_FAIL", "REQUEUED")] == \
        ["submitted", "running", "done", "failed", "failed", "failed", "failed", "submitted"]
    assert state("PREEMPTED", queued=True) == "submitted" and state("PREEMPTED") == "interrupted"
    assert state("CANCELLED", usage={"CancelledBy": "0"}) == "cancelled"
    assert state("CANCELLED", reason="Dependency") == "pending"  # removed by SLURM: its train failed
    assert slurmcli._expand("12_[1-3%2]") == ["12_1", "12_2", "12_3"]
    assert slurmcli._expand("12_4") == ["12_4"] and slurmcli._expand("13") == ["13"]


def test_plugin_registration_imports_nothing_heavy() -> None:
    code = ("import sys, cruijff_kit._engine.planner, cruijff_kit.status; before = set(sys.modules); "
            "import cruijff_kit_slurm, cruijff_kit_slurm.scheduler; new = set(sys.modules) - before; "
            "print(','.join(m for m in ('torch', 'submitit', 'transformers', 'datasets') if m in new))")
    res = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "", res.stdout


def test_readme_names_every_option() -> None:
    from cruijff_kit_slurm.config import SlurmConfig, SlurmProfile

    text = (ROOT / "plugins" / "schedulers" / "slurm" / "README.md").read_text() + \
        (ROOT / "docs" / "slurm.md").read_text()
    for name in list(SlurmConfig.model_fields) + list(SlurmProfile.model_fields):
        assert re.search(rf"`{name}`", text), name


def _fake_slurm(folder: Path, sacct_state: str) -> Path:
    """sbatch, squeue, sacct stand-ins: sbatch hands out ids 7, 8, ...; sacct reports every job as given."""
    folder.mkdir()
    (folder / "sbatch").write_text(
        f'#!/bin/bash\nn=$(cat {folder}/next 2>/dev/null || echo 7); echo $((n+1)) > {folder}/next\n'
        f'echo "$@" >> {folder}/sbatch.log; echo $n\n')
    (folder / "squeue").write_text("#!/bin/bash\nexit 1\n")
    (folder / "sacct").write_text(
        "#!/bin/bash\nids=$(echo \"$@\" | sed -E 's/.*-j ([^ ]+).*/\\1/')\n"
        "for i in ${ids//,/ }; do\n"
        f"  echo \"$i|{sacct_state}|0:125|None|00:01:00|00:00:50||billing=1|vm|2026-01-01T00:00:00|2026-01-01T00:01:00\"\n"
        f"  echo \"$i.batch|{sacct_state}|0:125||00:01:00|00:00:50|15G|cpu=1|vm|2026-01-01T00:00:00|2026-01-01T00:01:00\"\n"
        "done\n")
    for name in ("sbatch", "squeue", "sacct"):
        (folder / name).chmod(0o755)
    return folder


def test_slurm_out_of_memory_state_retried_with_half_the_batch(
        slurm_env: dict[str, str], ck: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job SLURM stopped for memory is `failed` with its state; --retry-failed halves the batch."""
    fake = _fake_slurm(tmp_path / "fakebin", "OUT_OF_MEMORY")
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    spec = slurm_spec(tmp_path, experiment="oomstate", train={"batch_size": 8})
    res = ck("run", str(spec), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "submitted train: job 7" in res.stderr and "submitted eval.check.epoch_0: job 8" in res.stderr
    assert "--dependency=afterok:7" in (fake / "sbatch.log").read_text()
    shown = ck("status", str(spec), "--json", cwd=tmp_path)
    rows = {r["stage"]: r for r in json.loads(shown.stdout)}
    train = rows["train"]
    assert train["state"] == "failed" and train["slurm_state"] == "OUT_OF_MEMORY" and train["oom"] is True
    assert "OUT_OF_MEMORY" in train["error"] and train["usage"]["maxrss"] == "15G"
    exp = tmp_path / "out" / "oomstate"
    run_dir = next((exp / "runs").iterdir())
    assert json.loads((run_dir / "slurm" / "train.sacct.json").read_text())["job"]["state"] == "OUT_OF_MEMORY"
    res = ck("run", str(spec), "--retry-failed", cwd=tmp_path)
    assert res.returncode == 0 and "batch_size 8 -> 4" in res.stderr
    train_spec = yaml.safe_load((run_dir / "spec.yaml").read_text())["train"]
    assert (train_spec["batch_size"], train_spec["gradient_accumulation"]) == (4, 2)
    entry = read_status(exp)[run_dir.name]["train"]
    assert entry["oom_retries"] == 1 and entry["job_id"] == "9" and entry["state"] == "submitted"
