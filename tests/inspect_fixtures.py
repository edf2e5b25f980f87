"""Helpers of the inspect evaluator's tests: a tiny capitalisation dataset and a real LoRA adapter
trained for a few optimizer steps with peft, saved in the run folder layout."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = ["apple", "banana", "cherry", "dog", "elephant", "forest", "guitar", "house"]
DATA = {
    "train": [{"input": w, "output": w.upper()} for w in WORDS],
    "validation": [{"input": "kite", "output": "KITE"}],
    "test": [{"input": w, "output": w.upper()} for w in ("apple", "dog", "kite", "moon")],
}


def write_dataset(folder: Path) -> Path:
    """``data.json`` (json-instruct: train/validation/test lists of input/output) in ``folder``."""
    path = folder / "data.json"
    path.write_text(json.dumps(DATA, indent=1))
    return path


def train_adapter(model_dir: Path, adapter_dir: Path, *, steps: int = 25, lr: float = 3e-2, seed: int = 0) -> Path:
    """Train a LoRA adapter on the train split for ``steps`` full-batch AdamW steps; save it (PEFT
    format) to ``adapter_dir`` and the tokenizer next to it, as a trainer does for ``epoch_<N>/``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    texts = [tok.apply_chat_template([{"role": "user", "content": r["input"]},
                                      {"role": "assistant", "content": r["output"]}], tokenize=False)
             for r in DATA["train"]]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    adapter_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(adapter_dir)
    tok.save_pretrained(adapter_dir.parent)
    return adapter_dir
