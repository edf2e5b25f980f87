"""A real tiny sweep (trl on CPU, inspect on the tiny model) in which one of two evals fails for real:
``ck summarize`` keeps the failed rows (state ``failed``, no metric values), lists them as not done in
``summary.md``, gives every other row the values of its ``results.json`` and exits 0 (docs/cli.md: a
summary is written, a failed stage is ``ck status``'s and ``ck run``'s exit code 1, not ``summarize``'s)."""

from __future__ import annotations

import csv
import io
import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from trl_fixtures import write_capitalize_data

#: A user task whose task function raises when the eval stage loads it (plan time only parses the file).
BROKEN_TASK = textwrap.dedent('''
    from inspect_ai import task


    @task
    def broken():
        raise RuntimeError("this task is broken on purpose")
''')


def values_of(entry: dict[str, Any]) -> dict[str, float]:
    """The metric values of a ``results.json`` entry, read here without the summary code:
    every ``{"value": v}`` mapping at the top level (the inspect evaluator writes them there)."""
    return {k: v["value"] for k, v in entry.items() if isinstance(v, dict) and "value" in v and v["value"] is not None}


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("CK_SLOW") != "1", reason="slow tier: set CK_SLOW=1")
def test_a_failed_eval_keeps_its_row_and_the_others_match_their_results(tmp_path: Path, tiny_llama: Path) -> None:
    pytest.importorskip("trl")
    pytest.importorskip("inspect_ai")
    from click.testing import CliRunner

    from cruijff_kit._cli import _add_plugin_commands, cli
    from cruijff_kit.engine import load_spec, make_plan, run_stage, write_experiment

    write_capitalize_data(tmp_path, n_train=8, n_val=4, n_test=4)
    (tmp_path / "broken.py").write_text(BROKEN_TASK)
    common = {"plugin": "inspect", "checkpoints": "all", "limit": 2, "batch_size": 2, "device": "cpu",
              "generation": {"max_tokens": 3}}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({
        "experiment": "failing",
        "output_dir": str(tmp_path / "out"),
        "seed": 7,
        "model": {"path": str(tiny_llama)},
        "prompt": {"template": "Capitalize: {input}"},
        "dataset": {"plugin": "json-instruct", "path": "capitalize.json"},
        "train": {"plugin": "trl", "epochs": 1, "batch_size": 4, "logging_steps": 1,
                  "lora": {"rank": 4, "dropout": 0.0}, "save_epochs": "all"},
        "eval": [{**common, "task": "exact-match", "include_base": True, "scorers": ["match", "includes"]},
                 {**common, "task": "broken.py@broken", "name": "broken", "include_base": False}],
        "sweep": {"train.learning_rate": [0.01, 0.03]},
        "scheduler": {"plugin": "local"},
    }, sort_keys=False))
    plan = make_plan(load_spec(spec_path))
    write_experiment(plan)
    jobs = [(job.run_dir, job.stage) for job in plan.jobs()]
    broken = [(d, s) for d, s in jobs if s == "eval.broken.epoch_0"]
    # per run: train, exact-match/epoch_0, broken/epoch_0; and the base model's exact-match once
    assert len(jobs) == 2 * 3 + 1 and len(broken) == 2, jobs
    for run_dir, stage in jobs:
        if (run_dir, stage) in broken:
            with pytest.raises(Exception, match="broken on purpose"):
                run_stage(run_dir, stage)
        else:
            run_stage(run_dir, stage)

    _add_plugin_commands()
    res = CliRunner().invoke(cli, ["summarize", str(spec_path), "--no-plots"])
    assert res.exit_code == 0, res.output  # OK: the summary was written; the failure is in its rows
    exp = plan.layout.root
    rows = list(csv.DictReader(io.StringIO((exp / "summary.csv").read_text())))
    names = sorted(run.name for run in plan.runs)
    assert sorted((r["run"], r["task"], r["target"]) for r in rows) == sorted(
        [(n, "exact-match", t) for n in names for t in ("base", "epoch_0")] + [(n, "broken", "epoch_0") for n in names])

    metric_columns: set[str] = set()
    for row in rows:
        if row["task"] == "broken":
            continue
        results = json.loads((exp / "runs" / row["run"] / "eval" / "results.json").read_text())
        entry = results[row["task"]][row["target"]]
        if row["target"] == "base":  # run once for the experiment, in shared/, and pointed to
            assert row["shared"] == entry["shared"] and row["shared"].startswith("shared/")
            entry = json.loads((exp / row["shared"] / "eval" / "results.json").read_text())[row["task"]]["base"]
        else:
            assert row["shared"] == ""
        assert row["state"] == "done"
        expected = values_of(entry)
        assert {"match/accuracy", "includes/accuracy"} <= set(expected), expected
        for name, value in expected.items():
            assert float(row[name]) == pytest.approx(value, rel=1e-12, abs=0.0), (row["run"], row["target"], name)
        metric_columns |= set(expected)

    failed = [r for r in rows if r["task"] == "broken"]
    assert len(failed) == 2
    for row in failed:
        assert row["state"] == "failed"
        assert all(row[c] == "" for c in metric_columns), row  # no value, not a 0
        results_file = exp / "runs" / row["run"] / "eval" / "results.json"
        assert "broken" not in json.loads(results_file.read_text())
        stage = json.loads((exp / "runs" / row["run"] / "status.json").read_text())["stages"]["eval.broken.epoch_0"]
        assert stage["state"] == "failed" and "broken on purpose" in json.dumps(stage)

    md = (exp / "summary.md").read_text()
    not_done = next(line for line in md.splitlines() if "not done" in line)
    assert not_done.startswith("2 stage(s) not done: ")
    for name in names:
        assert f"{name} broken/epoch_0 (failed)" in not_done
    assert "exact-match" not in not_done
