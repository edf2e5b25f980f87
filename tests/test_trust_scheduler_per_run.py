"""Each run's own scheduler settings: runs of one spec whose `variants:` differ in scheduler settings
(time limits, memory, constraint, GPUs, slots) get their own values in their job scripts and pods, not
those of the plan's first run.

The expected values are written by hand from the specs below. Last, the one byte-count format that
the schedulers' messages, `ck plan` estimates and `ck models list` share.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from fake_runpod import FakeRunPod
from runpod_fixtures import run_ck, running_fake_store, write_profile

fake_store = pytest.fixture(running_fake_store, name="fake_store")


def _spec(folder: Path, scheduler: str, variants: str, *, train: str = "", name: str = "spec.yaml") -> Path:
    """A finetune spec with the toy plugins (train, eval of the last epoch) and the given variants."""
    model = folder / "models" / "base"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text('{"model_type": "toy"}')
    text = textwrap.dedent("""\
        experiment: per-run
        output_dir: out
        model: {path: models/base}
        dataset: {plugin: toy-data}
        train:
          plugin: toy
          epochs: 1
        %TRAIN%
        eval:
          - {plugin: toy-eval, task: toy, include_base: false}
        scheduler:
        %SCHED%
        variants:
        %VARIANTS%
        """)
    text = text.replace("%TRAIN%\n", textwrap.indent(textwrap.dedent(train), "  ") if train else "")
    text = text.replace("%SCHED%\n", textwrap.indent(textwrap.dedent(scheduler), "  "))
    text = text.replace("%VARIANTS%\n", textwrap.indent(textwrap.dedent(variants), "  "))
    path = folder / name
    path.write_text(text)
    return path


def _runs_by_lr(folder: Path) -> dict[float, Path]:
    """Run folders of the experiment by their train.learning_rate (what tells the variants apart)."""
    out = {}
    for run in sorted((folder / "out" / "per-run" / "runs").iterdir()):
        spec = yaml.safe_load((run / "spec.yaml").read_text())
        out[float(spec["train"]["learning_rate"])] = run
    return out


def _sbatch_options(text: str) -> list[str]:
    return [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("#SBATCH ")]


# --------------------------------------------------------------------------- slurm
def test_slurm_job_scripts_get_each_runs_own_settings(with_toy: Path, tmp_path: Path, capsys) -> None:
    spec = _spec(tmp_path, """\
        plugin: slurm
        resources: {cpus: 1, memory: "500MB", time: "00:10:00"}
        stagger_seconds: 0
        """, """\
        - {train.learning_rate: 0.001, scheduler.resources.time: "2:00:00", scheduler.resources.memory: "8GB",
           scheduler.constraint: a100, scheduler.signal_seconds: 300, scheduler.oom_retries: 1,
           scheduler.eval_resources: {cpus: 2, memory: "1GB", time: "00:20:00"}}
        - {train.learning_rate: 0.002, scheduler.resources.time: "1-00:00:00", scheduler.resources.memory: "1.5G",
           scheduler.constraint: h100, scheduler.signal_seconds: 60, scheduler.oom_retries: 3,
           scheduler.hf_offline: false}
        """)
    (tmp_path / "ck.profile.yaml").write_text(yaml.safe_dump({"slurm": {"partition": "gpu", "account": "lab"}}))
    code, out = run_ck(capsys, "run", "--dry-run", str(spec))
    assert code == 0, out
    runs = _runs_by_lr(tmp_path)
    assert set(runs) == {0.001, 0.002}

    a_train = (runs[0.001] / "slurm" / "train.sbatch").read_text()
    b_train = (runs[0.002] / "slurm" / "train.sbatch").read_text()
    a, b = _sbatch_options(a_train), _sbatch_options(b_train)
    # 2:00:00 = 120 minutes; 8GB = 8192 MiB; 1-00:00:00 = 1440 minutes; 1.5G = 1536 MiB
    for want in ("--time=120", "--mem=8192M", "--constraint=a100", "--signal=B:USR2@300",
                 "--partition=gpu", "--account=lab"):
        assert want in a, (want, a)
    for want in ("--time=1440", "--mem=1536M", "--constraint=h100", "--signal=B:USR2@60",
                 "--partition=gpu", "--account=lab"):
        assert want in b, (want, b)
    assert "CK_OOM_RETRIES=1" in a_train and "CK_OOM_RETRIES=3" in b_train
    assert "export HF_HUB_OFFLINE=1" in a_train and "HF_HUB_OFFLINE" not in b_train

    # eval stages: run A's eval_resources (20 minutes, 1GB, 2 CPUs); run B's train resources on one node
    a_eval = _sbatch_options((runs[0.001] / "slurm" / "eval.toy.epoch_0.sbatch").read_text())
    b_eval = _sbatch_options((runs[0.002] / "slurm" / "eval.toy.epoch_0.sbatch").read_text())
    for want in ("--time=20", "--mem=1024M", "--cpus-per-task=2", "--constraint=a100"):
        assert want in a_eval, (want, a_eval)
    for want in ("--time=1440", "--mem=1536M", "--cpus-per-task=1", "--constraint=h100"):
        assert want in b_eval, (want, b_eval)


# --------------------------------------------------------------------------- runpod
@pytest.fixture(name="fake_runpod")
def fake_runpod_fixture(with_toy: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRunPod]:
    """The RunPod API on 127.0.0.1; its pods are recorded, not run (the test reads how they were made)."""
    from cruijff_kit_runpod import pods
    from cruijff_kit_runpod.api import RunPodApi

    monkeypatch.setenv("RUNPOD_API_KEY", "test-key")
    monkeypatch.setattr(RunPodApi, "backoff", 0.01)
    monkeypatch.setattr(pods, "_PRICE_CACHE", {})
    fake = FakeRunPod(container_root=None).start()
    monkeypatch.setenv("RUNPOD_API_BASE_URL", fake.url)
    yield fake
    fake.stop()


RUNPOD_SCHEDULER = """\
    plugin: runpod
    resources: {gpus: 1, time: "00:10:00"}
    poll_seconds: 0.2
    """
RUNPOD_VARIANTS = """\
    - {train.learning_rate: 0.001, scheduler.time_limit: "2:00:00", scheduler.container_disk_gb: 40}
    - {train.learning_rate: 0.002, scheduler.time_limit: "45:00", scheduler.resources.gpus: 2,
       scheduler.gpu_type: NVIDIA GeForce RTX 4090, scheduler.container_disk_gb: 80}
    """


def test_runpod_pods_get_each_runs_own_settings(fake_runpod: FakeRunPod, fake_store, tmp_path: Path,
                                                capsys) -> None:
    spec = _spec(tmp_path, RUNPOD_SCHEDULER, RUNPOD_VARIANTS)
    write_profile(tmp_path, fake_store)
    code, out = run_ck(capsys, "run", str(spec))
    assert code == 0, out
    runs = _runs_by_lr(tmp_path)
    deploys = {c["args"]["input"]["name"]: c["args"]["input"] for c in fake_runpod.calls("podFindAndDeployOnDemand")}
    assert len(deploys) == 2
    want = {  # "2:00:00" is 7200 s, "45:00" (MM:SS) is 45 minutes = 2700 s
        0.001: {"seconds": 7200, "gpuTypeId": "NVIDIA A100 80GB PCIe", "gpuCount": 1, "containerDiskInGb": 40},
        0.002: {"seconds": 2700, "gpuTypeId": "NVIDIA GeForce RTX 4090", "gpuCount": 2, "containerDiskInGb": 80},
    }
    for lr, run in runs.items():
        (pod,) = json.loads((run / "runpod.json").read_text())["pods"]
        assert round(pod["deadline"] - pod["created"]) == want[lr]["seconds"], (lr, pod)
        inp = deploys[pod["name"]]
        env = {e["key"]: e["value"] for e in inp["env"]}
        assert int(env["CK_DEADLINE"]) == round(pod["created"] + want[lr]["seconds"])
        for key in ("gpuTypeId", "gpuCount", "containerDiskInGb"):
            assert inp[key] == want[lr][key], (lr, key, inp[key])
        entries = json.loads((run / "status.json").read_text())["stages"]
        assert entries["train"]["gpu_count"] == want[lr]["gpuCount"]
    run_ck(capsys, "cancel", str(spec))  # terminate the recorded pods


def test_runpod_dry_run_and_spend_limit_per_run(fake_runpod: FakeRunPod, fake_store, tmp_path: Path,
                                                capsys) -> None:
    spec = _spec(tmp_path, RUNPOD_SCHEDULER, RUNPOD_VARIANTS)
    write_profile(tmp_path, fake_store)
    code, out = run_ck(capsys, "run", "--dry-run", str(spec))
    assert code == 0, out
    runs = _runs_by_lr(tmp_path)
    a = json.loads((runs[0.001] / "logs" / "runpod-dry-run.json").read_text())
    b = json.loads((runs[0.002] / "logs" / "runpod-dry-run.json").read_text())
    assert (a["time_limit"], a["gpu_type"], a["gpu_count"]) == ("2h00m", "NVIDIA A100 80GB PCIe", 1)
    assert (b["time_limit"], b["gpu_type"], b["gpu_count"]) == ("45m00s", "NVIDIA GeForce RTX 4090", 2)
    # A100 at $1.64/GPU-hour x 1 GPU x 2 h = $3.28; RTX 4090 at $0.69 x 2 GPUs x 0.75 h = $1.035
    assert a["max_cost"] == pytest.approx(3.28) and b["max_cost"] == pytest.approx(1.035)

    # the second run's own spend limit ($1.00 < $1.035) refuses it; the first run has none
    spec = _spec(tmp_path, RUNPOD_SCHEDULER, RUNPOD_VARIANTS.replace(
        "scheduler.container_disk_gb: 80}", "scheduler.container_disk_gb: 80, scheduler.max_spend_per_run: 1.0}"))
    code, out = run_ck(capsys, "run", str(spec))
    assert code == 2 and "could cost up to $1.03" in out and "max_spend_per_run = $1.00" in out, out
    assert not fake_runpod.calls("podFindAndDeployOnDemand")


def test_runpod_upload_limit_message_shows_sizes_in_one_format(fake_runpod: FakeRunPod, fake_store, tmp_path: Path,
                                                              capsys) -> None:
    spec = _spec(tmp_path, RUNPOD_SCHEDULER, "- {train.learning_rate: 0.001}\n")
    write_profile(tmp_path, fake_store, max_upload_gb=0.000002)  # 2000 bytes: less than any run folder
    code, out = run_ck(capsys, "run", str(spec))
    # the limit is in decimal gigabytes: 0.000002 x 10^9 = 2000 bytes = 1.95 KiB
    assert code == 2 and "(more than max_upload_gb = 2e-06, i.e. 2.0 KiB)" in " ".join(out.split()), out
    assert not fake_runpod.calls("podFindAndDeployOnDemand")


# --------------------------------------------------------------------------- local
def test_local_slots_are_each_runs_own(with_toy: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """The first run allows one stage at a time, the second two: the second run's training starts while
    the first's is still running (with the first run's setting for both, they would run one after the other)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    spec = _spec(tmp_path, """\
        plugin: local
        poll_seconds: 0.05
        """, """\
        - {train.learning_rate: 0.001, scheduler.slots: 1}
        - {train.learning_rate: 0.002, scheduler.slots: 2}
        """, train="steps_per_epoch: 40\nstep_seconds: 0.1\n")
    code, out = run_ck(capsys, "run", str(spec))
    assert code == 0, out
    runs = _runs_by_lr(tmp_path)
    train = {lr: json.loads((run / "status.json").read_text())["stages"]["train"] for lr, run in runs.items()}
    assert {t["state"] for t in train.values()} == {"done"}
    first, second = train[0.001], train[0.002]
    assert datetime.fromisoformat(second["started"]) < datetime.fromisoformat(first["ended"]), train


def test_a_run_naming_another_scheduler_is_refused(with_toy: Path, tmp_path: Path, capsys) -> None:
    spec = _spec(tmp_path, """\
        plugin: slurm
        resources: {cpus: 1, memory: "500MB", time: "00:10:00"}
        """, """\
        - {train.learning_rate: 0.001}
        - {train.learning_rate: 0.002, scheduler.plugin: local}
        """)
    code, out = run_ck(capsys, "run", "--dry-run", str(spec))
    assert code == 2 and "2 schedulers (slurm, local)" in out and "at `scheduler.plugin`" in out, out
    assert not list((tmp_path / "out" / "per-run" / "runs").glob("*/slurm/train.sbatch"))


# --------------------------------------------------------------------------- byte counts
@pytest.mark.parametrize(("n", "text"), [
    (None, "?"),
    (0, "0 B"),
    (512, "512 B"),
    (1023, "1023 B"),
    (1024, "1.0 KiB"),
    (1536, "1.5 KiB"),               # 1536 / 1024
    (1048575, "1.0 MiB"),            # 1023.999 KiB rounds to 1024.0: shown as 1.0 MiB
    (5 * 2**20 + 2**19, "5.5 MiB"),  # 5.5 x 1048576
    (3 * 2**30, "3.0 GiB"),
    (20e9, "18.6 GiB"),              # 20 GB = 20e9 / 1073741824 = 18.63 GiB
    (2**40, "1.0 TiB"),
    (3 * 2**50, "3.0 PiB"),
    (2**60, "1024.0 PiB"),           # the largest unit keeps counting
])
def test_byte_counts_read_the_same_everywhere(n, text) -> None:
    from cruijff_kit._models.hub import human_size
    from cruijff_kit.files import human_bytes
    from cruijff_kit.training import _estimate

    assert human_bytes(n) == text
    assert _estimate.human_bytes is human_bytes and human_size is human_bytes
