"""The public :mod:`cruijff_kit.collab`: a conversation's reward equals a hand-computed value, the answer
checks, the journal and the user reply cache, and the ``collab`` eval task's option errors."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from cruijff_kit import collab
from cruijff_kit.collab import Metric, MetricSpec, Task, score_conversation

TASK = Task("t1", "What is 2+2?", "4")
CONVERSATION = [
    {"role": "user", "content": "I need a sum.", "current_answer": ""},
    {"role": "assistant", "content": "Hello world"},
    {"role": "user", "content": "2+2 please", "current_answer": "The answer is 4.0"},
    {"role": "assistant", "content": "Hello world"},
]


def _metrics(specs: dict[str, dict], preset: str, judge=None) -> list[Metric]:
    return [Metric(name, MetricSpec.model_validate(s), Path("."), caller=judge, preset=preset,
                   prompt=collab.GRADER_PROMPT if s["type"] == "grader" else collab.INTERACTIVITY_PROMPT)
            for name, s in specs.items()]


def test_reward_of_a_hand_made_conversation_collabllm_preset() -> None:
    prompts: list[str] = []

    async def judge(messages, **_kw):
        prompts.append(messages[-1]["content"])
        if "*accuracy*" in messages[-1]["content"]:
            return '{"thought": "ok", "accuracy": 1}'
        return '{"thought": "fine", "interactivity": 0.5}'

    metrics = _metrics(collab.PRESETS["collabllm"], "collabllm", judge)
    got = asyncio.run(score_conversation(TASK, CONVERSATION, metrics))
    # cl100k_base: "Hello", " world", " Hello", " world" (both assistant turns joined by a space) = 4 tokens
    assert got["token_amount"] == pytest.approx(4 / 1000)
    assert (got["accuracy"], got["interactivity"]) == (1.0, 0.5)
    assert got["reward"] == pytest.approx(1.0 * 1 + 0.5 * 0.5 - 0.5 * 0.004)  # 1.248
    assert list(got)[0] == "reward"
    # the judges read the whole conversation
    assert len(prompts) == 2 and all("2+2 please" in p for p in prompts)


def test_default_preset_has_collabllm_question_answering_weights() -> None:
    weights = {name: (m.type, m.weight) for name, m in collab.preset_metrics("collabllm").items()}
    assert weights == {"accuracy": ("grader", 1.0), "interactivity": ("interactivity", 0.5),
                       "token_amount": ("tokens", -0.5)}


def test_reward_of_a_hand_made_conversation_answer_checks() -> None:
    specs = {"exact": {"type": "exact_match", "weight": 2.0}, "includes": {"type": "contains", "weight": 0.25},
             "numeric": {"type": "numeric", "weight": 1.5}, "tokens": {"type": "tokens", "weight": -0.1, "per": 10}}
    got = asyncio.run(score_conversation(TASK, CONVERSATION, _metrics(specs, "ck")))
    # final answer: the user's last current_answer "The answer is 4.0" -> unwrapped "4.0"
    assert (got["exact"], got["includes"], got["numeric"]) == (0.0, 1.0, 1.0)
    assert got["tokens"] == pytest.approx(4 / 10)  # "Hello" "world" twice: 4 words
    assert got["reward"] == pytest.approx(2.0 * 0 + 0.25 * 1 + 1.5 * 1 - 0.1 * 0.4)  # 1.71


@pytest.mark.parametrize(("answer", "reference", "want"), [
    ("The answer is 1,234.", "1234", 1.0), ("\\boxed{-3.5}", "-3.50", 1.0), ("about 7", "8", 0.0),
    ("no number", "3", 0.0), ("2e3 apples", "2000", 1.0)])
def test_numeric_match(answer: str, reference: str, want: float) -> None:
    assert collab.numeric_match(answer, reference) == want


def test_journal_skips_other_settings_and_repairs_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "conversations.jsonl"
    j = collab.Journal(path, "fp1")
    j.add({"conv_id": "a", "scores": {"reward": 1.0}})
    collab.Journal(path, "fp2").add({"conv_id": "b", "scores": {"reward": 2.0}})
    with open(path, "a") as fh:
        fh.write('{"conv_id": "c", "fingerpr')  # torn by a kill mid-write
    again = collab.Journal(path, "fp1")
    assert again.get("a") == {"conv_id": "a", "scores": {"reward": 1.0}, "fingerprint": "fp1"}
    assert again.get("b") is None and again.get("c") is None
    again.add({"conv_id": "d", "scores": {}})
    assert [json.loads(line)["conv_id"] for line in path.read_text().splitlines()] == ["a", "b", "d"]


def test_reply_cache_first_recorded_reply_wins_across_readers(tmp_path: Path) -> None:
    path = tmp_path / "user_replies.jsonl"
    one, two = collab.ReplyCache(path), collab.ReplyCache(path)
    key = collab.ReplyCache.key("user", [{"role": "user", "content": "prompt"}], {"seed": 1})
    assert key != collab.ReplyCache.key("user", [{"role": "user", "content": "prompt"}], {"seed": 2})
    one.put(key, "first")
    two.put(key, "second")
    assert two.get(key) == "first" and collab.ReplyCache(path).get(key) == "first"
    assert len(path.read_text().splitlines()) == 1
    with open(path, "a") as fh:
        fh.write('{"key": "torn", "rep')  # a kill mid-write
    three = collab.ReplyCache(path)
    assert three.get("torn") is None and three.get(key) == "first"
    three.put("other", "x")
    assert collab.ReplyCache(path).get("other") == "x" and len(path.read_text().splitlines()) == 2


# --------------------------------------------------------------------------- the eval task's options
def _config(**options):
    from cruijff_kit_inspect.config import InspectConfig

    return InspectConfig.model_validate({"task": "collab", **options})


USER = {"plugin": "openai", "model": "sim-user"}


@pytest.mark.parametrize(("options", "message"), [
    ({}, "task: collab needs `user:`"),
    ({"user": USER}, "metric `accuracy` (grader) needs a judge"),
    ({"user": USER, "metrics": {"a": {"type": "exact_match"}}, "epochs": 2}, "remove epochs"),
    ({"user": USER, "metrics": {"a": {"type": "exact_match"}}, "scorers": ["match"]}, "remove scorers"),
    ({"user": USER, "metrics": {"a": {"type": "nope"}}}, "exact_match"),
])
def test_collab_option_errors(options: dict, message: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=re.escape(message)):
        _config(**options)


def test_collab_options_are_refused_on_other_tasks() -> None:
    from cruijff_kit_inspect.config import InspectConfig
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="max_turns, user apply to task: collab only"):
        InspectConfig.model_validate({"task": "exact-match", "user": USER, "max_turns": 3})


def test_other_tasks_revalidate_their_resolved_options() -> None:
    """The resolved spec holds every option at its default; that is not setting collab's options."""
    from cruijff_kit_inspect.config import InspectConfig

    resolved = InspectConfig.model_validate({"task": "exact-match"}).model_dump(mode="json")
    assert InspectConfig.model_validate(resolved).max_turns == 6


def test_collab_check_names_a_missing_task_file_and_bad_user_options(tmp_path: Path) -> None:
    from cruijff_kit_inspect.multiturn import check_collab

    from cruijff_kit import CkError

    cfg = _config(user=USER, metrics={"a": {"type": "exact_match"}}, tasks={"path": "held.jsonl"})
    with pytest.raises(CkError, match="held.jsonl does not exist") as info:
        check_collab(cfg, tmp_path, None)
    assert info.value.option == "tasks.path"
    (tmp_path / "held.jsonl").write_text('{"id": "a", "input": "x", "output": "y"}\n')
    check_collab(cfg, tmp_path, None)
    bad = _config(user={"plugin": "openai"}, metrics={"a": {"type": "exact_match"}}, tasks={"path": "held.jsonl"})
    with pytest.raises(CkError, match="user.model") as info:
        check_collab(bad, tmp_path, None)
    assert info.value.option == "user"


def test_reply_cache_is_shared_by_the_experiment_and_a_retrained_adapter_is_another(tmp_path: Path) -> None:
    from cruijff_kit_inspect.multiturn import adapter_identity, reply_cache_path

    exp = tmp_path / "exp"
    for folder in (exp / "runs" / "a-run", exp / "shared" / "base-eval"):
        assert reply_cache_path(folder, folder / "eval" / "collab" / "base", "collab") == \
            exp / "collab" / "collab" / "user_replies.jsonl"
    alone = tmp_path / "one-off"
    assert reply_cache_path(alone, alone / "eval" / "c" / "base", "c") == alone / "eval" / "c" / "user_replies.jsonl"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"1234")
    before = adapter_identity(adapter)
    (adapter / "adapter_model.safetensors").write_bytes(b"12345")
    assert adapter_identity(adapter) != before and adapter_identity(None) is None


def test_collab_check_refuses_the_collabllm_token_count_without_tiktoken(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from cruijff_kit_inspect.multiturn import check_collab

    from cruijff_kit import CkError

    (tmp_path / "held.jsonl").write_text('{"id": "a", "input": "x", "output": "y"}\n')
    cfg = _config(user=USER, metrics={"t": {"type": "tokens", "weight": -0.5}}, tasks={"path": "held.jsonl"})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tiktoken" else real(name, *a))
    with pytest.raises(CkError, match="tiktoken is not installed") as info:
        check_collab(cfg, tmp_path, None)
    assert info.value.option == "preset"
    check_collab(_config(user=USER, preset="ck", metrics={"t": {"type": "tokens"}}, tasks={"path": "held.jsonl"}),
                 tmp_path, None)
