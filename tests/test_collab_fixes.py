"""Multi-turn (collab) edge cases:

- the user's reply cache stays whole when many worker threads read and write it at once, while another
  cache object on the same file appends (as another process would);
- a prompt file that does not exist is refused by ``ck validate`` (the eval's ``user_prompt`` and a judge
  metric's ``prompt``), naming the spec file and the field, as ``ck simulate`` does;
- a split row with no reference answer is refused when a metric compares with the reference;
- ``last_number`` / ``numeric_match``: a hyphen between numbers is not a minus sign, letters followed by
  digits are not a number (expected values written by hand).
"""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- reply cache under threads
def test_the_reply_cache_loses_no_line_when_threads_and_another_writer_use_it_at_once(tmp_path: Path) -> None:
    from cruijff_kit.collab import ReplyCache

    path = tmp_path / "user_replies.jsonl"
    live, other = ReplyCache(path), ReplyCache(path)
    keys = [f"key-{i:04d}" for i in range(150)]
    threads_per_cache, readers_per_cache = 6, 4
    barrier = threading.Barrier(2 * threads_per_cache + readers_per_cache)
    errors: list[BaseException] = []

    def work(cache: ReplyCache, name: str, offset: int) -> None:
        try:
            barrier.wait()
            for j in range(len(keys)):
                key = keys[(j + offset) % len(keys)]
                if cache.get(key) is None:
                    cache.put(key, f"{name}: reply to {key}" + " padding" * 40)
                for back in range(1, 4):  # read back a few keys that are likely being written right now
                    cache.get(keys[(j + offset - back) % len(keys)])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    done = threading.Event()

    def miss(cache: ReplyCache) -> None:  # a key nobody has: every get reads the file's new lines
        try:
            barrier.wait()
            while not done.is_set():
                cache.get("absent")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    writers = [threading.Thread(target=work, args=(cache, f"{label}{t}", t * 7))
               for label, cache in (("live", live), ("other", other)) for t in range(threads_per_cache)]
    readers = [threading.Thread(target=miss, args=(live,)) for _ in range(readers_per_cache)]
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, as busy worker threads do
    try:
        for t in writers + readers:
            t.start()
        for t in writers:
            t.join()
        done.set()
        for t in readers:
            t.join()
    finally:
        sys.setswitchinterval(old_interval)
    assert not errors, errors

    # the file: whole JSON lines, one per key (a second reply for a key means a reader missed the first)
    import json

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    per_key: dict[str, list[str]] = {}
    for row in rows:
        per_key.setdefault(row["key"], []).append(row["reply"])
    assert sorted(per_key) == keys
    assert {k: len(v) for k, v in per_key.items() if len(v) != 1} == {}

    fresh = ReplyCache(path)
    for key in keys:
        want = per_key[key][0]
        assert fresh.get(key) == want
        assert live.get(key) == want, key
        assert other.get(key) == want, key


# --------------------------------------------------------------------------- prompt files at plan time
@pytest.fixture
def example(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    return tmp_path / "examples" / "collabllm.yaml"


def _validate(example: Path, change: dict[str, Any], tiny_llama: Path, ck: Any) -> Any:
    spec = yaml.safe_load(example.read_text())
    spec["eval"][0].update(change)
    example.write_text(yaml.safe_dump(spec, sort_keys=False))
    return ck("validate", str(example), "--set", f"model.path={tiny_llama}", cwd=example.parent.parent)


def test_a_missing_user_prompt_file_is_refused_by_ck_validate(example: Path, tiny_llama: Path, ck) -> None:
    res = _validate(example, {"user_prompt": "prompts/no-such-user.txt"}, tiny_llama, ck)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "collabllm.yaml" in out and "eval[0].user_prompt" in out
    assert "no-such-user.txt does not exist" in out


def test_a_missing_metric_prompt_file_is_refused_by_ck_validate(example: Path, tiny_llama: Path, ck) -> None:
    metrics = {"accuracy": {"type": "grader", "weight": 1.0, "prompt": "prompts/no-such-grader.md"}}
    res = _validate(example, {"preset": "ck", "metrics": metrics}, tiny_llama, ck)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "collabllm.yaml" in out and "eval[0].metrics.accuracy.prompt" in out
    assert "no-such-grader.md does not exist" in out


def test_an_existing_prompt_file_is_read_and_inline_text_is_kept(tmp_path: Path) -> None:
    from cruijff_kit import SpecError
    from cruijff_kit.collab import prompt_text

    (tmp_path / "grader.md").write_text("Grade {chat_history}", encoding="utf-8")
    assert prompt_text("grader.md", tmp_path, file="s.yaml", path="p") == "Grade {chat_history}"
    assert prompt_text("Be brief.", tmp_path, file="s.yaml", path="p") == "Be brief."
    with pytest.raises(SpecError) as info:
        prompt_text("gone.txt", tmp_path, file="s.yaml", path="eval[0].user_prompt")
    assert "s.yaml" in str(info.value) and "eval[0].user_prompt" in str(info.value)


# --------------------------------------------------------------------------- split rows without a reference
class _Ctx:
    """The little of a stage context ``make_collaboration`` reads before it needs anything else."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def dataset(self) -> dict[str, list[dict[str, Any]]]:
        return {"validation": self.rows}


ROWS = [
    {"id": "a", "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    {"id": "b", "messages": [{"role": "user", "content": "3+3?"}]},
]


@pytest.mark.parametrize("metric", [{"type": "exact_match"}, {"type": "contains"}, {"type": "numeric"}])
def test_a_split_row_without_a_reference_is_refused_when_a_metric_needs_one(tmp_path: Path,
                                                                             metric: dict[str, Any]) -> None:
    from cruijff_kit_inspect.config import InspectConfig
    from cruijff_kit_inspect.multiturn import make_collaboration

    from cruijff_kit import DataError

    cfg = InspectConfig.model_validate({"task": "collab", "split": "validation", "preset": "ck",
                                        "user": {"plugin": "openai", "model": "sim-user"},
                                        "metrics": {"score": {**metric, "weight": 1.0}}})
    with pytest.raises(DataError) as info:
        make_collaboration(cfg, _Ctx(ROWS), tmp_path)
    msg = str(info.value)
    assert "split `validation`" in msg and "row 1 (id `b`)" in msg and "metric `score`" in msg


def test_a_split_row_without_a_reference_is_fine_without_reference_metrics() -> None:
    from cruijff_kit_inspect.multiturn import tasks_from_rows

    tasks = tasks_from_rows(ROWS, "validation")
    assert [(t.id, t.prompt, t.answer) for t in tasks] == [("a", "2+2?", "4"), ("b", "3+3?", None)]


# --------------------------------------------------------------------------- numbers in answers
@pytest.mark.parametrize(("text", "want"), [
    ("pages 10-20", 20.0),
    ("steps 1-2", 2.0),
    ("answer 42, see e5", 42.0),
    ("-3", -3.0),
    ("x = -3.5", -3.5),
    ("(-4) apples", -4.0),
    ("1e3", 1000.0),
    ("about -2.5e2 m", -250.0),
    ("1,234", 1234.0),
    ("costs $1,234,567.5", 1234567.5),
    ("no number here", None),
    ("e5", None),
])
def test_last_number(text: str, want: float | None) -> None:
    from cruijff_kit.collab import last_number

    assert last_number(text) == want


def test_numeric_match_reads_hyphens_as_ranges_not_minus_signs() -> None:
    from cruijff_kit.collab import numeric_match

    assert numeric_match("The answer is 1-20", "20") == 1.0
    assert numeric_match("read pages 10-20", "-20") == 0.0
    assert numeric_match("The answer is 42, see e5", "42") == 1.0
    assert numeric_match("x = -3.5", "-3.5") == 1.0
