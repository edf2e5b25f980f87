"""Each run's resolved ``spec.yaml`` keeps a parsed copy beside it (``.spec.yaml.parsed.json``), so that
``ck status`` of a large experiment does not parse 1,000 YAML files; the YAML stays the record: an edit
of it, a copy cut short or data JSON cannot hold are all read from the YAML itself."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import yaml
from conftest import write_spec

from cruijff_kit._base.fileio import atomic_write_yaml, keep_parsed_copy, load_written_yaml, parsed_copy_of

SPEC = """
experiment: copies
model: {path: some-org/some-model}
dataset: {plugin: toy-data}
train: {plugin: toy, epochs: 1, steps_per_epoch: 2}
eval:
  - {plugin: toy-eval, task: exact, checkpoints: last, include_base: false}
sweep:
  train.lora.rank: [4, 8]
"""


def plan_and_write(tmp_path: Path):  # type: ignore[no-untyped-def]
    from cruijff_kit.engine import load_spec, make_plan, write_experiment

    plan = make_plan(load_spec(write_spec(tmp_path, SPEC)))
    write_experiment(plan)
    return plan


def test_a_written_run_has_a_parsed_copy_equal_to_its_yaml(tmp_path: Path, with_toy: Path) -> None:
    plan = plan_and_write(tmp_path)
    for run in plan.runs:
        copy = json.loads(parsed_copy_of(run.layout.spec).read_text())
        assert copy["data"] == yaml.safe_load(run.layout.spec.read_text())  # an independent reader


def test_the_copy_is_what_is_read_while_it_matches_the_yaml(tmp_path: Path, with_toy: Path) -> None:
    from cruijff_kit._engine.stage import load_run

    run = plan_and_write(tmp_path).runs[0]
    copy_file = parsed_copy_of(run.layout.spec)
    copy = json.loads(copy_file.read_text())
    copy["data"]["run"]["name"] = "read-from-the-copy"  # the same YAML bytes, so the copy still matches
    copy_file.write_text(json.dumps(copy))
    assert load_run(run.layout.root).name == "read-from-the-copy"


def test_an_edited_yaml_is_read_not_its_stale_copy(tmp_path: Path, with_toy: Path) -> None:
    from cruijff_kit._engine.stage import load_run

    run = plan_and_write(tmp_path).runs[0]
    text = run.layout.spec.read_text()
    assert "steps_per_epoch: 2" in text
    run.layout.spec.write_text(text.replace("steps_per_epoch: 2", "steps_per_epoch: 7"))
    assert load_run(run.layout.root).spec["train"]["steps_per_epoch"] == 7


def test_a_copy_cut_short_or_damaged_falls_back_to_the_yaml(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    data = {"run": {"name": "r"}, "train": {"lr": 0.0002, "targets": ["q_proj", "v_proj"]}}
    atomic_write_yaml(path, data, parsed_copy=True)
    copy_file = parsed_copy_of(path)
    whole = copy_file.read_bytes()
    for damaged in (whole[: len(whole) // 2], b"", b"\x00\xff", b'["a list"]', b'{"sha256": "0", "data": 1}'):
        copy_file.write_bytes(damaged)
        assert load_written_yaml(path) == data


def test_data_json_cannot_give_back_gets_no_copy(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    for data in ({"when": datetime.date(2026, 12, 3)}, {1: "int key"}, {"x": float("nan")}, {"x": float("inf")}):
        atomic_write_yaml(path, {"keep": True}, parsed_copy=True)
        assert parsed_copy_of(path).exists()
        atomic_write_yaml(path, data, parsed_copy=True)
        assert not parsed_copy_of(path).exists()  # an older copy is not left behind either
        got = load_written_yaml(path)
        assert list(got) == list(data) and type(next(iter(got.values()))) is type(next(iter(data.values())))


def test_ck_run_gives_runs_written_without_a_copy_one(tmp_path: Path, with_toy: Path) -> None:
    plan = plan_and_write(tmp_path)
    for run in plan.runs:
        parsed_copy_of(run.layout.spec).unlink()
    before = {run.layout.spec: run.layout.spec.read_bytes() for run in plan.runs}
    plan_and_write(tmp_path)
    for spec, raw in before.items():
        assert spec.read_bytes() == raw  # the run spec itself is not rewritten
        copy = json.loads(parsed_copy_of(spec).read_text())["data"]
        assert json.dumps(copy) == json.dumps(yaml.safe_load(raw))  # values, types and key order


def test_a_copy_made_for_an_existing_yaml_holds_what_that_yaml_says(tmp_path: Path) -> None:
    # Values a plan compares equal to (1 == 1.0 == True, keys in another order) are not what the YAML
    # holds: the copy is parsed from the very bytes it is keyed by.
    path = tmp_path / "spec.yaml"
    path.write_text("b: {lr: 1.0, flag: true}\na: [1]\n")
    keep_parsed_copy(path)
    got = load_written_yaml(path)
    assert json.dumps(got) == json.dumps({"b": {"lr": 1.0, "flag": True}, "a": [1]})
