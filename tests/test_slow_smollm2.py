"""Slow tier: the real SmolLM2-135M-Instruct (from a PyPI wheel) fine-tuned and evaluated through `ck`."""

from __future__ import annotations

import json
import os

import pytest
from conftest import write_spec

from cruijff_kit._base.fileio import read_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.integration,
              pytest.mark.skipif(os.environ.get("CK_SLOW") != "1", reason="slow tier: set CK_SLOW=1")]


def test_smollm2_lora_beats_nothing_and_evaluates(tmp_path, ck):
    from cruijff_kit._datatools.capitalize import write_capitalize
    from cruijff_kit._models import ensure_smollm2

    model = ensure_smollm2(progress=False)
    write_capitalize(tmp_path / "cap.json", n_train=32, n_validation=8, n_test=8)
    spec = write_spec(tmp_path, f"""
        experiment: smollm2
        model: {{path: {model}}}
        dataset: {{plugin: json-instruct, path: cap.json}}
        prompt: {{system: "Rewrite the word in capital letters. Answer with the word only."}}
        train: {{plugin: trl, epochs: 1, batch_size: 4, learning_rate: 2.0e-3, max_seq_length: 64, logging_steps: 1,
                 lora: {{rank: 8, dropout: 0.0}}}}
        eval:
          - {{plugin: inspect, task: exact-match, checkpoints: last, generation: {{max_tokens: 8}}, batch_size: 8}}
    """)
    res = ck("run", str(spec), timeout=1500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (run,) = (tmp_path / "runs/smollm2/runs").iterdir()
    rows = [r for r in read_jsonl(run / "train/metrics.jsonl") if r.get("train_loss") is not None]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    results = json.loads((run / "eval/results.json").read_text())["exact-match"]
    assert results["base"]["samples"] == results["epoch_0"]["samples"] == 8
    assert results["epoch_0"]["match/accuracy"]["value"] >= results["base"]["match/accuracy"]["value"]
