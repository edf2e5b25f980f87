"""Helpers of the inspect evaluator's tests: a tiny capitalisation dataset, a real LoRA adapter
trained for a few optimizer steps with peft, saved in the run folder layout, and real inspect evals
with inspect's ``mockllm`` model answering each prompt with a prepared output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Per generated token: (the token, its top log-probabilities as (token, logprob) pairs).
Tokens = list[tuple[str, list[tuple[str, float]]]]

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


def mock_output(text: str | None = None, tokens: Tokens | None = None) -> Any:
    """An inspect ``ModelOutput`` as ``mockllm`` returns it, with usage set (so nothing is looked up online).

    ``text``: the completion (default: the tokens' text). ``tokens``: the generated tokens, each with its
    top log-probabilities as (token, logprob) pairs, so that NaN and positive log-probabilities can be
    written; a token's own log-probability is its entry in that list (-50 when it has none).
    """
    from inspect_ai.model import (
        ChatCompletionChoice,
        ChatMessageAssistant,
        Logprob,
        Logprobs,
        ModelOutput,
        ModelUsage,
        TopLogprob,
    )

    logprobs = None
    if tokens is not None:
        content = []
        for token, top in tokens:
            tops = [TopLogprob(token=t, logprob=lp) for t, lp in top]
            own = next((lp for t, lp in top if t == token), -50.0)
            content.append(Logprob(token=token, logprob=own, top_logprobs=tops))
        logprobs = Logprobs(content=content)
        text = "".join(t for t, _ in tokens) if text is None else text
    return ModelOutput(model="mockllm/model",
                       choices=[ChatCompletionChoice(message=ChatMessageAssistant(content=text or "",
                                                                                  model="mockllm/model"),
                                                     stop_reason="stop", logprobs=logprobs)],
                       usage=ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2))


def mock_eval(rows: list[tuple[str, str, Any]], scorers: list[Any], log_dir: Path, *,
              seen: list[Any] | None = None, read_back: bool = False, **kwargs: Any) -> Any:
    """Evaluate (prompt, target, output) rows with mockllm answering each prompt with its output; returns
    the eval log (as read back from the ``.eval`` file on disk with ``read_back``). ``seen`` collects the
    generate config of each call; ``kwargs`` go to ``inspect_ai.eval`` (e.g. ``logprobs=True``)."""
    from inspect_ai import Task
    from inspect_ai import eval as inspect_eval
    from inspect_ai.dataset import Sample
    from inspect_ai.log import read_eval_log
    from inspect_ai.model import get_model
    from inspect_ai.solver import generate

    answers = {prompt: out for prompt, _, out in rows}

    def reply(input: list[Any], tools: Any, tool_choice: Any, config: Any) -> Any:
        if seen is not None:
            seen.append(config)
        return answers[input[-1].text]

    model = get_model("mockllm/model", custom_outputs=reply)
    task = Task(dataset=[Sample(input=p, target=t, id=i + 1) for i, (p, t, _) in enumerate(rows)],
                solver=[generate()], scorer=scorers)
    log = inspect_eval(task, model=model, log_dir=str(log_dir), display="none", **kwargs)[0]
    assert log.status == "success", log.error
    return read_eval_log(log.location) if read_back else log


def scorer_metrics(log: Any, scorer: str) -> dict[str, float]:
    """The metrics of one scorer of an eval log, by name."""
    return {k: m.value for k, m in next(s for s in log.results.scores if s.name == scorer).metrics.items()}
