"""The `multiturn` dataset's column-wise conversion gives exactly the rows of the row-by-row one it replaced.

``multiturn_reference_impl.py`` is a frozen copy of the conversion as it was. Each case generates
CollabLLM rows (several conversations, turns out of order and with gaps, one to four candidates,
tied scores, rows below the threshold, null/NaN/int/missing scores, system messages, extra fields),
writes them as JSONL, parquet or ``save_to_disk``, and asserts that the plugin's ``DatasetDict`` has
the same splits, the same column types and the same rows in the same order as the frozen copy's;
bad rows are refused with the same message, naming the file and the row.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json
import math
import random
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import multiturn_reference_impl as ref  # noqa: E402

from cruijff_kit._api.kinds import Prompt  # noqa: E402
from cruijff_kit._api.registry import plugin_class  # noqa: E402
from cruijff_kit._base.errors import DataError  # noqa: E402

SPLITS = {"train": 0.7, "validation": 0.2, "test": 0.1}


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def generate(seed: int, convs: int = 60, int_ids: bool = False) -> list[dict[str, Any]]:
    """Varied but valid CollabLLM rows, shuffled so that conversations and turns interleave."""
    rng = random.Random(seed)
    words = ["a", "b", "é", "ß", "日本", "x y", "", "\u00e9\u0301", "tab\tin", "quote\"s"]
    rows = []
    for c in range(convs):
        cid: Any = rng.choice([c, -c, 10 * c + 7]) if int_ids else rng.choice([f"c{c}", f"C{c}", f"é{c}", f"{c}",
                                                                               f"z{c} x", f"{c:03d}"])
        if not int_ids and c % 7 == 0:
            cid = f"dup{c}"
        history = [msg("system", "Sys " + rng.choice(words))] if rng.random() < 0.5 else []
        history.append(msg("user", rng.choice(words)))
        turn_ids = sorted(rng.sample(range(8), rng.randint(1, 4)))
        for t in turn_ids:
            n = rng.randint(1, 4)
            for k in range(n):
                kind = rng.random()
                score: Any
                if kind < 0.1:
                    score = None
                elif kind < 0.15:
                    score = float("nan")
                elif kind < 0.3:
                    score = rng.choice([0, 1])
                elif kind < 0.45:
                    score = 0.5  # ties, at the threshold
                else:
                    score = round(rng.uniform(-0.2, 1.2), rng.choice([1, 3, 17]))
                row: dict[str, Any] = {"prompt": list(history), "completion": rng.choice(words) + str(k),
                                       "conv_id": cid, "turn_id": t,
                                       "rewards": {"accuracy": rng.choice([0, 1, 0.5]), "len": rng.random()},
                                       "single_turn_prompt": "task", "single_turn_metadata": {"k": k}}
                if not (score is None and rng.random() < 0.5):
                    row["score"] = score
                if rng.random() < 0.1:
                    row["prompt"] = [*history[:-1], {**history[-1], "turn_id": t}]  # an extra message field
                rows.append(row)
            history = [*history, msg("assistant", f"best{t}"), msg("user", rng.choice(words))]
            if rng.random() < 0.2:
                history = [*history, msg("system", "mid-conversation system")]
    rng.shuffle(rows)
    return rows


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def make(base: Path, path: str, **options: Any) -> Any:
    cls = plugin_class("dataset", "multiturn")
    return cls(cls.Config.model_validate({"path": path, **options}), base_dir=base)


def assert_same(new: Any, old: Any) -> None:
    """Same splits in the same order, same column types, same rows in the same order."""
    assert list(new) == list(old)
    for split in old:
        assert new[split].features == old[split].features, split
        assert new[split].data.table.schema.remove_metadata() == old[split].data.table.schema.remove_metadata()
        new_rows, old_rows = new[split].to_list(), old[split].to_list()
        assert len(new_rows) == len(old_rows) and new_rows == old_rows, split
        for a, b in zip(new_rows, old_rows, strict=True):  # also bit for bit (-0.0, inf)
            assert repr(a["score"]) == repr(b["score"])


def columnwise(ds: Any, system: str | None) -> bool:
    """Did the plugin build these rows on whole columns (not the row-by-row path)?"""
    return all(isinstance(t, pa.Table) for t in ds._build(system).values())


OPTIONS = [
    {},
    {"threshold": 0.5},
    {"threshold": 0.2, "seed": 7, "splits": SPLITS},
    {"threshold": 1, "threshold_on": "rewards.accuracy", "splits": {"train": 0.5, "test": 0.5}},
    {"threshold": 0.3, "threshold_on": "rewards.len", "splits": {"train": 1.0}},
    {"threshold": -0.1, "splits": {"a": 0.33, "b": 0.0, "c": 0.67}, "seed": 123},
    {"threshold": 1, "threshold_on": "single_turn_metadata.k"},  # whole numbers, compared exactly
    {"threshold": 1.5, "threshold_on": "single_turn_metadata.k", "splits": {"train": 1.0}},
]


@pytest.mark.parametrize("int_ids", [False, True])
@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "save_to_disk"])
def test_columnwise_rows_equal_the_row_by_row_rows(tmp_path: Path, fmt: str, int_ids: bool) -> None:
    rows = generate(seed=len(fmt) + int_ids, int_ids=int_ids)
    if fmt == "jsonl":
        name = write_jsonl(tmp_path / "rows.jsonl", rows).name
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        (tmp_path / "pq").mkdir()
        half = len(rows) // 2
        pq.write_table(pa.Table.from_pylist(rows[:half]), tmp_path / "pq" / "train.parquet")
        pq.write_table(pa.Table.from_pylist(rows[half:]), tmp_path / "pq" / "test.parquet")
        name = "pq"
    else:
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
        name = "saved"
    for options in OPTIONS:
        for system in (None, "Be brief."):
            ds = make(tmp_path, name, **options)
            new = ds.load(Prompt(system=system) if system else None)
            old = ref.load(tmp_path / name, system=system, **options)
            assert_same(new, old)
            assert columnwise(ds, system), (fmt, options)
            assert ds.rows(system) == {s: old[s].to_list() for s in old}  # the rows plan-time checks read


def test_many_turns_and_scores_as_python_adds_them(tmp_path: Path) -> None:
    """Long chains of scores whose sums round differently in another order; a single conversation."""
    rng = random.Random(5)
    rows = []
    for c in range(30):
        for t in range(rng.randint(1, 40)):
            for _ in range(2):
                rows.append({"prompt": [msg("user", f"{c}-{t}")], "completion": str(t), "conv_id": f"c{c}",
                             "turn_id": t, "score": rng.choice([0.1, 0.2, 0.3, 1e16, -1e16, 1 / 3, 2.0 ** -60])})
    write_jsonl(tmp_path / "rows.jsonl", rows)
    one = [r for r in rows if r["conv_id"] == "c1"]
    write_jsonl(tmp_path / "one.jsonl", one)
    for name in ("rows.jsonl", "one.jsonl"):
        for options in ({}, {"threshold": 0.15}, {"threshold": 0.1, "splits": {"train": 1.0}}):
            ds = make(tmp_path, name, **options)
            assert_same(ds.load(None), ref.load(tmp_path / name, **options))
            assert columnwise(ds, None)


# --------------------------------------------------------------------------- the row-by-row path
def valid_rows() -> list[dict[str, Any]]:
    return generate(seed=11, convs=12)


ODD_FILES = {
    # the same rows as Python reads them, where Arrow would read the file otherwise: these take the
    # row-by-row path, whose rows the plugin must still give
    "torn last line": lambda rows: "".join(json.dumps(r) + "\n" for r in rows) + '{"prompt": [{"ro',
    "blank lines": lambda rows: "\n\n".join(json.dumps(r) for r in rows) + "\n\n",
    "a byte-order mark": lambda rows: "\ufeff" + "".join(json.dumps(r) + "\n" for r in rows),
    "a line separator in a string": lambda rows: "".join(
        json.dumps({**r, "completion": r["completion"] + ("\u2028x" if i % 2 else "")}, ensure_ascii=False) + "\n"
        for i, r in enumerate(rows)),
    "two rows on one line": lambda rows: json.dumps(rows[0]) + " " + json.dumps(rows[1]) + "\n" + "".join(
        json.dumps(r) + "\n" for r in rows[2:]),
    "a prompt as text": lambda rows: "".join(json.dumps({**r, "prompt": "plain"}) + "\n" for r in rows),
    "boolean scores": lambda rows: "".join(json.dumps({**r, "score": i % 3 == 0}) + "\n" for i, r in enumerate(rows)),
    "float conv ids": lambda rows: "".join(json.dumps({**r, "conv_id": len(r["conv_id"]) / 2}) + "\n" for r in rows),
    "carriage returns": lambda rows: "".join(json.dumps(r) + "\r\n" for r in rows),
    "JSON-encoded rewards": lambda rows: "".join(json.dumps({**r, "rewards": json.dumps(r["rewards"])}) + "\n"
                                                 for r in rows),
}


@pytest.mark.parametrize("case", sorted(ODD_FILES))
def test_odd_but_readable_files_give_the_same_rows(tmp_path: Path, case: str) -> None:
    (tmp_path / "rows.jsonl").write_text(ODD_FILES[case](valid_rows()), encoding="utf-8")
    built = 0
    for options in ({}, {"threshold": 0.5}, {"threshold": 1, "threshold_on": "rewards.accuracy"}):
        for system in (None, "S"):
            try:
                old = ref.load(tmp_path / "rows.jsonl", system=system, **options)
            except DataError as exc:  # e.g. no candidate passes: the same refusal
                with pytest.raises(DataError) as new_exc:
                    make(tmp_path, "rows.jsonl", **options).load(Prompt(system=system) if system else None)
                assert str(new_exc.value) == str(exc)
                continue
            assert_same(make(tmp_path, "rows.jsonl", **options).load(Prompt(system=system) if system else None), old)
            built += 1
    assert built >= 2


def test_simulation_output_gives_the_same_rows(tmp_path: Path) -> None:
    conv = {"conv_id": "s1", "system": "SYS", "task": {"prompt": "p", "answer": "a", "metadata": {}},
            "messages": [msg("user", "hi"), {**msg("assistant", "hello"), "turn_id": 0}, msg("user", "more"),
                         {**msg("assistant", "sure"), "turn_id": 1}]}
    write_jsonl(tmp_path / "sim.jsonl", [conv, {**conv, "conv_id": "s2"}])
    assert_same(make(tmp_path, "sim.jsonl").load(None), ref.load(tmp_path / "sim.jsonl"))


BAD_ROWS = {
    "missing completion": lambda r: {k: v for k, v in r.items() if k != "completion"},
    "null completion": lambda r: {**r, "completion": None},
    "a role that is not one": lambda r: {**r, "prompt": [msg("robot", "x")]},
    "a message without content": lambda r: {**r, "prompt": [{"role": "user"}]},
    "a null message": lambda r: {**r, "prompt": [None]},
    "score as text": lambda r: {**r, "score": "0.5"},
    "not an object": lambda r: [1, 2],
    "missing conv_id": lambda r: {k: v for k, v in r.items() if k != "conv_id"},
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_rows_are_refused_with_the_same_message(tmp_path: Path, case: str) -> None:
    rows: list[Any] = valid_rows()
    rows[17] = BAD_ROWS[case](rows[17])
    write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError) as new:
        make(tmp_path, "rows.jsonl", threshold=0.5).load(None)
    with pytest.raises(DataError) as old:
        ref.load(tmp_path / "rows.jsonl", threshold=0.5)
    assert str(new.value) == str(old.value)
    assert "rows.jsonl: row 17" in str(new.value)


def test_threshold_errors_are_the_same(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "rows.jsonl", valid_rows())
    for options in ({"threshold": 0.5, "threshold_on": "rewards.acuracy"}, {"threshold": 0.5, "threshold_on": "nope"},
                    {"threshold": 5.0}):
        with pytest.raises(DataError) as new:
            make(tmp_path, "rows.jsonl", **options).load(None)
        with pytest.raises(DataError) as old:
            ref.load(tmp_path / "rows.jsonl", **options)
        assert str(new.value) == str(old.value)


def test_a_turn_id_that_is_no_number_is_refused_naming_row_and_field(tmp_path: Path) -> None:
    rows: list[Any] = valid_rows()
    rows[3] = {**rows[3], "turn_id": "three"}
    write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError, match=r"rows\.jsonl: row 3: `turn_id` must be a whole number"):
        make(tmp_path, "rows.jsonl").load(None)


def test_nan_is_not_a_mean(tmp_path: Path) -> None:
    """A chain whose scores are all null or NaN has score None (a null column where no row has one)."""
    rows = [{"prompt": [msg("user", "q")], "completion": "a", "conv_id": "c", "turn_id": 0, "score": math.nan},
            {"prompt": [msg("user", "q")], "completion": "b", "conv_id": "d", "turn_id": 0}]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    ds = make(tmp_path, "rows.jsonl", splits={"train": 1.0})
    assert_same(ds.load(None), ref.load(tmp_path / "rows.jsonl", splits={"train": 1.0}))
    assert columnwise(ds, None) and ds.rows(None)["train"][0]["score"] is None
