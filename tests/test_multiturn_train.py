"""Simulate, train on the best turns with trl, then simulate again with the trained adapter.

`ck simulate` and `ck run --dry-run` run as the real CLI; the train stages run in this process
through the same entry point `ck stage` uses (one trl import for all of them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fake_openai import FakeOpenAI
from simulate_fixtures import KEY, KEY_VAR, read_conversations, write_sim_spec

pytestmark = pytest.mark.integration


def ck(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, KEY_VAR: KEY, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "cruijff_kit", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_simulate_train_sft_and_dpo_then_simulate_with_the_adapter(
        tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cruijff_kit._engine.spec import load_spec
    from cruijff_kit._engine.stage import run_stage
    from cruijff_kit._simulate.command import simulate

    monkeypatch.setenv(KEY_VAR, KEY)
    train = {"plugin": "trl", "epochs": 1, "max_steps": 2, "batch_size": 2, "max_seq_length": 512,
             "lora": {"rank": 4}}
    dataset = {"plugin": "multiturn", "path": "sim/conversations.jsonl", "threshold": 0.0,
               "splits": {"train": 0.75, "validation": 0.25}}
    with FakeOpenAI(api_key=KEY) as server:
        spec = write_sim_spec(
            tmp_path, server.url, stops=[1, 2, 9, 2, 1, 2, 1, 9], scoring=True, model=str(tiny_llama),
            simulate={"max_turns": 2, "scoring": {"candidates": 2, "horizon": 1}},
            top={"dataset": dataset, "train": train,
                 "variants": [{"train.objective": "sft"},
                              {"train.objective": "dpo", "dataset.pairs": True, "train.dpo.beta": 0.2}]})
        sim = ck("simulate", str(spec), "--no-progress", cwd=tmp_path)
        assert sim.returncode == 0, sim.stderr
        assert len(read_conversations(tmp_path / "sim" / "conversations.jsonl")) == 8

        res = ck("run", str(spec), "--dry-run", cwd=tmp_path)
        assert res.returncode == 0, res.stdout + res.stderr
        runs = {}
        for run_dir in (tmp_path / "runs" / "sim-test" / "runs").iterdir():
            resolved = yaml.safe_load((run_dir / "spec.yaml").read_text())
            runs[resolved["train"]["objective"]] = run_dir
            assert resolved["simulate"]["output"] == str(tmp_path / "sim" / "conversations.jsonl")
            assert KEY not in (run_dir / "spec.yaml").read_text()
        assert sorted(runs) == ["dpo", "sft"]
        for objective, run_dir in runs.items():
            run_stage(run_dir, "train")
            assert (run_dir / "train" / "epoch_0" / "adapter" / "adapter_config.json").is_file()
            rows = [json.loads(line) for line in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
            assert any(r.get("train_loss") is not None for r in rows), objective
            assert any(r.get("val_loss") is not None for r in rows), objective
        run_dir = runs["sft"]

        # the trained adapter, from its run folder, as the local assistant: batched across conversations
        local = {"plugin": "local", "adapter": str(run_dir), "load_in_4bit": True, "max_tokens": 8, "batch_size": 4,
                 "batch_wait": 0.05, "temperature": 0.0}
        again = write_sim_spec(tmp_path / "again", server.url, stops=[1, 2, 1, 2, 1, 2], model=str(tiny_llama),
                               simulate={"assistant": local, "concurrency": 6})
        summary = simulate(load_spec(again), progress=False)
    assert (summary.finished, summary.failed) == (6, 0)
    assert summary.calls["assistant"]["largest_batch"] > 1 and summary.calls["assistant"]["4bit"] is True
    out = read_conversations(tmp_path / "again" / "sim" / "conversations.jsonl")
    assert {r["num_turns"] for r in out} == {1, 2}
    assert all(r["participants"]["assistant"].endswith("epoch_0/adapter") for r in out)
