"""Helpers for the simulation tests: the fake OpenAI server fixture, task files and specs."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_openai import FakeOpenAI

KEY_VAR = "CK_TEST_SIM_API_KEY"
KEY = "sk-test-do-not-write-0123456789"


def running_server() -> Iterator[FakeOpenAI]:
    """Fixture body: a fake OpenAI server without latency or faults (tests change its attributes).

    Use as ``fake_server = pytest.fixture(running_server)`` in a test module.
    """
    with FakeOpenAI(api_key=KEY) as server:
        yield server


def key_in_environment(monkeypatch: pytest.MonkeyPatch) -> str:
    """Fixture body: the API key in the environment, as ``ck simulate`` reads it."""
    monkeypatch.setenv(KEY_VAR, KEY)
    return KEY


def write_tasks(folder: Path, stops: list[int], *, extra: dict[int, str] | None = None) -> Path:
    """A json-instruct style task file: task i asks for i+1 + i+2 and stops after ``stops[i]`` turns."""
    rows = []
    for i, stop in enumerate(stops):
        text = f"What is {i + 1}+{i + 2}? stop after {stop}" + ((" " + extra[i]) if extra and i in extra else "")
        rows.append({"id": f"task-{i:03d}", "input": text, "output": str(2 * i + 3)})
    path = folder / "tasks.json"
    path.write_text(json.dumps({"train": rows}))
    return path


def participant(url: str, model: str, **options: Any) -> dict[str, Any]:
    """An ``openai`` simulator section pointing at the fake server."""
    return {"plugin": "openai", "model": model, "base_url": url, "api_key_env": KEY_VAR, **options}


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` merged into a copy of ``base`` (mappings merged, anything else replaced).

    A mapping naming another ``plugin`` replaces the section instead of merging into it.
    """
    out = copy.deepcopy(base)
    for k, v in extra.items():
        old = out.get(k)
        merge = isinstance(v, dict) and isinstance(old, dict) and v.get("plugin", old.get("plugin")) == old.get("plugin")
        out[k] = deep_merge(old, v) if merge else v  # type: ignore[arg-type]
    return out


#: ck's own reward, named explicitly: the tests using it check ck's computation (collabllm is the default).
SCORING = {
    "preset": "ck", "candidates": 3, "continuations": 2, "horizon": 1,
    "metrics": {
        "accuracy": {"type": "exact_match", "weight": 1.0},
        "interactivity": {"type": "interactivity", "weight": 0.5},
        "token_amount": {"type": "tokens", "weight": -0.1},
    },
}


def write_sim_spec(folder: Path, url: str, stops: list[int], *, simulate: dict[str, Any] | None = None,
                   extra: dict[int, str] | None = None, scoring: bool = False, top: dict[str, Any] | None = None,
                   model: str = "models/tiny") -> Path:
    """A spec whose ``simulate`` section talks to the fake server (and a multiturn dataset reading it)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_tasks(folder, stops, extra=extra)
    section: dict[str, Any] = {
        "tasks": {"path": "tasks.json"},
        "output": "sim/conversations.jsonl",
        "max_turns": 3,
        "concurrency": 4,
        "retry": {"initial_delay": 0.01, "max_delay": 0.05},
        "user": participant(url, "sim-user"),
        "assistant": participant(url, "helper"),
    }
    if scoring:
        section["scoring"] = {**SCORING, "judge": participant(url, "judge")}
    section = deep_merge(section, simulate or {})
    spec = {
        "experiment": "sim-test",
        "output_dir": "runs",
        "seed": 3,
        "model": {"path": model},
        "prompt": {"system": "You are a helpful collaborator."},
        "dataset": {"plugin": "multiturn", "path": "sim/conversations.jsonl"},
        "simulate": section,
        **(top or {}),
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def read_conversations(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSONL file, parsed (fails on any line that is not JSON)."""
    return [json.loads(line) for line in path.read_text().splitlines()]
