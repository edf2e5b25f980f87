"""The trl train stage as `python -m cruijff_kit stage` runs it: resume after SIGKILL, and 2 ranks over gloo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trl_fixtures import prepare_run, read_rows, write_capitalize_data, write_trl_spec

from cruijff_kit import status, training

pytestmark = pytest.mark.integration


def stage_cmd(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "cruijff_kit", "stage", str(run_dir), "train"]


def complete_checkpoint(state_dir: Path) -> Path | None:
    for d in state_dir.glob("checkpoint-*"):
        if (d / "trainer_state.json").exists():
            return d
    return None


def test_resume_after_sigkill(tiny_llama: Path, tmp_path: Path) -> None:
    data = {"plugin": "json-instruct", "path": str(write_capitalize_data(tmp_path, n_train=24))}
    train = {"epochs": 2, "batch_size": 2, "logging_steps": 1, "save_state_steps": 3, "validation": False}
    run_dir = prepare_run(write_trl_spec(tmp_path, tiny_llama, train=train, data=data))
    total = 2 * 24 // 2
    state = run_dir / "train" / "state"

    log1 = (tmp_path / "first.err").open("w")
    proc = subprocess.Popen(stage_cmd(run_dir), stdout=subprocess.DEVNULL, stderr=log1)
    try:
        deadline = time.monotonic() + 300
        while complete_checkpoint(state) is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        log1.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "first.err").read_text()[-3000:]
    killed_at = json.loads((complete_checkpoint(state) / "trainer_state.json").read_text())["global_step"]
    assert 0 < killed_at < total
    assert status.stage_state(run_dir, "train") != status.DONE

    second = subprocess.run(stage_cmd(run_dir), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from checkpoint-{killed_at} (step {killed_at})" in second.stderr
    assert status.stage_state(run_dir, "train") == status.DONE
    steps = [r["step"] for r in read_rows(run_dir) if r["train_loss"] is not None]
    assert steps == sorted(set(steps)), steps  # no step logged twice
    assert steps[-1] == total  # the global step continued to the end
    # Rows up to the checkpoint come from the first attempt; the resumed run started after it.
    resumed_steps = [int(line.split("step=")[1].split()[0]) for line in second.stderr.splitlines()
                     if line.startswith("[trl] step=") and "train_loss" in line]
    assert resumed_steps and resumed_steps[0] > killed_at
    assert set(range(1, killed_at + 1)) <= set(steps)
    for epoch in (0, 1):
        assert (run_dir / "train" / f"epoch_{epoch}" / "adapter" / "adapter_model.safetensors").exists()
    assert not state.exists()


def test_two_ranks_over_gloo(tiny_llama: Path, tmp_path: Path) -> None:
    """`resources.processes: 2` on CPU: the stage relaunches itself and trains with DDP over gloo."""
    data = {"plugin": "json-instruct", "path": str(write_capitalize_data(tmp_path, n_train=16))}
    train = {"epochs": 1, "batch_size": 2, "logging_steps": 1, "validation": False}
    run_dir = prepare_run(write_trl_spec(tmp_path, tiny_llama, train=train, data=data,
                                         resources={"processes": 2}))
    res = subprocess.run(stage_cmd(run_dir), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "accelerate.commands.launch --multi_gpu --num_processes 2" in res.stderr
    for rank in (0, 1):
        assert f"[trl] rank {rank}/2 backend=gloo wrapper=DistributedDataParallel" in res.stderr, res.stderr[-4000:]
    adapter = run_dir / "train" / "epoch_0" / "adapter"
    assert training.adapter_info(adapter)["world_size"] == 2
    steps = [r["step"] for r in read_rows(run_dir) if r["train_loss"] is not None]
    assert steps == [1, 2, 3, 4]  # 16 rows / (2 per rank x 2 ranks): each rank saw half the data
    assert status.stage_state(run_dir, "train") == status.DONE
    assert status.read(run_dir)["stages"]["train"]["attempts"] == 1  # only the launcher did bookkeeping
