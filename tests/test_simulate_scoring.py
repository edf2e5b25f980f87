"""The multiturn-aware reward, metrics, the user's JSON protocol, retries and task files."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest
from fake_openai import FakeOpenAI
from simulate_fixtures import (
    key_in_environment,
    participant,
    read_conversations,
    running_server,
    write_sim_spec,
)

fake_server = pytest.fixture(running_server, name="fake_server")
api_key = pytest.fixture(key_in_environment, name="api_key")


def run_sim(spec: Path) -> Any:
    from cruijff_kit._engine.spec import load_spec
    from cruijff_kit._simulate.command import simulate

    return simulate(load_spec(spec), progress=False)


def test_every_candidate_its_futures_and_metric_values_are_stored(tmp_path: Path, fake_server: FakeOpenAI,
                                                                  api_key: str) -> None:
    (tmp_path / "my_metric.py").write_text(
        "def length_bonus(final_answer, task, conversation):\n"
        "    assert task['answer'] is not None and conversation[0]['role'] == 'user'\n"
        "    return 1.0 if len(final_answer) < 5 else 0.0\n")
    metrics = {
        "grade": {"type": "grader", "weight": 0.5, "model": participant(fake_server.url, "grader")},
        "mine": {"type": "python", "function": "my_metric.py:length_bonus", "weight": 0.25},
    }
    spec = write_sim_spec(tmp_path, fake_server.url, stops=[2, 9], scoring=True,
                          simulate={"max_turns": 2, "scoring": {"metrics": metrics}})
    summary = run_sim(spec)
    assert summary.finished == 2
    weights = {"accuracy": 1.0, "interactivity": 0.5, "token_amount": -0.1, "grade": 0.5, "mine": 0.25}
    for row in read_conversations(tmp_path / "sim" / "conversations.jsonl"):
        assert len(row["turns"]) == row["num_turns"] >= 1
        for turn in row["turns"]:
            cands = turn["candidates"]
            assert len(cands) == 3
            scores = [c["score"] for c in cands]
            assert turn["chosen"] == scores.index(max(scores))
            assert row["messages"][turn["message_index"]]["content"] == cands[turn["chosen"]]["completion"]
            for c in cands:
                assert len(c["continuations"]) == 2 and set(c["rewards"]) == set(weights)
                for f in c["continuations"]:
                    assert f["score"] == pytest.approx(sum(weights[k] * v for k, v in f["rewards"].items()))
                    assert f["messages"][0]["role"] == "user"  # the future starts with the user's reply
                    assert len([m for m in f["messages"] if m["role"] == "user"]) <= 1  # horizon 1
                assert c["score"] == pytest.approx(sum(f["score"] for f in c["continuations"]) / 2)
                for name in weights:
                    assert c["rewards"][name] == pytest.approx(
                        sum(f["rewards"][name] for f in c["continuations"]) / 2)
    # task 0 asks 1+2: the fake answers "The answer is 3." or a question; exact match finds the 3
    rows = {r["conv_id"]: r for r in read_conversations(tmp_path / "sim" / "conversations.jsonl")}
    assert any(c["rewards"]["accuracy"] > 0 for t in rows["task-000"]["turns"] for c in t["candidates"])
    assert any(c["rewards"]["interactivity"] > 0 for t in rows["task-000"]["turns"] for c in t["candidates"])
    assert fake_server.stats.models["grader"] > 0 and fake_server.stats.models["judge"] > 0


def test_a_failing_conversation_is_recorded_and_retried_by_the_next_run(tmp_path: Path, fake_server: FakeOpenAI,
                                                                        api_key: str) -> None:
    (tmp_path / "flaky.py").write_text(
        "from pathlib import Path\n"
        "def metric(final_answer, task, conversation):\n"
        "    if task['id'] == 'task-001' and not Path(__file__).with_name('fixed').exists():\n"
        "        raise ValueError('cannot score this one')\n"
        "    return 1.0\n")
    spec = write_sim_spec(tmp_path, fake_server.url, stops=[1, 1, 1], scoring=True,
                          simulate={"scoring": {"candidates": 1, "continuations": 1, "horizon": 0,
                                                "metrics": {"flaky": {"type": "python", "function": "flaky.py:metric"}}}})
    first = run_sim(spec)
    assert (first.finished, first.failed) == (2, 1)
    errors = read_conversations(tmp_path / "sim" / "conversations.errors.jsonl")
    assert [e["conv_id"] for e in errors] == ["task-001"] and "cannot score this one" in errors[0]["error"]
    (tmp_path / "fixed").write_text("")
    second = run_sim(spec)
    assert (second.already_done, second.finished, second.failed, second.complete) == (2, 1, 0, True)


def test_metrics() -> None:
    from cruijff_kit.collab import (
        contains,
        count_tokens,
        exact_match,
        extract_answer,
        final_answer,
        pass_rate,
    )

    assert exact_match("The answer is 42.", "42") == 1.0
    assert exact_match("so \\boxed{x+1}", "x+1") == 1.0
    assert exact_match("43", "42") == 0.0
    assert contains("I think it is Paris, France", "paris") == 1.0 and contains("Lyon", "Paris") == 0.0
    assert extract_answer("Final answer: 7\nthanks") == "7"
    assert count_tokens("Hello, world!") == 4
    conv = [{"role": "user", "content": "q", "current_answer": ""},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "ok", "current_answer": "A"}]
    assert final_answer(conv) == "A" and final_answer(conv[:2]) == "a1"
    code = "Here:\n```python\ndef add(a, b):\n    return a + b\n```"
    assert pass_rate(code, ["assert add(1, 2) == 3", "assert add(1, 1) == 3"]) == 0.5


def test_user_reply_protocol() -> None:
    from cruijff_kit.collab import MalformedReply, parse_user_reply

    r = parse_user_reply('Sure!\n```json\n{"current_answer": 4, "thought": "ok", "response": "thanks"}\n```')
    assert (r.current_answer, r.response) == ("4", "thanks")
    for bad in ("no json here", '{"thought": "x"}', '{"response": "  "}', "[1, 2]"):
        with pytest.raises(MalformedReply):
            parse_user_reply(bad)


def test_retries_back_off_and_give_up() -> None:
    from cruijff_kit._api.kinds import Simulator
    from cruijff_kit._api.retry import Caller, CallFailed, RetryPolicy, backoff_delay

    policy = RetryPolicy(attempts=3, initial_delay=0.001, max_delay=0.004, multiplier=2, jitter=0)
    assert [backoff_delay(policy, a, random.Random(0)) for a in (1, 2, 3, 4)] == [0.001, 0.002, 0.004, 0.004]

    class Flaky(Simulator):
        name = "flaky"

        def __init__(self, failures: list[BaseException]) -> None:
            super().__init__(Simulator.Config())
            self.failures = failures

        async def complete(self, messages: list[dict[str, str]], **generation: Any) -> str:
            if self.failures:
                raise self.failures.pop(0)
            return "ok"

    async def call(plugin: Simulator) -> str:
        return await Caller(plugin, policy, asyncio.Semaphore(1))([])

    assert asyncio.run(call(Flaky([TimeoutError(), ConnectionError()]))) == "ok"
    with pytest.raises(CallFailed, match="gave up after 3 tries"):
        asyncio.run(call(Flaky([TimeoutError()] * 3)))
    with pytest.raises(CallFailed, match="ValueError"):
        asyncio.run(call(Flaky([ValueError("bad request")])))


def test_repair_tail(tmp_path: Path) -> None:
    from cruijff_kit._base.fileio import repair_tail

    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"conv_id": "a"}\n{"conv_id": "b"}\n{"conv_')
    assert repair_tail(p) and p.read_bytes() == b'{"conv_id": "a"}\n{"conv_id": "b"}\n'
    assert not repair_tail(p)
    p.write_bytes(b'{"conv_')
    assert repair_tail(p) and p.read_bytes() == b""


def test_task_files(tmp_path: Path) -> None:
    from cruijff_kit._base.errors import DataError
    from cruijff_kit._simulate.config import TaskSource
    from cruijff_kit.collab import conversation_ids, load_tasks

    p = tmp_path / "t.jsonl"
    p.write_text('{"question": "2+2?", "ref": 4, "tests": ["assert True"]}\n{"question": "3+3?"}\n')
    tasks = load_tasks(TaskSource(path="t.jsonl", prompt_field="question", answer_field="ref"), p)
    assert [t.answer for t in tasks] == ["4", None] and tasks[0].metadata == {"tests": ["assert True"]}
    assert tasks[0].id != tasks[1].id and tasks[0].id == load_tasks(TaskSource(path="t.jsonl",
                                                                               prompt_field="question"), p)[0].id
    assert conversation_ids(tasks[0], 2) == [f"{tasks[0].id}#0", f"{tasks[0].id}#1"]
    with pytest.raises(DataError, match="no `input`"):
        load_tasks(TaskSource(path="t.jsonl"), p)
    dup = tmp_path / "d.json"
    dup.write_text(json.dumps([{"id": 1, "input": "a"}, {"id": 1, "input": "b"}]))
    with pytest.raises(DataError, match="appears twice"):
        load_tasks(TaskSource(path="d.json"), dup)
