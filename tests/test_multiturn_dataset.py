"""The `multiturn` dataset: CollabLLM rows and simulations -> best conversations, pairs, splits; plan checks."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cruijff_kit._api.kinds import Prompt
from cruijff_kit._api.registry import plugin_class
from cruijff_kit._base.errors import DataError, SpecError


def make(base: Path, **options: Any) -> Any:
    cls = plugin_class("dataset", "multiturn")
    return cls(cls.Config.model_validate({"splits": {"train": 1.0}, **options}), base_dir=base)


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def collab_rows() -> list[dict[str, Any]]:
    """Two conversations in the CollabLLM row form (one row per candidate)."""
    u0, a0, u1 = msg("user", "Fix my essay"), msg("assistant", "Which part?"), msg("user", "The intro")
    rows = []
    for cid, turn, prompt, cands in [
        ("c1", 0, [u0], [("Which part?", 0.9, 1.0), ("Here is a rewrite.", 0.2, 0.0)]),
        ("c1", 1, [u0, a0, u1], [("New intro: ...", 0.8, 1.0), ("Sorry?", 0.1, 0.0), ("Meh", 0.3, 0.0)]),
        ("c1", 2, [u0, a0, u1, msg("assistant", "New intro: ..."), msg("user", "shorter")],
         [("Short intro.", 0.2, 0.0)]),
        ("c2", 0, [msg("user", "Sum 2+2")], [("4", 0.7, 1.0), ("4", 0.5, 1.0)]),
    ]:
        for text, score, acc in cands:
            rows.append({"prompt": prompt, "completion": text, "conv_id": cid, "turn_id": turn, "score": score,
                         "rewards": {"accuracy": acc}, "single_turn_prompt": "task", "single_turn_completion": "ref",
                         "single_turn_metadata": {"k": 1}})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_best_response_per_turn_and_greedy_conversation(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "rows.jsonl", collab_rows())
    ds = make(tmp_path, path="rows.jsonl", threshold=0.5)
    train = ds.load(Prompt(system="Be brief.")).data["train"].to_pylist()
    by = {r["conv_id"]: r for r in train}
    # c1: turns 0 and 1 pass, turn 2's only candidate (0.2) is below the threshold: the chain stops there
    assert by["c1"]["messages"] == [msg("system", "Be brief."), msg("user", "Fix my essay"),
                                    msg("assistant", "Which part?"), msg("user", "The intro"),
                                    msg("assistant", "New intro: ...")]
    assert by["c1"]["turns"] == 2 and by["c1"]["score"] == pytest.approx(0.85)
    assert by["c2"]["messages"][-1] == msg("assistant", "4")
    # no threshold: the chain reaches turn 2; the data's own (absent) system prompt is kept when the run has none
    untouched = {r["conv_id"]: r for r in make(tmp_path, path="rows.jsonl").load(None)["train"].to_list()}
    assert untouched["c1"]["turns"] == 3 and untouched["c1"]["messages"][0]["role"] == "user"
    # a threshold on a named metric: c1's turn 0 best by score (0.9) has accuracy 1, turn 1 too, turn 2 not
    on_metric = make(tmp_path, path="rows.jsonl", threshold=1.0, threshold_on="rewards.accuracy").load(None)
    assert {r["conv_id"]: r["turns"] for r in on_metric["train"].to_list()} == {"c1": 2, "c2": 1}
    with pytest.raises(DataError, match="rewards.accuracy"):
        make(tmp_path, path="rows.jsonl", threshold=1.0, threshold_on="rewards.acuracy").load(None)
    with pytest.raises(DataError, match="no conversations"):
        make(tmp_path, path="rows.jsonl", threshold=0.95).load(None)


def test_preference_pairs(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "rows.jsonl", collab_rows())
    dd = make(tmp_path, path="rows.jsonl", pairs=True, min_gap=0.5).load(Prompt(system="S"))
    rows = dd["train"].to_list()
    got = {(r["conv_id"], r["turn_id"]): (r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows}
    # turn 2 has one candidate, c2's candidates are the same text: no pairs there; gaps 0.7 and 0.7 kept
    assert got == {("c1", 0): ("Which part?", "Here is a rewrite."), ("c1", 1): ("New intro: ...", "Sorry?")}
    first = next(r for r in rows if r["turn_id"] == 1)
    assert first["prompt"][0] == msg("system", "S") and first["prompt"][-1] == msg("user", "The intro")
    assert first["messages"] == [*first["prompt"], *first["chosen"]]
    assert set(dd["train"].column_names) >= {"prompt", "chosen", "rejected"}
    with pytest.raises(DataError, match="min_gap"):
        make(tmp_path, path="rows.jsonl", pairs=True, min_gap=0.75).load(None)


def test_splits_are_by_conversation_and_seeded(tmp_path: Path) -> None:
    rows = []
    for c in range(20):
        for t in range(2):
            rows.append({"prompt": [msg("user", f"q{c}-{t}")], "completion": f"a{c}-{t}", "conv_id": c, "turn_id": t,
                         "score": 1.0})
    write_jsonl(tmp_path / "rows.jsonl", rows)
    fractions = {"train": 0.7, "validation": 0.15, "test": 0.15}
    a = make(tmp_path, path="rows.jsonl", splits=fractions, seed=1).load(None)
    b = make(tmp_path, path="rows.jsonl", splits=fractions, seed=1).load(None)
    c = make(tmp_path, path="rows.jsonl", splits=fractions, seed=2).load(None)
    ids = {s: a[s]["conv_id"] for s in a}
    assert {s: len(v) for s, v in ids.items()} == {"train": 14, "validation": 3, "test": 3}
    assert not set(ids["train"]) & set(ids["test"]) and ids == {s: b[s]["conv_id"] for s in b}
    assert ids != {s: c[s]["conv_id"] for s in c}
    pairs_split = make(tmp_path, path="rows.jsonl", splits=fractions, seed=1, pairs=False).load(None)
    assert pairs_split["test"]["conv_id"] == ids["test"]
    with pytest.raises(ValueError, match="add up to 1"):
        make(tmp_path, path="rows.jsonl", splits={"train": 0.5})


def test_reads_save_to_disk_and_simulation_output(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list(collab_rows()).save_to_disk(str(tmp_path / "saved"))
    dd = make(tmp_path, path="saved", threshold=0.5).load(None)
    assert sorted(dd["train"]["conv_id"]) == ["c1", "c2"]
    # the JSONL `ck simulate` writes: unscored turns keep every assistant message
    conv = {"conv_id": "s1", "system": "SYS", "task": {"prompt": "p", "answer": "a", "metadata": {}},
            "messages": [msg("user", "hi"), {**msg("assistant", "hello"), "turn_id": 0},
                         {**msg("user", "bye [[TERMINATE CHAT]]"), "thought": "t", "current_answer": ""}]}
    write_jsonl(tmp_path / "sim.jsonl", [conv])
    (tmp_path / "sim.jsonl").open("a").write('{"conv_id": "torn", "mess')  # an interrupted append
    rows = make(tmp_path, path="sim.jsonl").load(None)["train"].to_list()
    assert rows == [{"messages": [msg("system", "SYS"), msg("user", "hi"), msg("assistant", "hello")],
                     "conv_id": "s1", "turns": 1, "score": None}]
    with pytest.raises(DataError, match="ck simulate"):
        make(tmp_path, path="missing.jsonl").load(None)
    with pytest.raises(DataError, match="completion"):
        write_jsonl(tmp_path / "bad.jsonl", [{"prompt": [msg("user", "x")], "conv_id": 1, "turn_id": 0}])
        make(tmp_path, path="bad.jsonl").load(None)


def test_plan_time_truncation_check(tmp_path: Path, tiny_llama: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.spec import load_spec

    long = " ".join(["word"] * 300)
    rows = [{"prompt": [msg("user", f"q{c}")], "completion": long if c < 3 else "short", "conv_id": c,
             "turn_id": 0, "score": 1.0} for c in range(10)]
    write_jsonl(tmp_path / "rows.jsonl", rows)

    def spec(max_len: int, objective: str = "sft", **dataset: Any) -> Path:
        data = {"experiment": "mt", "model": {"path": str(tiny_llama)},
                "dataset": {"plugin": "multiturn", "path": "rows.jsonl", "splits": {"train": 0.8, "validation": 0.2},
                            **dataset},
                "train": {"plugin": "trl", "max_seq_length": max_len, "objective": objective}}
        p = tmp_path / "spec.yaml"
        p.write_text(yaml.safe_dump(data))
        return p

    with pytest.raises(SpecError) as info:
        make_plan(load_spec(spec(128)))
    assert "3 of 10 training conversations" in str(info.value) and "max_seq_length = 128" in str(info.value)
    make_plan(load_spec(spec(128, on_truncation="warn")))
    assert "3 of 10" in capsys.readouterr().err
    make_plan(load_spec(spec(2048)))
    # preference pairs: the longer of prompt+chosen and prompt+rejected counts; dpo needs pairs
    pair_rows = [{**r, "turn_id": 0, "completion": text, "score": score} for r in rows
                 for text, score in ((r["completion"], 1.0), ("no", 0.0))]
    write_jsonl(tmp_path / "rows.jsonl", pair_rows)
    with pytest.raises(SpecError, match="3 of 10 training preference pairs"):
        make_plan(load_spec(spec(128, objective="dpo", pairs=True)))
    with pytest.raises(SpecError, match="dataset.pairs: true"):
        make_plan(load_spec(spec(2048, objective="dpo")))
    with pytest.raises(SpecError, match="packing applies to objective sft only"):
        p = spec(2048, objective="dpo", pairs=True)
        p.write_text(p.read_text().replace("objective: dpo", "objective: dpo\n  packing: true"))
        make_plan(load_spec(p))
    make_plan(load_spec(spec(2048, objective="dpo", pairs=True)))
