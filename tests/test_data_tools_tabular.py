"""`ck data tabular`: tables (CSV, TSV, parquet, Stata, Excel) rendered as instruct rows by a schema,
seeded splits, balancing, perturbations, content-hash names with a provenance sidecar, clear errors."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from data_tools_fixtures import CENSUS, CSV, DTA, PARQUET, SCHEMA, TEMPLATE, build, options, splits_of

from cruijff_kit._base.errors import DataError
from cruijff_kit.data import _provenance as provenance


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def error_of(tmp_path: Path, **changes: Any) -> str:
    with pytest.raises(DataError) as info:
        build(tmp_path / "out", **changes)
    return str(info.value)


# --------------------------------------------------------------------------- formats
def test_csv_dta_parquet_tsv_and_excel_give_the_same_rows(tmp_path: Path) -> None:
    import pandas as pd

    tsv = tmp_path / "census.tsv"
    pd.read_csv(CSV, dtype=object, keep_default_na=False).to_csv(tsv, sep="\t", index=False)
    xlsx = tmp_path / "census.xlsx"
    pd.read_csv(CSV).to_excel(xlsx, index=False)
    results = {}
    for name, src in {"csv": CSV, "dta": DTA, "parquet": PARQUET, "tsv": tsv, "xlsx": xlsx}.items():
        built = build(tmp_path / name, source=str(src))
        results[name] = splits_of(built.path)
        assert built.meta["source"]["sha256"] == sha(src)
    reference = results["csv"]
    assert {k: v == reference for k, v in results.items()} == dict.fromkeys(results, True)
    first = reference["train"][0]["input"]
    assert "The age is: " in first and " years." in first
    assert "The sex is: male." in first or "The sex is: female." in first
    assert first.endswith("Is the yearly income above 50,000 dollars? Answer 1 or 0.")
    assert set(reference) == {"train", "validation", "test"}


def test_sas_transport_file_gives_the_same_rows_as_csv(tmp_path: Path) -> None:
    """SAS names have at most 8 characters: the same table with short names, as CSV and as .xpt."""
    import pandas as pd
    from data_tools_fixtures import write_xport

    short = {"person_id": "pid", "education": "educ", "marital_status": "marital", "occupation": "occup",
             "hours_per_week": "hours"}
    df = pd.read_csv(CSV).rename(columns=short)
    df.to_csv(tmp_path / "short.csv", index=False)
    xpt = write_xport(tmp_path / "short.xpt", df)
    schema = SCHEMA.read_text()
    for long, name in short.items():
        schema = schema.replace(f"  {long}:\n", f"  {name}:\n")
    (tmp_path / "short.schema.yaml").write_text(schema)
    csv_built = build(tmp_path / "c", base_dir=tmp_path, source="short.csv", schema_file="short.schema.yaml")
    sas_built = build(tmp_path / "s", base_dir=tmp_path, source="short.xpt", schema_file="short.schema.yaml")
    assert sas_built.meta["source"]["format"] == "sas" and sas_built.meta["source"]["sha256"] == sha(xpt)
    assert splits_of(sas_built.path) == splits_of(csv_built.path)
    assert splits_of(csv_built.path)["test"] == splits_of(build(tmp_path / "o").path)["test"]


def test_a_csv_with_codes_missing_and_blank_cells(tmp_path: Path) -> None:
    """Missing target (-9, blank) rows are dropped; a blank `fill` feature shows its fill text."""
    built = build(tmp_path / "o")
    counts = built.meta["counts"]
    raw = CSV.read_text().splitlines()[1:]
    minus9 = sum(1 for line in raw if line.endswith(",-9"))
    assert counts["source_rows"] == 200 and counts["dropped_missing_target"] == minus9 > 0
    assert counts["kept"] == 200 - minus9
    rows = [r for part in splits_of(built.path).values() for r in part]
    blank_hours = {i for i, line in enumerate(raw) if line.split(",")[6] == "" and not line.endswith(",-9")}
    assert blank_hours, "the fixture has blank hours"
    for r in rows:
        has_fill = "The usual hours worked per week is: not reported." in r["input"]
        assert has_fill == (r["row"] in blank_hours)


# --------------------------------------------------------------------------- determinism and provenance
def test_same_inputs_give_byte_identical_files_and_the_same_hash(tmp_path: Path) -> None:
    a = build(tmp_path / "a")
    b = build(tmp_path / "b")
    assert a.path.name == b.path.name and a.meta["key"] == b.meta["key"]
    assert a.path.read_bytes() == b.path.read_bytes()
    assert provenance.sidecar_path(a.path).read_bytes() == provenance.sidecar_path(b.path).read_bytes()
    again = build(tmp_path / "a")
    assert again.reused and again.path == a.path
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if not p.name.startswith(".")) == [
        a.path.name, provenance.sidecar_path(a.path).name]


def test_any_changed_input_gives_a_new_hash(tmp_path: Path) -> None:
    base = build(tmp_path / "base").meta["key"]
    keys = {"base": base}
    keys["seed"] = build(tmp_path / "seed", seed=8).meta["key"]
    keys["question"] = build(tmp_path / "q", question="Above 50k?").meta["key"]
    keys["threshold"] = build(tmp_path / "t", target={"column": "income", "threshold": 40000}).meta["key"]
    keys["perturb"] = build(tmp_path / "p", perturb={"synonyms": 0.5}).meta["key"]
    # one byte more in the source, the schema, or the template
    src = tmp_path / "census.csv"
    src.write_text(CSV.read_text() + "\n")
    keys["source"] = build(tmp_path / "s", source=str(src)).meta["key"]
    schema = tmp_path / "census.schema.yaml"
    schema.write_text(SCHEMA.read_text() + "\n# changed\n")
    keys["schema"] = build(tmp_path / "sc", schema_file=str(schema)).meta["key"]
    narrative = {"kind": "narrative", "file": str(TEMPLATE)}
    keys["narrative"] = build(tmp_path / "n", template=narrative).meta["key"]
    template = tmp_path / "person.j2"
    template.write_text(TEMPLATE.read_text() + " ")
    keys["template"] = build(tmp_path / "tp", template={"kind": "narrative", "file": str(template)}).meta["key"]
    assert len(set(keys.values())) == len(keys), keys
    # moving the same files elsewhere keeps the hash: only contents count
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in (CSV, SCHEMA):
        shutil.copy(f, moved / f.name)
    same = build(tmp_path / "m", base_dir=moved, source="census.csv", schema_file="census.schema.yaml")
    assert same.meta["key"] == base


def test_the_sidecar_records_inputs_counts_seed_and_settings(tmp_path: Path) -> None:
    built = build(tmp_path / "o", template={"kind": "narrative", "file": "person.j2"})
    meta = json.loads(provenance.sidecar_path(built.path).read_text())
    assert built.path.name == f"tabular-{meta['key']}.json"
    assert meta["source"] == {"path": str(CSV), "sha256": sha(CSV), "format": "csv"}
    assert meta["schema"] == {"path": str(SCHEMA), "sha256": sha(SCHEMA)}
    assert meta["template"] == {"path": str(TEMPLATE), "sha256": sha(TEMPLATE)}
    assert meta["sha256"] == sha(built.path)
    data = splits_of(built.path)
    assert meta["rows"] == {s: len(r) for s, r in data.items()}
    assert meta["seed"] == 7 and meta["settings"]["seed"] == 7
    assert meta["settings"]["target"]["threshold"] == 50000
    assert meta["generator"] == {"name": "tabular", "version": 1}
    assert meta["privacy"] == {"rows_left_machine": False, "steps": []}
    assert meta["labels"] == ["0", "1"]
    for split, rows in data.items():
        assert meta["classes"][split] == dict(sorted(Counter(r["output"] for r in rows).items()))


# --------------------------------------------------------------------------- splits, balance, subsample
def test_splits_are_disjoint_sized_by_share_and_stratified(tmp_path: Path) -> None:
    built = build(tmp_path / "o", splits={"train": 0.5, "validation": 0.25, "test": 0.25})
    data = splits_of(built.path)
    ids = {s: [r["row"] for r in rows] for s, rows in data.items()}
    assert sum(len(v) for v in ids.values()) == len(set().union(*map(set, ids.values()))) == built.meta["counts"]["kept"]
    kept = built.meta["counts"]["kept"]
    for split, share in (("train", 0.5), ("validation", 0.25), ("test", 0.25)):
        assert abs(len(ids[split]) - share * kept) <= 2
    overall = built.meta["source_classes"]["1"] / kept
    for split, rows in data.items():
        share = sum(r["output"] == "1" for r in rows) / len(rows)
        assert abs(share - overall) < 0.03, (split, share, overall)
    other_seed = splits_of(build(tmp_path / "s", seed=99, splits={"train": 0.5, "validation": 0.25,
                                                                   "test": 0.25}).path)
    assert [r["row"] for r in other_seed["test"]] != ids["test"]


def test_balancing_downsamples_majority_answers_in_the_named_splits(tmp_path: Path) -> None:
    plain = build(tmp_path / "p")
    built = build(tmp_path / "b", balance=["train"])
    train = Counter(r["output"] for r in splits_of(built.path)["train"])
    assert train["0"] == train["1"] == plain.meta["classes"]["train"]["0"]
    assert splits_of(built.path)["test"] == splits_of(plain.path)["test"]  # other splits untouched
    assert built.meta["split_rows"]["train"]["kept"] == 2 * train["0"] < built.meta["split_rows"]["train"]["split"]
    every = build(tmp_path / "e", balance=True)
    for split, counts in every.meta["classes"].items():
        assert len(set(counts.values())) == 1, (split, counts)


def test_subsampling_caps_rows_per_split(tmp_path: Path) -> None:
    built = build(tmp_path / "o", subsample={"train": 25, "test": 10})
    assert built.meta["rows"] == {"train": 25, "validation": 20, "test": 10}
    everywhere = build(tmp_path / "a", subsample=5)
    assert set(everywhere.meta["rows"].values()) == {5}


# --------------------------------------------------------------------------- templates and perturbations
def test_dictionary_template_line_separator_and_missing_skip(tmp_path: Path) -> None:
    schema = tmp_path / "schema.yaml"
    schema.write_text(SCHEMA.read_text().replace("    missing: fill\n    fill: not reported\n", ""))
    built = build(tmp_path / "o", schema_file=str(schema), features=["age", "hours_per_week"], question=None,
                  template={"line": "{name}={value}", "separator": "; "})
    rows = [r for part in splits_of(built.path).values() for r in part]
    full = [r["input"] for r in rows if ";" in r["input"]]
    assert full and all(t.startswith("age=") and "; usual hours worked per week=" in t for t in full)
    skipped = [r["input"] for r in rows if ";" not in r["input"]]
    assert skipped and all(t.startswith("age=") and t.endswith(" years") for t in skipped)


def test_narrative_template_renders_each_row(tmp_path: Path) -> None:
    built = build(tmp_path / "o", template={"kind": "narrative", "file": "person.j2"}, question=None)
    row = splits_of(built.path)["train"][0]
    assert row["input"].startswith("This person is ") and " years old and " in row["input"]
    assert row["input"].endswith(".")
    assert "{{" not in row["input"] and "None" not in row["input"]


def test_perturbations_are_seeded_and_only_where_asked(tmp_path: Path) -> None:
    perturb = {"synonyms": 1.0, "shuffle": "row", "copies": {"train": 3}, "splits": ["train"]}
    a = build(tmp_path / "a", perturb=perturb)
    b = build(tmp_path / "b", perturb=perturb)
    assert a.path.read_bytes() == b.path.read_bytes()
    data, plain = splits_of(a.path), splits_of(build(tmp_path / "p").path)
    assert data["test"] == plain["test"]  # not perturbed
    train = data["train"]
    assert len(train) == 3 * len(plain["train"])
    assert [r["copy"] for r in train[:3]] == [0, 1, 2] and len({r["row"] for r in train[:3]}) == 1
    assert all("The marital status is" not in r["input"] for r in train)  # always the synonym
    assert all("The civil status is" in r["input"] for r in train)
    assert all(("The sex is: man." in r["input"]) or ("The sex is: woman." in r["input"]) for r in train)
    orders = {tuple(line.split(" is: ")[0] for line in r["input"].split("\n\n")[0].splitlines()) for r in train}
    assert len(orders) > 10  # every row its own order
    short = splits_of(build(tmp_path / "s", perturb={"shorthand": 1.0, "shuffle": "dataset"}).path)
    orders = {tuple(line.split(" is: ")[0].removeprefix("The ") for line in r["input"].split("\n\n")[0].splitlines())
              for r in short["train"]}
    assert len(orders) == 1  # one order for all rows, not the schema's
    (order,) = orders
    assert all(name.isupper() for name in order)
    assert order != ("AGE", "SEX", "EDUC", "MAR", "OCC", "HRS", "REG")


def test_context_as_preamble_or_system_prompt(tmp_path: Path) -> None:
    pre = build(tmp_path / "p", context={"text": "Survey respondent.", "placement": "preamble"})
    assert splits_of(pre.path)["train"][0]["input"].startswith("Survey respondent.\n\nThe age is")
    assert pre.meta["system_prompt"] is None
    sys_ = build(tmp_path / "s", context={"text": "Survey respondent.", "placement": "system"})
    assert splits_of(sys_.path)["train"][0]["input"].startswith("The age is")
    assert sys_.meta["system_prompt"] == "Survey respondent."


def test_target_value_map_with_drop_of_unmapped(tmp_path: Path) -> None:
    built = build(tmp_path / "o", target={"column": "sex", "map": {"female": "F", 1: "M"}},
                  features=["age", "occupation"])
    outputs = {r["output"] for part in splits_of(built.path).values() for r in part}
    assert outputs == {"F", "M"}
    assert built.meta["counts"]["kept"] == 200
    dropped = build(tmp_path / "d", target={"column": "region", "map": {"south": "yes"}, "unmapped": "drop"},
                    features=["age"], splits={"train": 0.5, "test": 0.5})
    kept = dropped.meta["counts"]["kept"]
    assert kept == sum(line.split(",")[7] == "south" for line in CSV.read_text().splitlines()[1:])
    assert dropped.meta["counts"]["dropped_unmapped_target"] == 200 - kept


# --------------------------------------------------------------------------- bad input
def test_unknown_column_in_the_schema_names_the_schema_and_the_column(tmp_path: Path) -> None:
    schema = tmp_path / "bad.schema.yaml"
    schema.write_text(SCHEMA.read_text().replace("  occupation:\n", "  ocupation:\n"))
    msg = error_of(tmp_path, schema_file=str(schema))
    assert "bad.schema.yaml" in msg and "`ocupation`" in msg and "census.csv" in msg
    assert "Did you mean `occupation`?" in msg


def test_missing_target_column_is_named(tmp_path: Path) -> None:
    msg = error_of(tmp_path, target={"column": "incme", "threshold": 5})
    assert "target.column `incme`" in msg and "census.csv" in msg and "Did you mean `income`?" in msg
    msg = error_of(tmp_path, target={"column": "INCOME", "threshold": 5})
    assert "Names are case-sensitive: the file has `income`." in msg


def test_unreadable_and_missing_files_are_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not a parquet file at all")
    msg = error_of(tmp_path, source=str(broken))
    assert "broken.parquet" in msg and "cannot be read as parquet" in msg
    msg = error_of(tmp_path, source=str(tmp_path / "nope.csv"))
    assert "nope.csv does not exist" in msg
    weird = tmp_path / "table.xyz"
    weird.write_text("a,b\n1,2\n")
    assert "cannot tell the file format" in error_of(tmp_path, source=str(weird))
    latin = tmp_path / "latin.csv"
    latin.write_bytes(CSV.read_bytes().replace(b"west", b"w\xe9st"))
    assert "latin.csv" in error_of(tmp_path, source=str(latin))


def test_a_template_referencing_a_missing_field_names_the_file_and_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.j2"
    bad.write_text("Age {{ age }}, job {{ ocupation }}.")
    msg = error_of(tmp_path, template={"kind": "narrative", "file": str(bad)})
    assert "bad.j2" in msg and "`ocupation`" in msg and "Did you mean `occupation`?" in msg
    leak = tmp_path / "leak.j2"
    leak.write_text("Earns {{ income }}.")
    assert "the target column" in error_of(tmp_path, template={"kind": "narrative", "file": str(leak)})
    missing = error_of(tmp_path, template={"kind": "narrative", "file": "nothere.j2"})
    assert "nothere.j2" in missing and "does not exist" in missing


def test_bad_schema_and_bad_values_are_named(tmp_path: Path) -> None:
    schema = tmp_path / "s.yaml"
    schema.write_text("columns:\n  age: {type: numeric, unitt: years}\n  income: {}\n")
    msg = error_of(tmp_path, schema_file=str(schema))
    assert "s.yaml" in msg and "columns.age.unitt" in msg and "Did you mean `unit`?" in msg
    schema.write_text("columns:\n  occupation: {type: numeric}\n")
    msg = error_of(tmp_path, schema_file=str(schema))
    assert "column `occupation` is numeric" in msg and "census.csv" in msg
    msg = error_of(tmp_path, features=["age", "salary"])
    assert "feature `salary`" in msg and "census.schema.yaml" in msg
    msg = error_of(tmp_path, target={"column": "region", "map": {"south": "1"}})
    assert "target column `region`" in msg and "target.map" in msg


def test_option_errors_are_validation_errors() -> None:
    from pydantic import ValidationError

    for bad in ({"splits": {"train": 0.5, "test": 0.4}}, {"balance": ["dev"]},
                {"features": ["age", "income"]}, {"target": {"column": "income"}},
                {"template": {"kind": "narrative"}},
                {"template": {"kind": "narrative", "file": "x.j2"}, "perturb": {"shuffle": "row"}}):
        with pytest.raises(ValidationError):
            options(**bad)


# --------------------------------------------------------------------------- privacy
def test_rewriting_rows_remotely_needs_an_opt_in_and_is_recorded(tmp_path: Path) -> None:
    from fake_openai import FakeOpenAI

    with FakeOpenAI() as server:
        section = {"plugin": "openai", "model": "writer", "base_url": server.url, "api_key_env": None}
        rewrite = {"simulator": section}
        msg = error_of(tmp_path, template={"rewrite": rewrite}, subsample=3)
        assert "send_rows: true" in msg and "Nothing leaves the machine without an opt-in" in msg
        assert server.stats.requests == 0
        built = build(tmp_path / "o", template={"rewrite": {**rewrite, "send_rows": True}}, subsample=3)
        assert server.stats.requests == 9
    rows = splits_of(built.path)["train"]
    assert all(r["input"].startswith("Here is my reply ") for r in rows)
    assert rows[0]["input"].endswith("Is the yearly income above 50,000 dollars? Answer 1 or 0.")
    privacy = built.meta["privacy"]
    assert privacy["rows_left_machine"] is True
    assert privacy["steps"] == [{"step": "template.rewrite", "opt_in": "template.rewrite.send_rows",
                                 "simulator": section, "rows_sent": 9}]


# --------------------------------------------------------------------------- the command
def test_ck_data_tabular_command(tmp_path: Path, ck: Any) -> None:
    config = CENSUS / "census.tabular.yaml"
    first = ck("data", "tabular", str(config), str(tmp_path / "out"))
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("Wrote ") and "train 137, validation 20, test 39" in first.stdout
    second = ck("data", "tabular", str(config), str(tmp_path / "out"))
    assert second.stdout.startswith("Reused ")
    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace("column: income", "column: incom") .replace(
        "source: census.csv", f"source: {CSV}").replace("schema_file: census.schema.yaml", f"schema_file: {SCHEMA}"))
    res = ck("data", "tabular", str(bad), str(tmp_path / "out"))
    assert res.returncode == 2 and "target.column `incom`" in res.stderr and "Traceback" not in res.stderr
    typo = tmp_path / "typo.yaml"
    typo.write_text(config.read_text() + "seeed: 3\n")
    res = ck("data", "tabular", str(typo), str(tmp_path / "out"))
    assert res.returncode == 2 and "typo.yaml" in res.stderr and "Did you mean `seed`?" in res.stderr
