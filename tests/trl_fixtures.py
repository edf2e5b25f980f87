"""Helpers for the trl trainer tests: the word-capitalization task, specs, and planning in-process."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import yaml

#: Words the tiny models' tokenizer was trained on (lower, upper and capitalized).
WORDS = ["the", "be", "to", "of", "and", "a", "in", "that", "have", "it", "for", "not", "on", "with", "he", "as", "you", "do", "at", "this", "but", "his", "by", "from", "they", "we", "say", "her", "she", "or", "an", "will", "my", "one", "all", "would", "there", "their", "what", "so", "up", "out", "if", "about", "who", "get", "which", "go", "me", "when", "make", "can", "like", "time", "no", "just", "him", "know", "take", "people", "into", "year", "your", "good", "some", "could", "them", "see", "other", "than", "then", "now", "look", "only", "come", "its", "over", "think", "also", "back", "after", "use", "two", "how", "our", "work", "first", "well", "way", "even", "new", "want"]


def capitalize_rows(words: list[str]) -> list[dict[str, str]]:
    """Instruct rows of the learnable toy task: input ``apple`` -> output ``APPLE``."""
    return [{"input": w, "output": w.upper()} for w in words]


def write_capitalize_data(folder: Path, n_train: int = 32, n_val: int = 8, n_test: int = 8,
                          n_words: int = 16) -> Path:
    """A json-instruct file with train/validation/test lists drawn from the first ``n_words`` words.

    The splits share their words, so a model that learns the training rows also lowers validation loss.
    """
    pool = WORDS[:n_words]
    data = {"train": capitalize_rows([pool[i % n_words] for i in range(n_train)]),
            "validation": capitalize_rows([pool[(3 * i) % n_words] for i in range(n_val)]),
            "test": capitalize_rows([pool[(5 * i + 1) % n_words] for i in range(n_test)])}
    path = folder / "capitalize.json"
    path.write_text(json.dumps(data))
    return path


def write_trl_spec(folder: Path, model: Path | str, *, train: dict[str, Any] | None = None,
                   resources: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
                   experiment: str = "trl-test") -> Path:
    """A spec with a json-instruct capitalization dataset and a ``plugin: trl`` train section."""
    folder.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = {"plugin": "json-instruct", "path": str(write_capitalize_data(folder))}
    spec = {
        "experiment": experiment,
        "output_dir": str(folder / "out"),
        "seed": 7,
        "model": {"path": str(model)},
        "prompt": {"template": "Capitalize: {input}"},
        "dataset": data,
        "train": {"plugin": "trl", **(train or {})},
        "scheduler": {"plugin": "local", "resources": resources or {}},
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def plan_spec(path: Path, *, estimate: bool = False) -> Any:
    """``make_plan`` on a spec file, in this process."""
    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.spec import load_spec

    return make_plan(load_spec(path), estimate=estimate)


def prepare_run(path: Path) -> Path:
    """Plan the spec and write its run folder (as ``ck run --dry-run`` does); return the run folder."""
    from cruijff_kit._engine.runner import write_experiment

    plan = plan_spec(path)
    write_experiment(plan)
    assert len(plan.runs) == 1
    return plan.runs[0].layout.root


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The run's ``train/metrics.jsonl`` rows."""
    path = run_dir / "train" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip()


def learnable_tiny_model(base: Path, out: Path, head_scale: float = 10.0) -> Path:
    """A copy of a tiny random model whose output head is ``head_scale`` times larger.

    With the builder's initialisation (std 0.02) the logits of a 64-wide model cannot leave the
    uniform distribution by much, so a frozen head caps what LoRA can learn near log(vocab). A
    larger head makes sharp predictions reachable, so the toy task's loss falls far.
    """
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    if (out / ".done").exists():
        return out
    shutil.copytree(base, out, dirs_exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    model.save_pretrained(out)
    (out / ".done").write_text("ok")
    return out
