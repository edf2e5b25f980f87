"""The ``collabllm`` scoring preset reproduces the official CollabLLM reward.

``tests/data/collabllm_reward/expected.json`` was computed by the official package
(``regenerate.py`` beside it, run in its own environment) on the scripted sessions of
``scripts.json`` with a scripted judge; here the same scripts go through
:mod:`cruijff_kit.collab` and must give the same values and send the same judge prompts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from cruijff_kit.collab import _collabllm as collabllm

DATA = Path(__file__).parent / "data" / "collabllm_reward"


@pytest.fixture(autouse=True)
def _cl100k() -> None:
    """The cl100k_base table comes from litellm's wheel (a test dependency, requirements-dev.txt)."""
    assert collabllm.cl100k_file().is_file()


def _judge(case: dict, sent: dict[str, str]):
    def judge(prompt: str) -> str:
        tag = re.search(r"\[(s\d)\]", prompt).group(1)
        kind = ("accuracy" if "*accuracy*" in prompt else "interactivity" if "*interactivity*" in prompt
                else "extract")
        sent[f"{tag}:{kind}"] = hashlib.sha256(prompt.encode()).hexdigest()
        return case["judge"][tag][kind]
    return judge


@pytest.mark.parametrize("name", ["math", "document"])
def test_matches_the_official_package(name: str) -> None:
    cases = {c["name"]: c for c in json.loads((DATA / "scripts.json").read_text(encoding="utf-8"))["cases"]}
    expected = {c["name"]: c for c in json.loads((DATA / "expected.json").read_text(encoding="utf-8"))["cases"]}
    case, want = cases[name], expected[name]
    weights = collabllm.WEIGHTS[case["task_type"]]
    sent: dict[str, str] = {}
    futures = [collabllm.session_rewards(s, task=case["task"], reference=case["reference"], weights=weights,
                                         judge=_judge(case, sent)) for s in case["sessions"]]
    for metric, values in want["rewards"].items():
        assert [f[metric] for f in futures] == pytest.approx(values, abs=1e-12), metric
    assert collabllm.candidate_score(futures) == pytest.approx(want["score"], abs=1e-12)
    assert collabllm.next_user_future(case["sessions"]) == want["next_user_future"]
    assert sent == want["prompt_sha256"]  # the very same judge prompts, byte for byte


def test_hand_computed_reward() -> None:
    # cl100k_base: "Hello", " world", " Hello", " world" -> 4 tokens over both assistant messages
    session = [{"role": "system", "content": "be brief"},
               {"role": "user", "content": "hi [s0]"},
               {"role": "assistant", "content": "Hello world"},
               {"role": "user", "content": "again"},
               {"role": "assistant", "content": "Hello world"}]
    replies = {"accuracy": '{"thought": "x", "accuracy": 1}', "interactivity": '{"thought": "y", "interactivity": 0.5}'}

    def judge(prompt: str) -> str:
        return replies["accuracy" if "*accuracy*" in prompt else "interactivity"]

    got = collabllm.session_rewards(session, task="say hello", reference="Hello world",
                                    weights=collabllm.WEIGHTS["question-answering"], judge=judge)
    assert got["token_amount"] == 0.004
    assert got["MR"] == pytest.approx(1 * 1 + 0.5 * 0.5 - 0.5 * 0.004)  # 1.248


def test_bleu_by_hand() -> None:
    # identical strings: every precision 1, no brevity penalty
    assert collabllm.sentence_bleu("abcd", "abcd") == pytest.approx(1.0)
    # hypothesis "abc" vs reference "abcd": p1..p3 = 1, p4 = 0/1 -> ~0 (no smoothing); no unigram match -> 0
    assert collabllm.sentence_bleu("abcd", "abc") < 1e-70
    assert collabllm.sentence_bleu("abcd", "xyz") == 0.0
    # "abcde" vs "abcdf": p1 = 4/5, p2 = 3/4, p3 = 2/3, p4 = 1/2, equal lengths -> geometric mean
    assert collabllm.sentence_bleu("abcdf", "abcde") == pytest.approx((4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25)


def test_missing_tokenizer_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CK_CL100K_FILE", str(tmp_path / "nope.tiktoken"))
    monkeypatch.setattr(collabllm.importlib.util, "find_spec", lambda name: None)
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(Exception, match="CK_CL100K_FILE") as info:
        collabllm.cl100k_file()
    assert "litellm" in str(info.value)
    assert os.environ["CK_CL100K_FILE"].endswith("nope.tiktoken")


def _engine(preset: str, max_turns: int):
    import asyncio  # noqa: F401

    from cruijff_kit._simulate.config import MetricSpec, ScoringConfig
    from cruijff_kit._simulate.conversation import Engine
    from cruijff_kit.collab import Metric, UserSimulator
    from cruijff_kit.collab import _prompts as prompts

    replies = iter(range(1000))

    async def user_model(messages, **_kw):
        return json.dumps({"current_answer": "", "thought": "", "response": f"more please {next(replies)}"})

    async def assistant(messages, **_kw):
        return "Hello world"

    judged: list[str] = []

    async def judge(messages, **_kw):
        judged.append(messages[-1]["content"])
        return '{"thought": "t", "interactivity": 0.5, "score": 0.5}'

    scoring = ScoringConfig.model_validate({
        "preset": preset, "candidates": 1, "horizon": 2,
        "judge": {"plugin": "openai"},
        "metrics": {"interactivity": {"type": "interactivity", "weight": 0.5},
                    "token_amount": {"type": "tokens", "weight": -0.5, "per": 1000}}})
    metrics = [Metric(n, MetricSpec.model_validate(m.model_dump()), Path("."), caller=judge if n == "interactivity" else None,
                      prompt=prompts.INTERACTIVITY_PROMPT, preset=preset)
               for n, m in scoring.metrics.items()]
    user = UserSimulator(user_model, prompts.USER_PROMPT, prompts.TERMINATION_MARKER)
    return Engine(user=user, assistant=assistant, max_turns=max_turns, seed=0, scoring=scoring,
                  metrics=metrics), judged


def test_ck_simulate_with_preset_collabllm() -> None:
    import asyncio

    from cruijff_kit.collab import Task

    engine, judged = _engine("collabllm", max_turns=1)
    row = asyncio.run(engine.run("c0", Task(id="t", prompt="greet me", answer="hi")))
    candidate = row["turns"][0]["candidates"][0]
    futures = candidate["continuations"]
    assert len(futures) == 3  # three futures by default
    # not cut at max_turns=1: user, assistant, user, assistant
    assert [len(f["messages"]) for f in futures] == [4, 4, 4]
    # whole conversation: opening user turn, candidate, 2 future replies -> 3 x "Hello world" = 6 cl100k tokens
    assert candidate["rewards"]["token_amount"] == pytest.approx(0.006)
    assert candidate["score"] == pytest.approx(0.5 * 0.5 - 0.5 * 0.006)  # 0.247
    assert judged and all(p.startswith("You are a helpful and meticulous conversation evaluator.") for p in judged)
    assert "User: more please" in judged[0] and "Assistant: Hello world" in judged[0]


def test_preset_ck_keeps_todays_reward() -> None:
    import asyncio

    from cruijff_kit.collab import Task

    engine, _ = _engine("ck", max_turns=1)
    row = asyncio.run(engine.run("c0", Task(id="t", prompt="greet me", answer="hi")))
    candidate = row["turns"][0]["candidates"][0]
    assert len(candidate["continuations"]) == 2
    assert [len(f["messages"]) for f in candidate["continuations"]] == [1, 1]  # cut at max_turns
    # regex count of the candidate only: "Hello", "world" = 2 tokens
    assert candidate["rewards"]["token_amount"] == pytest.approx(0.002)
