"""`ck embed` and `ck score-options` on a run folder with a real tiny adapter."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from inference_fixtures import make_run_folder


@pytest.fixture(scope="module")
def run_dir(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run_folder(tiny_llama, tmp_path_factory.mktemp("inference-cli"))


def _ck(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cruijff_kit", *args], cwd=cwd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def reference(tiny_llama: Path, run_dir: Path):
    """The run's model loaded with transformers and peft alone (the values the commands must give)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, torch_dtype="float32")
    return tok, PeftModel.from_pretrained(model, run_dir / "train" / "epoch_0" / "adapter").eval()


def _forward(reference, text: str) -> Any:
    """One unpadded forward pass over ``text`` (no special tokens added), with the hidden states."""
    import torch

    tok, model = reference
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        return model(input_ids=ids, output_hidden_states=True)


def test_embed_writes_parquet_with_ids(run_dir: Path, tmp_path: Path, reference) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    rows = [{"id": f"s{i}", "input": w} for i, w in enumerate(["dog", "a house on a hill", "kite"])]
    (tmp_path / "texts.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    res = _ck("embed", str(run_dir), "texts.jsonl", "emb.parquet", "--layer", "0", "--layer", "-1",
              "--pooling", "last", "--device", "cpu", "--batch-size", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    table = pq.read_table(tmp_path / "emb.parquet")
    assert table.column_names == ["id", "layer_0", "layer_-1"]
    assert table.column("id").to_pylist() == ["s0", "s1", "s2"]
    assert len(table.column("layer_-1")[0].as_py()) == 64  # the tiny model's hidden size
    assert table.schema.metadata[b"pooling"] == b"last"
    # batched (left padding) as each text alone: the last token's input embedding and last hidden state
    for i, word in enumerate(["dog", "a house on a hill", "kite"]):
        states = _forward(reference, word).hidden_states
        for layer in (0, -1):
            want = states[layer][0, -1].float().numpy()
            assert np.allclose(table.column(f"layer_{layer}")[i].as_py(), want, atol=1e-4), (word, layer)


def test_score_options_writes_probabilities(run_dir: Path, tmp_path: Path, reference) -> None:
    (tmp_path / "prompts.txt").write_text("dog\na red house\n")
    res = _ck("score-options", str(run_dir), "prompts.txt", "--option", "the", "--option", "dog",
              "--out", "scores.jsonl", "--device", "cpu", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(x) for x in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1]
    tok, _ = reference
    # every vocabulary token that reads as the option once stripped ("dog", " dog") counts for it
    variants = {o: [i for piece, i in tok.get_vocab().items() if tok.convert_tokens_to_string([piece]).strip() == o]
                for o in ("the", "dog")}
    for r, word in zip(rows, ["dog", "a red house"], strict=True):
        chat = tok.apply_chat_template([{"role": "user", "content": word}], tokenize=False, add_generation_prompt=True)
        p = _forward(reference, chat).logits[0, -1].float().softmax(-1)
        mass = {o: float(p[ids].sum()) for o, ids in variants.items()}
        assert math.isclose(r["mass"], sum(mass.values()), rel_tol=1e-4)
        for o in mass:
            assert math.isclose(r["probabilities"][o], mass[o] / sum(mass.values()), rel_tol=1e-4), (word, o)
        assert r["predicted"] == max(mass, key=mass.get)


def test_bad_input_is_explained(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text(json.dumps({"text": "dog"}))
    res = _ck("score-options", str(run_dir), "rows.jsonl", "--option", "a", cwd=tmp_path)
    assert res.returncode == 2 and "no text field 'input'" in res.stderr and "Traceback" not in res.stderr
    res = _ck("embed", str(run_dir), "rows.jsonl", "e.parquet", "--epoch", "4", "--field", "text", cwd=tmp_path)
    assert res.returncode == 2 and "epoch 4" in res.stderr
