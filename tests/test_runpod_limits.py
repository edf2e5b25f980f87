"""The runpod scheduler's plan-time checks, cost guard, time limit, dry run, one pod per stage, and the
example spec; against the fake RunPod and bucket on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from runpod_fixtures import (
    BUCKET,
    profile_data,
    run_ck,
    run_dirs,
    running_fake_runpod,
    running_fake_store,
    stages,
    write_profile,
    write_toy_spec,
)

fake_runpod = pytest.fixture(running_fake_runpod, name="fake_runpod")
fake_store = pytest.fixture(running_fake_store, name="fake_store")

ROOT = Path(__file__).resolve().parents[1]


def copy_example(folder: Path) -> Path:
    """examples/qlora-runpod.yaml in ``folder``, with the data it names."""
    (folder / "examples").mkdir()
    example = folder / "examples" / "qlora-runpod.yaml"
    shutil.copy(ROOT / "examples" / "qlora-runpod.yaml", example)
    (folder / ".cache" / "data").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "data" / "capitalize_instruct.json", folder / ".cache" / "data" / "capitalize.json")
    return example


def test_example_spec_validates_and_needs_key_and_bucket(fake_store, tmp_path, capsys, monkeypatch):
    example = copy_example(tmp_path)
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump(profile_data(fake_store)))
    monkeypatch.setenv("CK_PROFILE", str(profile))
    monkeypatch.setenv("RUNPOD_API_KEY", "test-key")
    code, out = run_ck(capsys, "validate", str(example))
    assert code == 0 and "valid. 2 run(s), 8 stage(s)" in out, out

    monkeypatch.delenv("RUNPOD_API_KEY")
    code, out = run_ck(capsys, "validate", str(example))
    assert code == 2 and "at `scheduler`: RUNPOD_API_KEY is not set" in out

    monkeypatch.setenv("RUNPOD_API_KEY", "test-key")
    profile.write_text(yaml.safe_dump({"runpod": {"gpu_type": "NVIDIA A100 80GB PCIe"}}))
    code, out = run_ck(capsys, "validate", str(example))
    assert code == 2 and "runpod.store" in out and "needs a bucket" in out


def test_init_yes_writes_a_profile_that_validates_or_says_what_it_needs(fake_store, tmp_path, capsys, monkeypatch):
    """`ck init --scheduler runpod --yes` never writes a profile that `ck validate` then refuses."""
    example = copy_example(tmp_path)
    profile = tmp_path / "profile.yaml"
    monkeypatch.setenv("CK_PROFILE", str(profile))
    monkeypatch.setenv("RUNPOD_API_KEY", "test-key")

    code, out = run_ck(capsys, "init", "--scheduler", "runpod", "--yes", "--path", str(profile))
    assert code == 2 and not profile.exists(), out
    assert "`runpod.store` is needed" in out and "--set runpod.store.bucket=" in out

    store = {"bucket": BUCKET, "prefix": "ck", "endpoint_url": fake_store.url, "region": "us-east-1",
             "addressing_style": "path"}
    sets = [a for k, v in store.items() for a in ("--set", f"runpod.store.{k}={v}")]
    code, out = run_ck(capsys, "init", "--scheduler", "runpod", "--yes", "--path", str(profile), *sets)
    assert code == 0, out
    code, out = run_ck(capsys, "validate", str(example))
    assert code == 0 and "valid. 2 run(s), 8 stage(s)" in out, out


def test_plan_shows_cost_and_run_refuses_over_budget(fake_runpod, fake_store, tmp_path, capsys):
    spec = write_toy_spec(tmp_path, scheduler="max_spend_per_run: 0.5\n")
    write_profile(tmp_path, fake_store)
    code, out = run_ck(capsys, "plan", str(spec))
    plan = (tmp_path / "runs" / "rp" / "plan.md").read_text()
    # 3 stages x 10 minutes on one A100 at $1.64/h (price from the API)
    assert code == 0 and "| $0.82 at $1.64/GPU-h (RunPod API); OVER max_spend_per_run $0.50 |" in plan, out
    assert "| 1x NVIDIA A100 80GB PCIe (SECURE), one per run | 30m00s |" in plan
    code, out = run_ck(capsys, "run", str(spec))
    assert code == 2 and "could cost up to $0.82" in out and "max_spend_per_run = $0.50" in out
    assert not fake_runpod.calls("podFindAndDeployOnDemand") and fake_store.keys(BUCKET) == []

    # without the API's price, the profile's table is used
    write_profile(tmp_path, fake_store, prices_from_api=False, prices={"NVIDIA A100 80GB PCIe": 2.0})
    code, out = run_ck(capsys, "plan", str(spec))
    assert "$1.00 at $2.00/GPU-h (profile)" in (tmp_path / "runs" / "rp" / "plan.md").read_text()


def test_dry_run_writes_the_pod_request_without_secrets(fake_runpod, fake_store, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_dry_run_secret_98765")
    spec = write_toy_spec(tmp_path)
    write_profile(tmp_path, fake_store, secret_refs={"WANDB_API_KEY": "wandb_key"})
    code, out = run_ck(capsys, "run", "--dry-run", str(spec))
    assert code == 0 and "runpod (dry run)" in out
    (run,) = run_dirs(tmp_path)
    text = (run / "logs" / "runpod-dry-run.json").read_text()
    assert "hf_dry_run_secret_98765" not in text
    req = json.loads(text)
    assert req["env"]["HF_TOKEN"] == "<value of $HF_TOKEN at submit>"
    assert req["env"]["WANDB_API_KEY"] == "{{ RUNPOD_SECRET_wandb_key }}"
    assert req["gpu_type"] == "NVIDIA A100 80GB PCIe" and req["max_cost"] == 0.82
    assert req["inputs"] == [str(tmp_path / "models" / "base")]
    assert not fake_runpod.calls("podFindAndDeployOnDemand")


def test_pod_time_limit_stops_the_stage_and_ends_the_pod(fake_runpod, fake_store, tmp_path, capsys):
    spec = write_toy_spec(tmp_path, scheduler='wait: true\ntime_limit: "00:00:20"\n',
                          train="steps_per_epoch: 600\nstep_seconds: 0.1\n")
    write_profile(tmp_path, fake_store)
    code, out = run_ck(capsys, "run", str(spec))
    assert code == 1 and "INTERRUPTED" in out
    st = stages(run_dirs(tmp_path)[0])
    assert st["train"]["state"] == "interrupted" and st["train"]["exit_code"] == 130
    # the trainer's resumable state came back, so the next pod resumes instead of starting over
    assert json.loads((run_dirs(tmp_path)[0] / "train" / "state" / "state.json").read_text())["step"] > 0
    for s in ("eval.toy.base", "eval.toy.epoch_0"):
        assert st[s]["state"] == "pending" and "time limit" in st[s]["error"]
    assert fake_runpod.running() == []


def test_one_pod_per_stage_waits_for_training(fake_runpod, fake_store, tmp_path, capsys):
    spec = write_toy_spec(tmp_path, scheduler="wait: true\npod_per: stage\n")
    write_profile(tmp_path, fake_store)
    code, out = run_ck(capsys, "run", str(spec))
    assert code == 0, out
    assert "eval.toy.epoch_0 waits for train" in out
    deploys = [c["args"]["input"]["name"] for c in fake_runpod.calls("podFindAndDeployOnDemand")]
    assert len(deploys) == 3 and fake_runpod.running() == []
    run = run_dirs(tmp_path)[0]
    st = stages(run)
    assert {e["state"] for e in st.values()} == {"done"}
    assert len({e["pod_id"] for e in st.values()}) == 3
    pods = {p["id"]: p for p in json.loads((run / "runpod.json").read_text())["pods"]}
    assert pods[st["eval.toy.epoch_0"]["pod_id"]]["created"] > pods[st["train"]["pod_id"]]["created"]
    results = json.loads((run / "eval/results.json").read_text())
    assert set(results["toy"]) == {"base", "epoch_0"}  # merged from two pods


@pytest.mark.parametrize(("scheduler", "exposed"), [("wait: true\n", False),
                                                    ("wait: true\npublic_access: true\n", True)])
def test_pods_have_no_public_ip_or_ssh_unless_asked(fake_runpod, fake_store, tmp_path, capsys, scheduler, exposed):
    """Batch stages need neither a public IP nor SSH: the pod request asks for them only with public_access."""
    spec = write_toy_spec(tmp_path, scheduler=scheduler)
    write_profile(tmp_path, fake_store)
    code, out = run_ck(capsys, "run", str(spec))
    assert code == 0, out
    deploys = fake_runpod.calls("podFindAndDeployOnDemand")
    assert len(deploys) == 1
    inp = deploys[0]["args"]["input"]
    # the RunPod API starts SSH when startSsh is true and gives a public IP when supportPublicIp is true
    assert bool(inp.get("supportPublicIp")) is exposed
    assert bool(inp.get("startSsh")) is exposed
    assert fake_runpod.running() == []
