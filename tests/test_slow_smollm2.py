"""Slow tier: the real SmolLM2-135M-Instruct (from a PyPI wheel) fine-tuned and evaluated through `ck`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import write_spec

from cruijff_kit._base.fileio import read_jsonl

SYSTEM = "Rewrite the word in capital letters. Answer with the word only."

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
        prompt: {{system: "{SYSTEM}"}}
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
    base_acc, tuned_acc = (results[t]["match/accuracy"]["value"] for t in ("base", "epoch_0"))
    # the claim that cannot pass by accident: on the rows it was trained on, the adapter makes the
    # answers more likely than the base model does (mean log-likelihood of the answer tokens, measured
    # with transformers and peft alone)
    train_rows = json.loads((tmp_path / "cap.json").read_text())["train"]
    base_ll, tuned_ll = _answer_loglik(model, run / "train/epoch_0/adapter", train_rows, SYSTEM)
    # (measured on CPU: -2.48 base, -0.80 tuned per token; the bound leaves a wide margin)
    assert tuned_ll > base_ll + 0.5, (base_ll, tuned_ll, base_acc, tuned_acc)
    # and the eval sees it: strictly more exact answers than the base model (measured: 0/8 base, 5/8 tuned)
    assert tuned_acc > base_acc, (base_acc, tuned_acc)


def _answer_loglik(model_dir: Path, adapter: Path, rows: list[dict], system: str) -> tuple[float, float]:
    """Mean log-probability per answer token of ``rows`` (system + user turn, then the answer), without
    and with ``adapter``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    net = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()

    def mean_ll(m: Any) -> float:
        total, n = 0.0, 0
        for r in rows:
            chat = tok.apply_chat_template([{"role": "system", "content": system},
                                            {"role": "user", "content": r["input"]}],
                                           tokenize=False, add_generation_prompt=True)
            p_ids = tok(chat, add_special_tokens=False)["input_ids"]
            a_ids = tok(r["output"], add_special_tokens=False)["input_ids"]
            with torch.inference_mode():
                logp = torch.log_softmax(m(input_ids=torch.tensor([p_ids + a_ids])).logits[0].float(), -1)
            total += sum(float(logp[len(p_ids) + j - 1, t]) for j, t in enumerate(a_ids))
            n += len(a_ids)
        return total / n

    base = mean_ll(net)
    return base, mean_ll(PeftModel.from_pretrained(net, adapter).eval())
