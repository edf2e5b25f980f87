"""`ck simulate` against a real HTTP server on 127.0.0.1 speaking the chat-completions API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI
from filelock import FileLock
from simulate_fixtures import (
    KEY,
    KEY_VAR,
    key_in_environment,
    read_conversations,
    running_server,
    write_sim_spec,
)

fake_server = pytest.fixture(running_server, name="fake_server")
api_key = pytest.fixture(key_in_environment, name="api_key")

ROOT = Path(__file__).resolve().parents[1]


def ck(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real `ck` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "cruijff_kit", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=120)


def ck_here(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The `ck` entry point in this process (cheap): (exit code, stdout, stderr)."""
    from cruijff_kit._cli import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def all_text(folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def test_conversations_end_on_marker_or_max_turns_and_faults_are_retried(tmp_path: Path, fake_server: FakeOpenAI,
                                                                          api_key: str) -> None:
    fake_server.faults = ("429", "500")
    fake_server.fault_percent = 50
    spec = write_sim_spec(tmp_path, fake_server.url, stops=[1, 2, 9, 2, 1, 9])
    res = ck("simulate", str(spec))
    assert res.returncode == 0, res.stderr
    assert "6/6 conversations" in res.stdout
    assert "[simulate] 6/6 done, 0 failed (100%" in res.stderr  # progress lines when stderr is not a terminal
    rows = read_conversations(tmp_path / "sim" / "conversations.jsonl")
    by_id = {r["conv_id"]: r for r in rows}
    assert sorted(by_id) == [f"task-{i:03d}" for i in range(6)]
    for i, stop in enumerate([1, 2, 9, 2, 1, 9]):
        row = by_id[f"task-{i:03d}"]
        if stop < 3:
            assert (row["ended_by"], row["num_turns"]) == ("marker", stop)
            assert "[[TERMINATE CHAT]]" in row["messages"][-1]["content"]
            closing = ["user"]
        else:  # the assistant's last allowed turn (max_turns 3) ends the chat: no user reply is asked for
            assert (row["ended_by"], row["num_turns"]) == ("max_turns", 3)
            closing = []
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["user", "assistant"] * row["num_turns"] + closing
        assert row["system"] == "You are a helpful collaborator."
    # faults happened and were retried: the server answered 429 and 500, and every conversation finished
    assert fake_server.stats.statuses[429] > 0 and fake_server.stats.statuses[500] > 0
    run = json.loads((tmp_path / "sim" / "conversations.run.json").read_text())
    assert run["calls"]["user"]["retries"] + run["calls"]["assistant"]["retries"] > 0
    assert run["calls"]["assistant"]["errors"].keys() <= {"RateLimitError", "InternalServerError"}
    # the key was sent to the server, and never written anywhere
    assert fake_server.stats.auth[f"Bearer {KEY}"] == fake_server.stats.requests
    assert KEY not in all_text(tmp_path)


def test_timeouts_and_malformed_user_json_are_retried(tmp_path: Path, fake_server: FakeOpenAI, api_key: str) -> None:
    from cruijff_kit._engine.spec import load_spec
    from cruijff_kit._simulate.command import simulate

    fake_server.faults = ("timeout",)
    fake_server.fault_percent = 30
    fake_server.hang = 1.0
    spec = write_sim_spec(tmp_path, fake_server.url, stops=[1, 2, 1], extra={1: "(malformed)"},
                          simulate={"user": {"timeout": 0.3}, "assistant": {"timeout": 0.3}})
    summary = simulate(load_spec(spec), progress=False)
    assert (summary.finished, summary.failed, summary.complete) == (3, 0, True)
    errors = {**summary.calls["user"]["errors"], **summary.calls["assistant"]["errors"]}
    assert errors.get("APITimeoutError", 0) > 0
    assert summary.calls["user"]["malformed_json"] >= 2  # the malformed task's user turns, first tries


def test_a_run_killed_half_way_resumes_without_losing_or_repeating(tmp_path: Path, api_key: str) -> None:
    from cruijff_kit._engine.spec import load_spec
    from cruijff_kit._simulate.command import simulate

    n = 12
    with FakeOpenAI(latency=0.05, api_key=KEY) as server:
        spec = write_sim_spec(tmp_path, server.url, stops=[1 + i % 3 for i in range(n)],
                              simulate={"concurrency": 2})
        out = tmp_path / "sim" / "conversations.jsonl"
        proc = subprocess.Popen([sys.executable, "-m", "cruijff_kit", "simulate", str(spec), "--no-progress"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and len(out.read_bytes().splitlines()) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the simulation finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        first = read_conversations(out)
        assert 3 <= len(first) < n
        res = ck("simulate", str(spec), "--no-progress")
    assert res.returncode == 0, res.stderr
    assert f"{len(first)} from earlier runs" in res.stdout
    rows = read_conversations(out)
    ids = [r["conv_id"] for r in rows]
    assert len(ids) == len(set(ids)) == n
    assert rows[:len(first)] == first  # finished conversations are kept as they were
    again = simulate(load_spec(spec), progress=False)  # nothing left to do: no server needed
    assert (again.already_done, again.finished) == (n, 0)
    assert len(read_conversations(out)) == n


def test_a_torn_last_line_is_tolerated_and_redone(tmp_path: Path, fake_server: FakeOpenAI, api_key: str) -> None:
    from cruijff_kit._base.fileio import append_jsonl, read_jsonl
    from cruijff_kit._engine.spec import load_spec
    from cruijff_kit._simulate.command import simulate

    spec = write_sim_spec(tmp_path, fake_server.url, stops=[1, 2, 1, 2])
    simulate(load_spec(spec), progress=False)
    out = tmp_path / "sim" / "conversations.jsonl"
    rows = read_conversations(out)
    # a crash in the middle of the last append leaves a torn line: drop the last row, write half of it
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    assert [r["conv_id"] for r in read_jsonl(out)] == [r["conv_id"] for r in rows[:-1]]  # torn line skipped
    append_jsonl(tmp_path / "probe.jsonl", {"a": 1})  # whole lines, newline-terminated
    assert (tmp_path / "probe.jsonl").read_bytes() == b'{"a": 1}\n'
    summary = simulate(load_spec(spec), progress=False)
    assert (summary.already_done, summary.finished) == (3, 1)
    again = read_conversations(out)  # every line parses
    assert sorted(r["conv_id"] for r in again) == sorted(r["conv_id"] for r in rows)


def test_one_writer_at_a_time_and_key_errors_stop_the_run(tmp_path: Path, fake_server: FakeOpenAI,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_sim_spec(tmp_path, fake_server.url, stops=[1, 1])
    monkeypatch.delenv(KEY_VAR, raising=False)
    code, _, err = ck_here(capsys, "simulate", str(spec))
    assert code == 2 and KEY_VAR in err and "Traceback" not in err
    monkeypatch.setenv(KEY_VAR, "sk-wrong-key-123456")
    code, _, err = ck_here(capsys, "simulate", str(spec))
    assert code == 2 and "AuthenticationError" in err
    assert "sk-wrong-key-123456" not in all_text(tmp_path)
    monkeypatch.setenv(KEY_VAR, KEY)
    out = tmp_path / "sim" / "conversations.jsonl"
    with FileLock(str(out) + ".lock"):
        res = ck("simulate", str(spec))  # another process: the lock is per process
    assert res.returncode == 2 and "another `ck simulate`" in res.stderr


def test_validate_checks_the_simulate_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = "http://127.0.0.1:9/v1"
    train = {"train": {"plugin": "trl"}}
    spec = write_sim_spec(tmp_path, url, stops=[1], top=train)
    code, out, err = ck_here(capsys, "validate", str(spec))
    assert code == 0, err
    # the model by its hub id: the example's local folder exists only after `make demo`
    code, out, err = ck_here(capsys, "validate", str(ROOT / "examples" / "simulate-sft-dpo.yaml"),
                             "--set", "model.path=HuggingFaceTB/SmolLM2-135M-Instruct")
    assert code == 0 and "valid" in out, err
    cases = [
        ({"simulate": {"max_turn": 3}}, ["simulate.max_turn", "max_turns"]),
        ({"simulate": {"user": {"temprature": 0.5}}}, ["simulate.user.temprature", "temperature"]),
        ({"simulate": {"assistant": {"plugin": "opnai"}}}, ["simulate.assistant.plugin", "openai"]),
        ({"scoring": True, "simulate": {"scoring": {"judge": None, "metrics": {"x": {"type": "grader"}}}}},
         ["scoring.judge"]),
        ({"simulate": {"tasks": {"path": "nowhere.json"}}}, ["simulate.tasks.path", "does not exist"]),
        ({"simulate": {"assistant": {"plugin": "local", "adapter": "no-run"}}},
         ["simulate.assistant", "no-run does not exist"]),
        ({"top": {**train, "sweep": {"simulate.max_turns": [1, 2]}}}, ["cannot be swept"]),
    ]
    for options, words in cases:
        spec = write_sim_spec(tmp_path, url, stops=[1], **{"top": train, **options})
        code, _, err = ck_here(capsys, "validate", str(spec))
        assert code == 2 and all(w in err for w in words), (options, err)


def test_finished_conversations_are_appended_in_batches(tmp_path: Path, fake_server: FakeOpenAI, api_key: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from cruijff_kit._engine.spec import load_spec
    from cruijff_kit._simulate.command import simulate

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file an fsync is for")
    out = tmp_path / "sim" / "conversations.jsonl"
    syncs: list[int] = []
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:  # the output's first fsync takes 0.3 s: a busy disk
        if os.readlink(f"/proc/self/fd/{fd}") == str(out):
            syncs.append(fd)
            if len(syncs) == 1:
                time.sleep(0.3)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    spec = write_sim_spec(tmp_path, fake_server.url, stops=[1] * 12, simulate={"concurrency": 12})
    summary = simulate(load_spec(spec), progress=False)
    assert (summary.finished, summary.failed) == (12, 0)
    assert sorted(r["conv_id"] for r in read_conversations(out)) == [f"task-{i:03d}" for i in range(12)]
    # the conversations that finished while the first row was being synced went out together (on a busy
    # machine all twelve may finish before the first write: then one sync holds them all)
    assert 1 <= len(syncs) <= 3, syncs


def test_a_write_error_stops_the_run_with_a_message(tmp_path: Path, fake_server: FakeOpenAI, api_key: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from cruijff_kit._base.errors import CkError
    from cruijff_kit._engine.spec import load_spec
    from cruijff_kit._simulate import loop
    from cruijff_kit._simulate.command import simulate

    def full_disk(path: Path, rows: list[dict[str, object]]) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loop, "append_lines", full_disk)
    spec = write_sim_spec(tmp_path, fake_server.url, stops=[1, 1, 1])
    with pytest.raises(CkError) as err:
        simulate(load_spec(spec), progress=False)
    message = str(err.value)
    assert "No space left on device" in message and "conversations.jsonl" in message and "Free disk space" in message


def test_resuming_under_other_settings_is_refused(tmp_path: Path, fake_server: FakeOpenAI, api_key: str) -> None:
    """Conversations simulated under other settings (here another turn limit) are never mixed with new ones."""
    from cruijff_kit._base.errors import CkError
    from cruijff_kit._engine.spec import load_spec
    from cruijff_kit._simulate.command import simulate

    spec = write_sim_spec(tmp_path, fake_server.url, stops=[1, 2, 1, 2])
    simulate(load_spec(spec), limit=2, progress=False)
    out = tmp_path / "sim" / "conversations.jsonl"
    before = out.read_bytes()
    with pytest.raises(CkError) as err:
        simulate(load_spec(spec, {"simulate.max_turns": 4}), progress=False)
    assert f"{out} holds 2 conversation(s) simulated with other settings" in str(err.value)
    assert "another simulate.output" in str(err.value) and out.read_bytes() == before  # nothing written
    summary = simulate(load_spec(spec), progress=False)  # the same settings resume as before
    assert (summary.already_done, summary.finished) == (2, 2)
    other = {"simulate.max_turns": 4, "simulate.output": "sim/turns4.jsonl"}
    summary = simulate(load_spec(spec, other), progress=False)
    assert (summary.already_done, summary.finished) == (0, 4)
