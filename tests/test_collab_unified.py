"""One definition of the multi-turn scoring settings, shared by ``ck simulate`` and the ``collab`` eval task.

- a ``bleu`` and a ``numeric`` metric are accepted by both ``simulate.scoring.metrics`` and the eval's
  ``metrics`` (``ck validate`` on the CollabLLM example spec);
- ``task_type`` on the eval gives CollabLLM's official metrics and weights (written out by hand from
  CollabLLM's ``scripts/engine/build_dataset.py``);
- the eval scores ``document-editing`` as ck simulate does: BLEU of what the extraction model reads out of
  the conversation, and cl100k tokens (hand-computed reward);
- settings that do not fit together are refused with the same words in both places;
- ``token_amount`` is a cost: ``ck summarize`` marks its lowest value as the best.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import write_spec

ROOT = Path(__file__).resolve().parents[1]
USER = {"plugin": "openai", "model": "sim-user"}
JUDGE = {"plugin": "openai", "model": "judge"}


def _eval(**options: Any) -> Any:
    from cruijff_kit_inspect.config import InspectConfig

    return InspectConfig.model_validate({"task": "collab", "user": USER, "judge": JUDGE, **options})


def _scoring(**options: Any) -> Any:
    from cruijff_kit._simulate.config import ScoringConfig

    return ScoringConfig.model_validate({"judge": JUDGE, **options})


def _weights(metrics: dict[str, Any]) -> dict[str, tuple[str, float]]:
    return {name: (m.type, m.weight) for name, m in metrics.items()}


@pytest.fixture
def example(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    return tmp_path / "examples" / "collabllm.yaml"


def test_bleu_and_numeric_metrics_pass_ck_validate_in_simulate_and_in_the_collab_eval(
        example: Path, tiny_llama: Path, ck) -> None:
    spec = yaml.safe_load(example.read_text())
    metrics = {"document": {"type": "bleu", "weight": 1.0}, "number": {"type": "numeric", "weight": 0.5}}
    spec["simulate"]["scoring"]["metrics"] = metrics
    spec["eval"][0]["metrics"] = metrics
    example.write_text(yaml.safe_dump(spec, sort_keys=False))
    res = ck("validate", str(example), "--set", f"model.path={tiny_llama}", cwd=example.parent.parent)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "valid. 2 run(s), 8 stage(s)" in res.stdout
    assert "document x 1, number x 0.5" in out  # simulate's preset note names the metrics as written


def test_a_bleu_metric_without_a_model_is_refused_alike_in_simulate_and_in_the_eval(
        example: Path, tiny_llama: Path, ck) -> None:
    spec = yaml.safe_load(example.read_text())
    metrics = {"document": {"type": "bleu", "weight": 1.0}}
    del spec["simulate"]["scoring"]["judge"]
    spec["simulate"]["scoring"]["metrics"] = metrics
    example.write_text(yaml.safe_dump(spec, sort_keys=False))
    res = ck("validate", str(example), "--set", f"model.path={tiny_llama}", cwd=example.parent.parent)
    assert res.returncode != 0
    err = res.stdout + res.stderr
    assert "collabllm.yaml" in err and "metric `document` (bleu) needs a model (the extraction model)" in err
    assert "scoring.judge" in err

    spec = yaml.safe_load((ROOT / "examples" / "collabllm.yaml").read_text())
    del spec["eval"][0]["judge"]
    spec["eval"][0]["metrics"] = metrics
    example.write_text(yaml.safe_dump(spec, sort_keys=False))
    res = ck("validate", str(example), "--set", f"model.path={tiny_llama}", cwd=example.parent.parent)
    assert res.returncode != 0
    err = res.stdout + res.stderr
    assert "collabllm.yaml" in err and "metric `document` (bleu) needs a model (the extraction model)" in err
    assert "eval[0]" in err and "metrics.document.model" in err


@pytest.mark.parametrize(("task_type", "want"), [
    # CollabLLM's scripts/engine/build_dataset.py: the metrics and weights of each task type
    ("question-answering", {"accuracy": ("grader", 1.0), "interactivity": ("interactivity", 0.5),
                            "token_amount": ("tokens", -0.5)}),
    ("document-editing", {"document->bleu": ("bleu", 1.0), "token_amount": ("tokens", -0.1)}),
    ("code-generation", {"runnable code->pass_rate": ("pass_rate", 1.0), "token_amount": ("tokens", -0.5)}),
])
def test_task_type_on_the_eval_gives_the_official_weights(task_type: str, want: dict[str, Any]) -> None:
    assert _weights(_eval(task_type=task_type).effective_metrics()) == want
    assert _weights(_scoring(task_type=task_type).metrics) == want  # the same as ck simulate's


@pytest.mark.parametrize(("options", "words"), [
    ({"preset": "ck"}, "preset ck needs `metrics`"),
    ({"preset": "ck", "task_type": "document-editing"}, "needs preset collabllm"),
    ({"task_type": "document-editing", "metrics": {"a": {"type": "exact_match"}}}, "either task_type"),
    ({"metrics": {"i": {"type": "interactivity", "prompt": "rate {chat_history}"}}},
     "CollabLLM's own interactivity prompt"),
    ({"preset": "ck", "metrics": {"p": {"type": "pass_rate", "model": JUDGE}}}, "metric `p` (pass_rate) sets a model"),
])
def test_settings_that_do_not_fit_are_refused_with_the_same_words_by_both(options: dict[str, Any],
                                                                         words: str) -> None:
    from pydantic import ValidationError

    messages = []
    for build in (_eval, _scoring):
        with pytest.raises(ValidationError, match=re.escape(words)) as info:
            build(**options)
        messages.append(info.value.errors()[0]["msg"])
    assert messages[0] == messages[1]


def test_pass_rate_under_preset_collabllm_needs_the_extraction_model_in_the_eval_too() -> None:
    from cruijff_kit_inspect.config import InspectConfig
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=re.escape("metric `code` (pass_rate) needs a model (the extraction "
                                                        "model)")):
        InspectConfig.model_validate({"task": "collab", "user": USER,
                                      "metrics": {"code": {"type": "pass_rate"}}})
    # under preset ck it runs the code of the final answer: no model
    cfg = InspectConfig.model_validate({"task": "collab", "user": USER, "preset": "ck",
                                        "metrics": {"code": {"type": "pass_rate"}}})
    assert _weights(cfg.effective_metrics()) == {"code": ("pass_rate", 1.0)}


#: one toy run (no torch): base, epoch_0 and epoch_1 rows of the `exact` task
SPEC = "experiment: toy\nmodel: {path: m}\ndataset: {plugin: toy-data}\n" \
       "train: {plugin: toy, epochs: 2, steps_per_epoch: 3}\neval: [{plugin: toy-eval, task: exact, checkpoints: all}]\n"


def test_summarize_marks_the_lowest_token_amount_as_best(tmp_path: Path, with_toy, ck) -> None:
    spec = write_spec(tmp_path, SPEC)
    ck("run", str(spec), check=True)
    exp = tmp_path / "runs" / "toy"
    (run_dir,) = (exp / "runs").iterdir()
    # a collab-like results entry per target: the reward (higher is better) and token_amount (a cost)
    values = {"base": (0.2, 0.75), "epoch_0": (0.9, 0.25), "epoch_1": (0.4, 0.5)}
    for results_file in [run_dir / "eval/results.json", *exp.glob("shared/*/eval/results.json")]:
        results = json.loads(results_file.read_text())
        for target, entry in results["exact"].items():
            if target in values and "shared" not in entry:
                reward, tokens = values[target]
                entry["reward/mean"] = {"value": reward}
                entry["token_amount/mean"] = {"value": tokens}
        results_file.write_text(json.dumps(results))
    ck("summarize", str(spec), check=True)
    md = (exp / "summary.md").read_text()
    header = next(line for line in md.splitlines() if "token_amount/mean" in line)
    cols = [c.strip() for c in header.strip().strip("|").split("|")]
    cells: dict[str, dict[str, str]] = {}
    for line in md.splitlines():
        parts = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(parts) == len(cols) and parts[cols.index("target")] in values:
            cells[parts[cols.index("target")]] = dict(zip(cols, parts, strict=True))
    assert set(cells) == set(values), md
    tokens = {t: c["token_amount/mean"] for t, c in cells.items()}
    assert tokens == {"base": "0.75", "epoch_0": "**0.25**", "epoch_1": "0.5"}, md
    rewards = {t: c["reward/mean"] for t, c in cells.items()}
    assert rewards == {"base": "0.2", "epoch_0": "**0.9**", "epoch_1": "0.4"}, md


class _Extractor:
    """A simulator stand-in that answers CollabLLM's extraction prompt with a fixed final document."""

    def __init__(self, document: str) -> None:
        self.document, self.prompts = document, []

    async def complete(self, messages: list[dict[str, str]], **_generation: Any) -> str:
        self.prompts.append(messages[-1]["content"])
        return json.dumps({"thought": "the last version", "final_completion": self.document})

    def is_retryable(self, exc: Exception) -> bool:
        return False

    def retry_after(self, exc: Exception) -> None:
        return None

    def label(self) -> str:
        return "extractor"

    async def aclose(self) -> None:
        return None


def test_the_eval_scores_document_editing_with_bleu_from_the_extraction_model(tmp_path: Path) -> None:
    import asyncio

    from cruijff_kit_inspect.multiturn import Collaboration

    from cruijff_kit.collab import Journal, Task, score_conversation

    cfg = _eval(task_type="document-editing")
    task = Task("t1", "Write a line about a pond.", "an old silent pond")
    extractor = _Extractor("an old silent pond")
    collab = Collaboration(cfg=cfg, tasks=[task], seed=1, system=None, base_dir=tmp_path,
                           journal=Journal(tmp_path / "j.jsonl", "fp"), cache=None, user_plugin=_Extractor(""),
                           judges={"document->bleu": extractor})  # type: ignore[arg-type]
    collab._setup()
    conversation = [{"role": "user", "content": "A line about a pond, please.", "current_answer": ""},
                    {"role": "assistant", "content": "Hello world"}]
    got = asyncio.run(score_conversation(task, conversation, collab._metrics or []))
    # the extracted document equals the reference: BLEU 1; cl100k: "Hello", " world" = 2 tokens
    assert got["document->bleu"] == pytest.approx(1.0)
    assert got["token_amount"] == pytest.approx(2 / 1000)
    assert got["reward"] == pytest.approx(1.0 * 1.0 - 0.1 * 0.002)  # 0.9998
    assert len(extractor.prompts) == 1 and "document" in extractor.prompts[0]
