"""Model calls per conversation of `ck simulate`, counted by a real OpenAI-compatible server on 127.0.0.1.

The expected counts are worked out by hand from the protocol (docs/simulation.md, "Calls per
conversation"): the user model writes the opening; the assistant's `max_turns`-th turn ends the chat
without a user reply; with scoring, the user's reply to the chosen candidate comes from that
candidate's first simulated future, not from one more call.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fake_openai import FakeOpenAI
from simulate_fixtures import KEY, key_in_environment, read_conversations, write_sim_spec

api_key = pytest.fixture(key_in_environment, name="api_key")

_TASK = re.compile(r"What is (\d+)\+\d+\? stop after")


def calls_per_conversation(server: FakeOpenAI) -> dict[str, Counter[str]]:
    """``{task id: {model: requests}}`` from the recorded request bodies (each names its task's text)."""
    out: dict[str, Counter[str]] = {}
    for req in server.recorded:
        m = _TASK.search(json.dumps(req["messages"]))
        assert m, req
        task = f"task-{int(m.group(1)) - 1:03d}"  # write_tasks: task i asks for (i+1)+(i+2)
        out.setdefault(task, Counter())[req["model"]] += 1
    return out


def simulate(tmp_path: Path, stops: list[int], **options: Any) -> tuple[dict[str, Counter[str]], dict[str, Any]]:
    from cruijff_kit._engine.spec import load_spec
    from cruijff_kit._simulate.command import simulate as run

    with FakeOpenAI(api_key=KEY, record=True) as server:
        summary = run(load_spec(write_sim_spec(tmp_path, server.url, stops, **options)), progress=False)
        assert (summary.finished, summary.failed) == (len(stops), 0)
        rows = {r["conv_id"]: r for r in read_conversations(tmp_path / "sim" / "conversations.jsonl")}
        return calls_per_conversation(server), rows


def test_unscored_calls_per_conversation(tmp_path: Path, api_key: str) -> None:
    # max_turns 3. Task 0 ends after 1 assistant turn (user, assistant, user with the marker); task 1
    # after 2; task 2 never: user, then assistant and user twice, then the assistant's third turn ends it.
    calls, rows = simulate(tmp_path, [1, 2, 9])
    assert calls == {"task-000": {"sim-user": 2, "helper": 1},
                     "task-001": {"sim-user": 3, "helper": 2},
                     "task-002": {"sim-user": 3, "helper": 3}}
    assert [(r["ended_by"], r["num_turns"]) for r in rows.values()] == [("marker", 1), ("marker", 2), ("max_turns", 3)]
    assert [m["role"] for m in rows["task-002"]["messages"]] == ["user", "assistant"] * 3


#: With the fixtures' metrics: exact_match and tokens (no calls) and interactivity (one judge call per future).
SCORED = {"candidates": 2, "continuations": 1, "horizon": 1}


def test_scored_calls_per_conversation_reuse_the_chosen_future(tmp_path: Path, api_key: str) -> None:
    # max_turns 2, 2 candidates x 1 future x horizon 1, one judge call per future.
    # Task 0 (ends after 1 turn): opening (1 user); turn 0: 2 candidates (2 assistant), each future the
    # user's reply (2 user), which ends the chat; the chosen future's reply is the conversation's.
    # Task 1 (never ends): opening (1 user); turn 0: 2 candidates, each future a user reply and an
    # assistant answer (2 assistant + 2 user + 2 assistant); turn 1, the last: 2 candidates (2 assistant),
    # each future the user's reply only (2 user), and the chat ends with the assistant's turn.
    calls, rows = simulate(tmp_path, [1, 9], scoring=True, simulate={"max_turns": 2, "scoring": SCORED})
    assert calls == {"task-000": {"sim-user": 3, "helper": 2, "judge": 2},
                     "task-001": {"sim-user": 5, "helper": 6, "judge": 4}}
    assert (rows["task-000"]["ended_by"], rows["task-000"]["num_turns"]) == ("marker", 1)
    assert (rows["task-001"]["ended_by"], rows["task-001"]["num_turns"]) == ("max_turns", 2)
    for row in rows.values():
        for turn in row["turns"]:
            chosen = turn["candidates"][turn["chosen"]]
            after = turn["message_index"] + 1  # the message after the chosen candidate
            if after < len(row["messages"]):
                assert row["messages"][after] == chosen["continuations"][0]["messages"][0]
                assert row["messages"][after]["role"] == "user"
    assert [m["role"] for m in rows["task-001"]["messages"]] == ["user", "assistant"] * 2


def test_scored_without_future_user_turns_asks_the_user(tmp_path: Path, api_key: str) -> None:
    # horizon 0: the futures hold no user reply, so the user is asked after each assistant turn but the last.
    # Task 0: opening, 1 candidate, the user's reply (with the marker). Task 1: opening, candidate,
    # user, candidate (max_turns 2 reached).
    scoring = {**SCORED, "candidates": 1, "horizon": 0}
    calls, rows = simulate(tmp_path, [1, 9], scoring=True, simulate={"max_turns": 2, "scoring": scoring})
    assert calls == {"task-000": {"sim-user": 2, "helper": 1, "judge": 1},
                     "task-001": {"sim-user": 2, "helper": 2, "judge": 2}}
    assert [r["ended_by"] for r in rows.values()] == ["marker", "max_turns"]
