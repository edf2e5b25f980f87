"""`ck data synthetic`: rule-learning tasks over bits, digits and letters; designs, formats, seeds, hashes."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from cruijff_kit._base.errors import DataError
from cruijff_kit.data import _provenance as provenance
from cruijff_kit.data._synthetic import (
    ALPHABETS,
    RULES,
    SEPARATORS,
    apply_rule,
    generate,
    settings_from,
    write_synthetic,
)


def settings(**options: Any) -> Any:
    return settings_from({"n_train": 20, "n_validation": 5, "n_test": 5, **options})


def answer(seq: str, **options: Any) -> str:
    return apply_rule(settings(**options), seq, random.Random(0))


@pytest.mark.parametrize(("seq", "options", "expected"), [
    ("1101", {"rule": "parity", "k": 4}, "1"),
    ("1001", {"rule": "parity", "k": 4}, "0"),
    ("3825", {"rule": "parity", "alphabet": "digits", "k": 4}, "0"),
    ("abd", {"rule": "parity", "alphabet": "letters", "k": 3}, "0"),  # 0 + 1 + 3
    ("7351", {"rule": "first", "alphabet": "digits", "k": 4}, "7"),
    ("7351", {"rule": "last", "alphabet": "digits", "k": 4}, "1"),
    ("qwer", {"rule": "nth", "position": 2, "alphabet": "letters", "k": 4}, "e"),
    ("0110101", {"rule": "length", "k": 3, "k_max": 8}, "7"),
    ("0110", {"rule": "constant", "value": "yes", "k": 4}, "yes"),
    ("0110", {"rule": "majority", "k": 4}, "0"),  # tie: first in the alphabet
    ("0111", {"rule": "majority", "k": 4}, "1"),
    ("zbza", {"rule": "majority", "alphabet": "letters", "k": 4}, "z"),
    ("7351", {"rule": "min", "alphabet": "digits", "k": 4}, "1"),
    ("dzqa", {"rule": "max", "alphabet": "letters", "k": 4}, "z"),
    ("1011", {"rule": "weighted-sum", "k": 4, "weights": [1, 2, 3, 4]}, "8"),
    ("1011", {"rule": "weighted-sum", "k": 4, "weights": [1, 2, 3, 4], "threshold": 8}, "0"),
    ("1111", {"rule": "weighted-sum", "k": 4, "weights": [1, 2, 3, 4], "threshold": 8}, "1"),
    ("294", {"rule": "weighted-sum", "alphabet": "digits", "k": 3, "weights": [0.5, 1, -1]}, "6"),
    ("29", {"rule": "weighted-sum", "alphabet": "digits", "k": 2}, "11"),  # default weights 1
])
def test_rules(seq: str, options: dict[str, Any], expected: str) -> None:
    assert answer(seq, **options) == expected


def test_coin_answers_ignore_the_input_and_follow_p() -> None:
    data = generate(settings(rule="coin", p=0.8, n_train=500, n_validation=0, n_test=0, k=12))
    share = sum(r["output"] == "1" for r in data["train"]) / 500
    assert 0.74 < share < 0.86
    assert {r["output"] for r in generate(settings(rule="coin", p=0.0))["train"]} == {"0"}


def test_every_rule_generates_with_every_alphabet() -> None:
    for alphabet in ALPHABETS:
        for rule in RULES:
            data = generate(settings(alphabet=alphabet, rule=rule, k=6))
            assert [len(data[s]) for s in ("train", "validation", "test")] == [20, 5, 5]
            assert all(r["output"] for part in data.values() for r in part)


def test_formats_join_the_symbols() -> None:
    for fmt, sep in SEPARATORS.items():
        row = generate(settings(format=fmt, k=5))["train"][0]
        assert len(row["input"]) == 5 + 4 * len(sep)
        assert row["input"].replace(sep, "") if sep else True
        if sep:
            assert row["input"].split(sep) == list(row["input"].replace(sep, ""))
    with_instruction = generate(settings(instruction="Parity of:", k=5))["train"][0]["input"]
    assert with_instruction.startswith("Parity of:\n") and len(with_instruction.split("\n")[1]) == 9


def test_designs() -> None:
    mem = generate(settings(design="memorization", rule="coin", k=12))
    assert mem["validation"] == mem["train"] == mem["test"]
    ind = generate(settings(k=12))
    inputs = [{r["input"] for r in ind[s]} for s in ("train", "validation", "test")]
    assert sum(map(len, inputs)) == 30 and len(set().union(*inputs)) == 30  # distinct, disjoint
    ood = generate(settings(design="out-of-distribution", k=6, ood_lengths=[9, 12], n_ood=7))
    assert list(ood) == ["train", "validation", "test", "validation_ood_0", "validation_ood_1"]
    assert {len(r["input"].split()) for r in ood["train"]} == {6}
    assert {len(r["input"].split()) for r in ood["validation_ood_0"]} == {9}
    assert {len(r["input"].split()) for r in ood["validation_ood_1"]} == {12}
    assert len(ood["validation_ood_1"]) == 7
    variable = generate(settings(rule="length", k=3, k_max=6, n_train=100, n_validation=0, n_test=0))
    assert {r["output"] for r in variable["train"]} == {"3", "4", "5", "6"}


def test_all_sequences_can_be_used_but_not_more() -> None:
    data = generate(settings(k=4, n_train=10, n_validation=3, n_test=3))
    assert len({r["input"] for part in data.values() for r in part}) == 16
    with pytest.raises(DataError) as info:
        generate(settings(k=4, n_train=10, n_validation=3, n_test=4))
    assert "only" in str(info.value) and "Ask for fewer rows" in str(info.value)


def test_bad_settings_name_the_setting() -> None:
    for bad, words in (({"rule": "parityy"}, "`rule`"), ({"rule": "nth", "position": 5, "k": 4}, "position 5"),
                       ({"design": "out-of-distribution"}, "needs ood_lengths"),
                       ({"weights": [1, 2]}, "weighted-sum only"),
                       ({"rule": "weighted-sum", "weights": [1, 2], "k": 4}, "one weight per position"),
                       ({"k": 0}, "`k`"), ({"k": 5, "k_max": 3}, "k_max")):
        with pytest.raises(DataError) as info:
            settings(**bad)
        assert words in str(info.value), (bad, str(info.value))
        assert str(info.value).startswith("ck data synthetic: ")


def test_seeded_byte_identical_and_hashed(tmp_path: Path) -> None:
    s = settings(rule="majority", alphabet="digits", k=7, design="out-of-distribution", ood_lengths=[9])
    a, reused_a = write_synthetic(tmp_path / "a", s)
    b, _ = write_synthetic(tmp_path / "b", s)
    assert not reused_a and a.name == b.name and a.read_bytes() == b.read_bytes()
    assert provenance.sidecar_path(a).read_bytes() == provenance.sidecar_path(b).read_bytes()
    again, reused = write_synthetic(tmp_path / "a", s)
    assert reused and again == a
    names = {a.name}
    for change in ({"seed": 1}, {"k": 8}, {"format": "dense"}, {"rule": "max"}, {"n_train": 21},
                   {"ood_lengths": [10]}):
        path, _ = write_synthetic(tmp_path / "c", settings(**{**s.model_dump(), **change}))
        names.add(path.name)
    assert len(names) == 7
    meta = json.loads(provenance.sidecar_path(a).read_text())
    assert meta["settings"] == s.model_dump(mode="json")
    assert meta["generator"] == {"name": "synthetic", "version": 1} and meta["seed"] == s.seed
    assert meta["rows"] == {"train": 20, "validation": 5, "test": 5, "validation_ood_0": 50}
    assert meta["lengths"]["validation_ood_0"] == [9]
    assert a.name == f"synthetic-{meta['key']}.json"
    explicit, _ = write_synthetic(tmp_path / "named.json", s)
    assert explicit == tmp_path / "named.json" and explicit.read_bytes() == a.read_bytes()
    assert (tmp_path / "named.meta.json").exists()


def test_generated_file_reads_as_json_instruct(tmp_path: Path) -> None:
    from cruijff_kit.data._readers import InstructFile

    path, _ = write_synthetic(tmp_path, settings(design="out-of-distribution", k=5, ood_lengths=[7]))
    source = InstructFile(path)
    assert source.split_names() == ["train", "validation", "test", "validation_ood_0"]
    assert source.rows("validation_ood_0").rows[0]["output"] in ("0", "1")


def test_ck_data_synthetic_command(tmp_path: Path, ck: Any) -> None:
    res = ck("data", "synthetic", str(tmp_path), "--rule", "weighted-sum", "--k", "4", "--weights", "1,2,3,4,1",
             "--threshold", "5", "--train", "8", "--validation", "2", "--test", "2", "--design",
             "out-of-distribution", "--ood-lengths", "5", "--ood", "3", "--format", "pipe", "--seed", "3")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("Wrote ") and "validation_ood_0 3" in res.stdout
    (path,) = [p for p in tmp_path.glob("synthetic-*.json") if not p.name.endswith(".meta.json")]
    data = json.loads(path.read_text())
    assert all("|" in r["input"] and r["output"] in ("0", "1") for r in data["train"])
    again = ck("data", "synthetic", str(tmp_path), "--rule", "weighted-sum", "--k", "4", "--weights", "1,2,3,4,1",
               "--threshold", "5", "--train", "8", "--validation", "2", "--test", "2", "--design",
               "out-of-distribution", "--ood-lengths", "5", "--ood", "3", "--format", "pipe", "--seed", "3")
    assert again.stdout.startswith("Reused ")
    bad = ck("data", "synthetic", str(tmp_path), "--rule", "nth", "--position", "12", "--k", "4")
    assert bad.returncode == 2 and "position 12" in bad.stderr and "Traceback" not in bad.stderr
    bad = ck("data", "synthetic", str(tmp_path), "--weights", "1,x")
    assert bad.returncode == 2 and "--weights" in bad.stderr
