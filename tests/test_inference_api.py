"""The research API on a tiny model and a tiny adapter trained for real."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from inference_fixtures import make_run_folder

from cruijff_kit._base.errors import SpecError

OPTIONS = ["the", "and", "dog"]
PROMPTS = ["apple", "dog", "house", "kite", "moon"]


@pytest.fixture(scope="module")
def run_dir(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder as a trainer leaves it: spec.yaml with model.local_path, train/epoch_0/adapter."""
    return make_run_folder(tiny_llama, tmp_path_factory.mktemp("inference"))


@pytest.fixture(scope="module")
def tuned(run_dir: Path):
    from cruijff_kit.inference import load

    return load(run_dir, device="cpu", batch_size=2, progress=False)


@pytest.fixture(scope="module")
def base(tiny_llama: Path):
    from cruijff_kit.inference import load

    return load(tiny_llama, device="cpu", batch_size=2, progress=False)


def test_run_folder_resolves_to_last_epoch_adapter(tuned, run_dir: Path, tiny_llama: Path) -> None:
    assert tuned.adapter == str((run_dir / "train" / "epoch_0" / "adapter").resolve())
    assert Path(tuned.base) == tiny_llama
    from cruijff_kit.inference import resolve_target

    with pytest.raises(SpecError, match="epoch 3"):
        resolve_target(run_dir, epoch=3)
    # an adapter folder names its base itself
    assert resolve_target(run_dir / "train" / "epoch_0")[1] == (run_dir / "train" / "epoch_0" / "adapter").resolve()


def test_option_probabilities_sum_to_one_and_adapter_changes_them(tuned, base) -> None:
    probs = tuned.option_probabilities(PROMPTS, OPTIONS)
    mass = tuned.option_mass(PROMPTS, OPTIONS)
    assert len(probs) == len(mass) == len(PROMPTS)
    for row, m in zip(probs, mass, strict=True):
        assert set(row) == set(m) == set(OPTIONS)
        assert math.isclose(sum(row.values()), 1.0, rel_tol=1e-6)
        for o in OPTIONS:  # each option's share of the options' mass
            assert math.isclose(row[o], m[o] / sum(m.values()), rel_tol=1e-6)
    base_probs = base.option_probabilities(PROMPTS, OPTIONS)
    diff = max(abs(a[o] - b[o]) for a, b in zip(probs, base_probs, strict=True) for o in OPTIONS)
    assert diff > 1e-3


def test_option_variants_are_summed(tuned) -> None:
    """"dog" collects the mass of every vocabulary token that reads "dog" once stripped ("dog", " dog")."""
    ids = tuned.option_token_ids("dog")
    texts = {tuned.tokenizer.convert_tokens_to_string([tuned.tokenizer.convert_ids_to_tokens(i)]) for i in ids}
    assert {t.strip() for t in texts} == {"dog"}
    import torch

    enc = tuned._encode([tuned.render("dog")])
    with torch.inference_mode():
        p = torch.softmax(tuned.model(**enc).logits[0, -1].float(), -1)
    assert math.isclose(tuned.option_mass(["dog"], ["dog"])[0]["dog"], float(p[ids].sum()), rel_tol=1e-5)
    with pytest.raises(SpecError, match="not single tokens"):
        tuned.option_mass(["dog"], ["dog", "zzqqxxj"])


def test_token_logprobs_match_batched_and_single(tuned, run_dir: Path, tiny_llama: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pairs = (["apple", "dog", "kite"], ["APPLE", "DOG", "KITE"])
    batched = tuned.token_logprobs(*pairs)
    tuned.batch_size, keep = 1, tuned.batch_size
    try:
        single = tuned.token_logprobs(*pairs)
    finally:
        tuned.batch_size = keep
    # the same log-probabilities from transformers and peft alone, one unpadded sequence per pair:
    # completion token j is scored by the logits at the position before it
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama, torch_dtype="float32"),
                                    run_dir / "train" / "epoch_0" / "adapter").eval()
    for a, b, prompt, completion in zip(batched, single, *pairs, strict=True):
        chat = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        p_ids = tok(chat, add_special_tokens=False)["input_ids"]
        c_ids = tok(completion, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logp = torch.log_softmax(ref(input_ids=torch.tensor([p_ids + c_ids])).logits[0].float(), -1)
        want = [float(logp[len(p_ids) + j - 1, t]) for j, t in enumerate(c_ids)]
        assert [t for t, _ in a] == [t for t, _ in b] == [tok.decode([t]) for t in c_ids]
        assert "".join(t for t, _ in a) == completion
        for got in (a, b):
            assert len(got) == len(want)
            for (_, x), y in zip(got, want, strict=True):
                assert math.isclose(x, y, abs_tol=1e-4), (completion, got, want)


def test_generate_is_batched_and_deterministic(tuned) -> None:
    first = tuned.generate(PROMPTS, max_new_tokens=4)
    assert len(first) == len(PROMPTS) and all(isinstance(t, str) for t in first)
    assert tuned.generate(PROMPTS, max_new_tokens=4) == first
    sampled = tuned.generate(PROMPTS, max_new_tokens=4, do_sample=True, temperature=1.5)
    assert tuned.generate(PROMPTS, max_new_tokens=4, do_sample=True, temperature=1.5) == sampled


def test_embeddings_shape_determinism_and_parquet(tuned, base, tmp_path: Path) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    hidden = tuned.model.config.hidden_size
    emb = tuned.embed(PROMPTS, layers=[0, -1], pooling="mean")
    assert set(emb) == {0, -1}
    assert all(a.shape == (len(PROMPTS), hidden) for a in emb.values())
    again = tuned.embed(PROMPTS, layers=[0, -1], pooling="mean")
    assert all(np.array_equal(emb[k], again[k]) for k in emb)
    last = tuned.embed(PROMPTS, layers=[-1], pooling="last")[-1]
    assert not np.allclose(last, emb[-1])
    assert not np.allclose(base.embed(PROMPTS, layers=[-1])[-1], emb[-1])
    # one text alone gives the same vector as in a padded batch
    alone = tuned.embed(PROMPTS[:1], layers=[-1])[-1]
    assert np.allclose(alone[0], emb[-1][0], atol=1e-4)
    with pytest.raises(SpecError, match="layer 99"):
        tuned.embed(PROMPTS, layers=[99])

    out = tuned.embed_to_parquet(PROMPTS, tmp_path / "emb.parquet", ids=[f"r{i}" for i in range(5)], layers=[-1])
    table = pq.read_table(out)
    assert table.column_names == ["id", "layer_-1"]
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(5)]
    assert np.allclose(np.array(table.column("layer_-1").to_pylist(), dtype=np.float32), emb[-1])
