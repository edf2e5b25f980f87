"""The `tabular` dataset plugin inside an experiment: plan-time checks, cached generation, canonical rows,
and the shipped example spec."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
from data_tools_fixtures import CENSUS

from cruijff_kit._base.errors import SpecError
from cruijff_kit._engine.planner import make_plan
from cruijff_kit._engine.spec import load_spec
from cruijff_kit.data import _provenance as provenance

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tabular-classifier.yaml"

DATASET = """
dataset:
  plugin: tabular
  source: data/census.csv
  schema_file: data/census.schema.yaml
  target: {column: income, threshold: 50000}
  question: Above 50,000 dollars? Answer 1 or 0.
  context: {text: Survey respondent., placement: system}
  splits: {train: 0.8, test: 0.2}
  subsample: {train: 40, test: 10}
  seed: 3
"""


def write_spec(folder: Path, dataset: str = DATASET, extra: str = "") -> Path:
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name in ("census.csv", "census.schema.yaml", "person.j2"):
        shutil.copy(CENSUS / name, data / name)
    spec = folder / "spec.yaml"
    spec.write_text(textwrap.dedent("""
        experiment: tab
        output_dir: runs
        model: {path: models/none}
        prompt: {system: Answer with one digit.}
        eval:
          - {plugin: inspect, task: exact-match, split: test}
        scheduler: {plugin: local}
        """) + textwrap.dedent(dataset) + extra)
    return spec


def plan_of(spec: Path) -> Any:
    return make_plan(load_spec(spec))


def test_the_plugin_is_registered_with_its_command(ck: Any) -> None:
    res = ck("plugins", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["plugins"]
    assert any(r.get("kind") == "dataset" and r.get("name") == "tabular" for r in rows), rows
    helptext = ck("data", "--help").stdout
    for command in ("tabular", "synthetic", "inspect", "capitalize"):
        assert command in helptext


def test_load_generates_once_into_the_cache_beside_the_spec(tmp_path: Path) -> None:
    run = plan_of(write_spec(tmp_path)).runs[0]
    ds = run.dataset()
    assert ds.splits() == ["train", "test"]
    assert ds.describe() == {}  # nothing generated at plan time
    assert not (tmp_path / ".ck-cache").exists()
    dd = ds.load(run.spec["prompt"])
    assert {s: len(dd[s]) for s in dd} == {"train": 40, "test": 10}
    row = dd["train"][0]
    assert row["messages"][0] == {"role": "system", "content": "Survey respondent.\n\nAnswer with one digit."}
    assert row["messages"][1]["content"] == row["input"] and row["input"].startswith("The age is: ")
    assert row["messages"][2] == {"role": "assistant", "content": row["output"]}
    assert isinstance(row["row"], int)
    files = sorted(p.name for p in (tmp_path / ".ck-cache").iterdir() if not p.name.startswith("."))
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".meta.json")
    generated = tmp_path / ".ck-cache" / files[0]
    stamp = generated.stat().st_mtime_ns
    assert ds.describe() == {"rows": {"train": 40, "test": 10}}
    run.dataset().load(None)
    assert generated.stat().st_mtime_ns == stamp  # reused, not regenerated
    meta = provenance.read_meta(generated)
    assert meta is not None and meta["system_prompt"] == "Survey respondent."
    assert meta["source"]["sha256"] == provenance.sha256_file(tmp_path / "data" / "census.csv")


def test_cache_dir_option(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, DATASET + "  cache_dir: generated/here\n")
    plan_of(spec).runs[0].dataset().load(None)
    assert len(list((tmp_path / "generated" / "here").glob("tabular-*.meta.json"))) == 1


@pytest.mark.parametrize(("change", "words"), [
    (("column: income", "column: incme"), ["target.column `incme`", "Did you mean `income`?"]),
    (("source: data/census.csv", "source: data/nothing.csv"), ["nothing.csv does not exist"]),
    (("splits: {train: 0.8, test: 0.2}\n  subsample: {train: 40, test: 10}", "splits: {train: 0.8, dev: 0.2}"),
     ["eval[0] reads split `test`"]),
    (("  seed: 3", "  seed: 3\n  template: {kind: narrative, file: data/missing.j2}"), ["missing.j2"]),
])
def test_plan_time_errors_name_the_spec_and_the_field(tmp_path: Path, change: tuple[str, str],
                                                       words: list[str]) -> None:
    spec = write_spec(tmp_path, DATASET.replace(*change))
    with pytest.raises(SpecError) as info:
        plan_of(spec)
    msg = str(info.value)
    assert str(spec) in msg and "`dataset`" in msg
    for w in words:
        assert w in msg, msg


def test_bad_option_is_a_spec_error_with_its_yaml_path(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, DATASET.replace("  seed: 3", "  seed: 3\n  perturb: {synonym: 0.2}"))
    with pytest.raises(SpecError) as info:
        plan_of(spec)
    assert "dataset.perturb.synonym" in str(info.value) and "Did you mean `synonyms`?" in str(info.value)


def test_the_example_spec_validates(ck: Any, tmp_path: Path) -> None:
    # the model by its hub id: the example's local folder exists only after `make demo`
    res = ck("validate", str(EXAMPLE), "--set", "model.path=HuggingFaceTB/SmolLM2-135M-Instruct", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid. 1 run(s), 4 stage(s)" in res.stdout
    spec = load_spec(EXAMPLE)
    section = spec.raw["eval"][0]
    assert [s["name"] for s in section["scorers"]] == ["risk", "classification"]
    assert spec.raw["dataset"]["plugin"] == "tabular"
