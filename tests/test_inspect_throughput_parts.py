"""The ``ck/`` provider's batching: concurrent samples are generated in full batches (two batches of
samples in flight), with exactly the answers of plain batched ``generate`` over the same batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("inspect_ai")

PROMPTS = [f"word {i}" for i in range(10)]


def _plain(model_dir: Path, batches: list[list[str]], max_tokens: int) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token, tok.padding_side = tok.eos_token, "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out: list[str] = []
    with torch.inference_mode():
        for batch in batches:
            chats = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                             add_generation_prompt=True) for p in batch]
            enc = tok(chats, return_tensors="pt", padding=True)
            ids = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False)
            out += tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True,
                                    clean_up_tokenization_spaces=False)
    return out


def test_samples_are_generated_in_full_batches(tmp_path: Path, tiny_llama: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from cruijff_kit_inspect.config import InspectConfig
    from cruijff_kit_inspect.evaluator import generate_args
    from cruijff_kit_inspect.modelcache import BASES
    from cruijff_kit_inspect.provider import CkModelAPI
    from inspect_ai import Task
    from inspect_ai import eval as inspect_eval
    from inspect_ai.dataset import Sample
    from inspect_ai.scorer import match
    from inspect_ai.solver import generate

    batches: list[list[str]] = []
    original = CkModelAPI._run_batch

    def recording(self: Any, prompts: Any, **kw: Any) -> Any:
        batches.append([p for p in prompts])
        return original(self, prompts, **kw)

    monkeypatch.setattr(CkModelAPI, "_run_batch", recording)
    cfg = InspectConfig(task="exact-match", batch_size=4, generation={"max_tokens": 4})
    task = Task(dataset=[Sample(input=p, target="x", id=i) for i, p in enumerate(PROMPTS)], solver=[generate()],
                scorer=match())
    BASES.clear()
    log = inspect_eval(task, model=f"ck/{tiny_llama}", display="none", log_dir=str(tmp_path),
                       model_args={"device": "cpu", "dtype": "float32", "batch_size": 4},
                       **generate_args(cfg, seed=1, local=True))[0]
    assert log.status == "success"
    # 10 samples, batches of 4: two full batches and the rest, each sample once
    assert [len(b) for b in batches] == [4, 4, 2], [len(b) for b in batches]
    by_prompt = {s.input: s.output.completion for s in log.samples}
    texts = [[next(p for p in PROMPTS if p in chat) for chat in b] for b in batches]  # no prompt is in another
    assert sorted(sum(texts, [])) == sorted(PROMPTS)
    expected = _plain(tiny_llama, texts, 4)
    assert [by_prompt[p] for p in sum(texts, [])] == expected
    BASES.clear()
