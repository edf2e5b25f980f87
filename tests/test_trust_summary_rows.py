"""Summary rows say what each target is: an ``epoch_N`` row carries the losses logged in epoch N (the
validation row logged at the end of that epoch), a ``base`` row no training value, and the run-level
columns (``best_val_loss``, ``best_epoch``, ...) are shown once per run in ``summary.md``.

A real tiny sweep (trl on CPU, inspect evaluations of base, epoch_0 and epoch_1) and hand-written
``metrics.jsonl`` files for the edge cases."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from trl_fixtures import write_capitalize_data

from cruijff_kit._base.layout import RunLayout
from cruijff_kit._summaries.summarize import (
    RUN_TRAIN_COLUMNS,
    TARGET_TRAIN_COLUMNS,
    TrainSummary,
    build_row,
    split_columns,
    to_markdown,
    train_summary,
)

TRAINING_COLUMNS = (*TARGET_TRAIN_COLUMNS, *RUN_TRAIN_COLUMNS)


# --------------------------------------------------------------------------- the rule, by hand
def losses_of_epoch(rows: list[dict[str, Any]], epoch: int) -> dict[str, float | None]:
    """The documented rule, written again here: the last row with each loss whose epoch is ``epoch``."""
    val = [r["val_loss"] for r in rows if r.get("epoch") == epoch and r.get("val_loss") is not None]
    train = [r["train_loss"] for r in rows if r.get("epoch") == epoch and r.get("train_loss") is not None]
    return {"val_loss": val[-1] if val else None, "train_loss": train[-1] if train else None}


def write_metrics(tmp_path: Path, rows: list[dict[str, Any]]) -> RunLayout:
    layout = RunLayout(tmp_path / "runs" / "r")
    layout.metrics.parent.mkdir(parents=True)
    layout.metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return layout


def row_of(target: str, ts: TrainSummary) -> dict[str, Any]:
    return build_row(run="r", run_type="finetune", sweep={}, task="t", target=target, state="done",
                     values={"acc": 0.5}, train=ts)


# --------------------------------------------------------------------------- hand-written metrics.jsonl
def test_epoch_rows_take_the_last_losses_of_their_own_epoch(tmp_path: Path) -> None:
    # epoch 0: validation mid-epoch (0.9) and at its end (0.8); epoch 1: validation only mid-epoch
    # epoch 2: no validation at all; train losses logged at every step
    ts = train_summary(write_metrics(tmp_path, [
        {"step": 1, "epoch": 0, "train_loss": 2.0}, {"step": 1, "epoch": 0, "val_loss": 0.9},
        {"step": 2, "epoch": 0, "train_loss": 1.5}, {"step": 2, "epoch": 0, "val_loss": 0.8},
        {"step": 3, "epoch": 1, "train_loss": 1.2}, {"step": 3, "epoch": 1, "val_loss": 0.85},
        {"step": 4, "epoch": 1, "train_loss": 1.1},
        {"step": 5, "epoch": 2, "train_loss": 0.7}, {"step": 6, "epoch": 2, "train_loss": 0.6},
    ]), {})
    e0, e1, e2 = row_of("epoch_0", ts), row_of("epoch_1", ts), row_of("epoch_2", ts)
    assert (e0["val_loss"], e0["train_loss"]) == (0.8, 1.5)
    assert (e1["val_loss"], e1["train_loss"]) == (0.85, 1.1)
    assert e2["val_loss"] is None and e2["train_loss"] == 0.6  # no validation in epoch 2: empty, not 0.85
    for row in (e0, e1, e2):  # the run's columns, the same on every epoch row
        assert (row["best_val_loss"], row["best_epoch"]) == (0.8, 0)
        assert (row["final_train_loss"], row["final_val_loss"], row["steps"]) == (0.6, 0.85, 6)
    assert row_of("epoch_3", ts)["val_loss"] is None and row_of("epoch_3", ts)["train_loss"] is None
    for target in ("base", "adapter"):
        row = row_of(target, ts)
        assert row["acc"] == 0.5 and not any(c in row for c in TRAINING_COLUMNS)
    train_only = row_of("", ts)  # a run without eval keeps its final values
    assert train_only["final_train_loss"] == 0.6 and train_only["best_val_loss"] == 0.8
    assert train_only.get("val_loss") is None


def test_no_validation_rows_and_odd_epoch_fields(tmp_path: Path) -> None:
    ts = train_summary(write_metrics(tmp_path, [
        {"step": 1, "epoch": 0.5, "train_loss": 3.0},  # not a whole epoch: belongs to no epoch_N row
        {"step": 2, "epoch": 1.0, "train_loss": 2.0},  # 1.0 is epoch 1
        {"step": 3, "epoch": True, "train_loss": 1.0},  # not a number
        {"step": 4, "train_loss": 0.5},  # no epoch field
    ]), {})
    assert (ts.best_val_loss, ts.best_epoch, ts.final_val_loss) == (None, None, None)
    assert ts.final_train_loss == 0.5
    assert row_of("epoch_0", ts)["train_loss"] is None
    assert row_of("epoch_1", ts)["train_loss"] == 2.0 and row_of("epoch_1", ts)["val_loss"] is None


def test_best_epoch_is_the_first_lowest_validation(tmp_path: Path) -> None:
    ts = train_summary(write_metrics(tmp_path, [
        {"step": 1, "epoch": 0, "val_loss": 0.7}, {"step": 2, "epoch": 1, "val_loss": 0.5},
        {"step": 3, "epoch": 2, "val_loss": 0.5}, {"step": 4, "epoch": 3, "val_loss": 0.6},
    ]), {})
    assert (ts.best_val_loss, ts.best_epoch, ts.final_val_loss) == (0.5, 1, 0.6)


def test_terminal_tables_split_without_cutting_a_name() -> None:
    from rich.console import Console
    from rich.markdown import Markdown

    from cruijff_kit._summaries.summarize import Summary

    metrics = ["match/accuracy", "includes/accuracy", "classification/accuracy",
               "classification/balanced_accuracy", "classification/f1", "classification/other"]
    ts = TrainSummary(final_train_loss=0.61, best_val_loss=0.52, best_epoch=1, final_val_loss=0.55, steps=8,
                      duration_s=12.0, tokens_per_second=1234.5, peak_memory_mb=2048.0,
                      curve=[{"step": 4, "epoch": 0, "train_loss": 0.9, "val_loss": 0.7},
                             {"step": 8, "epoch": 1, "train_loss": 0.61, "val_loss": 0.55}])
    rows = []
    for run, lr in (("brave-otter-a1b2c3", 0.01), ("calm-heron-d4e5f6", 0.02)):
        for target in ("base", "epoch_0", "epoch_1"):
            rows.append(build_row(run=run, run_type="finetune", sweep={"train.learning_rate": lr},
                                  task="exact-match", target=target, state="done",
                                  values={m: 0.123456 for m in metrics}, train=ts))
    summary = Summary("exp", ["train.learning_rate"], rows, metrics, {}, {})
    con = Console(width=100, record=True, color_system=None)
    con.print(Markdown(to_markdown(summary, width=100)))
    text = con.export_text()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 100
    for name in [*metrics, *TARGET_TRAIN_COLUMNS, *RUN_TRAIN_COLUMNS, "train.learning_rate"]:
        assert name in text, name
    # the file keeps one wide eval table and one training table (a row per run)
    md = to_markdown(summary)
    tables = [block for block in md.split("\n\n") if block.startswith("|")]
    assert len(tables) == 2
    assert len(tables[1].splitlines()) == 2 + 2 and "best_val_loss" in tables[1].splitlines()[0]
    assert "best_val_loss" not in tables[0]


def test_split_columns_repeat_the_keys() -> None:
    cols = ["run", "task", "target", "aaaaaaaaaa", "bbbbbbbbbb", "cccccccccc"]
    body = [["r", "t", "base", 1, 2, 3]]
    # widths with 2 of padding each: 5, 6, 8 for the keys (+2 at the edges = 21), 12 for each other
    assert split_columns(cols, body, ("run", "task", "target"), 45) == [[0, 1, 2, 3, 4], [0, 1, 2, 5]]
    assert split_columns(cols, body, ("run", "task", "target"), None) == [[0, 1, 2, 3, 4, 5]]


@pytest.mark.parametrize("evals", [
    "",  # no eval at all
    "eval: [{plugin: toy-eval, task: exact, checkpoints: none, include_base: true}]",  # the base model only
])
def test_a_run_whose_training_no_epoch_row_holds_gets_a_row_of_its_own(tmp_path: Path, with_toy: Path,
                                                                       evals: str) -> None:
    from conftest import write_spec

    from cruijff_kit._summaries.summarize import collect, to_csv
    from cruijff_kit.engine import load_spec, make_plan, run_stage, write_experiment

    spec = write_spec(tmp_path, f"""
        experiment: toy
        model: {{path: some-org/some-model}}
        dataset: {{plugin: toy-data}}
        train: {{plugin: toy, epochs: 2, steps_per_epoch: 2}}
        {evals}
    """)
    plan = make_plan(load_spec(spec))
    write_experiment(plan)
    run_stage(plan.runs[0].layout.root, "train")
    rows = list(csv.DictReader(io.StringIO(to_csv(collect(plan.layout)))))
    own = [r for r in rows if r["target"] == ""]
    assert len(own) == 1 and own[0]["state"] == "done"
    # the toy trainer logs train_loss = 1/step: 4 steps end at 0.25; it logs no validation
    assert (own[0]["final_train_loss"], own[0]["steps"], own[0]["best_val_loss"]) == ("0.25", "4", "")
    assert all(r[c] == "" for r in rows if r["target"] == "base" for c in TRAINING_COLUMNS)
    assert len(rows) == (2 if evals else 1)


# --------------------------------------------------------------------------- a real tiny sweep
@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("CK_SLOW") != "1", reason="slow tier: set CK_SLOW=1")
def test_real_sweep_rows_match_each_runs_metrics(tmp_path: Path, tiny_llama: Path) -> None:
    pytest.importorskip("trl")
    pytest.importorskip("inspect_ai")
    from click.testing import CliRunner

    from cruijff_kit._cli import _add_plugin_commands, cli
    from cruijff_kit.engine import load_spec, make_plan, run_stage, write_experiment

    write_capitalize_data(tmp_path, n_train=16, n_val=4, n_test=4)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({
        "experiment": "rows",
        "output_dir": str(tmp_path / "out"),
        "seed": 7,
        "model": {"path": str(tiny_llama)},
        "prompt": {"template": "Capitalize: {input}"},
        "dataset": {"plugin": "json-instruct", "path": "capitalize.json"},
        # 16 rows / 4 per step = 4 steps an epoch; validation at step 3 (mid-epoch 0), at the end of each epoch
        # (steps 4 and 8) and at step 6 (mid-epoch 1); a train loss at every step
        "train": {"plugin": "trl", "epochs": 2, "batch_size": 4, "logging_steps": 1, "eval_steps": 3,
                  "lora": {"rank": 4, "dropout": 0.0}, "save_epochs": "all"},
        "eval": [{"plugin": "inspect", "task": "exact-match", "checkpoints": "all", "include_base": True,
                  "limit": 2, "batch_size": 2, "device": "cpu", "generation": {"max_tokens": 3},
                  "scorers": ["match", "includes"]}],
        "sweep": {"train.learning_rate": [0.01, 0.03]},
        "scheduler": {"plugin": "local"},
    }, sort_keys=False))
    plan = make_plan(load_spec(spec_path))
    write_experiment(plan)
    assert len(plan.runs) == 2
    # every stage the experiment executes, as a scheduler gets them: each run's train and epoch evals, and
    # the base model's eval once (the same in both runs: one shared stage)
    jobs = [(job.run_dir, job.stage) for job in plan.jobs()]
    assert len(jobs) == 2 * 3 + 1
    for run_dir, stage in jobs:
        run_stage(run_dir, stage)

    _add_plugin_commands()
    res = CliRunner().invoke(cli, ["summarize", str(spec_path), "--no-plots"])
    assert res.exit_code == 0, res.output
    exp = plan.layout.root
    base_logs = sorted(exp.rglob("eval/exact-match/base/*.eval"))
    assert len(base_logs) == 1 and base_logs[0].is_relative_to(exp / "shared"), base_logs  # one for the experiment
    assert len(sorted(exp.rglob("eval/exact-match/epoch_*/*.eval"))) == 2 * 2
    rows = list(csv.DictReader(io.StringIO((exp / "summary.csv").read_text())))
    assert {r["shared"] for r in rows if r["target"] == "base"} == {f"shared/{base_logs[0].parents[3].name}"}
    assert {r["shared"] for r in rows if r["target"] != "base"} == {""}
    assert sorted((r["run"], r["target"]) for r in rows) == sorted(
        (run.name, t) for run in plan.runs for t in ("base", "epoch_0", "epoch_1"))
    for row in rows:
        metrics = [json.loads(line) for line in
                   (exp / "runs" / row["run"] / "train" / "metrics.jsonl").read_text().splitlines()]
        val = [r for r in metrics if r["val_loss"] is not None]
        # validations mid-epoch and at each epoch's end (trl logs the last one again when training ends)
        assert {(r["step"], r["epoch"]) for r in val} == {(3, 0), (4, 0), (6, 1), (8, 1)}
        if row["target"] == "base":
            assert all(row[c] == "" for c in TRAINING_COLUMNS), row
            continue
        epoch = int(row["target"].removeprefix("epoch_"))
        end_of_epoch = [r for r in val if r["step"] == 4 * (epoch + 1)]  # the row logged at the epoch's end
        assert float(row["val_loss"]) == end_of_epoch[-1]["val_loss"] == losses_of_epoch(metrics, epoch)["val_loss"]
        last_train = [r for r in metrics if r["train_loss"] is not None and r["step"] == 4 * (epoch + 1)]
        assert float(row["train_loss"]) == last_train[0]["train_loss"] == losses_of_epoch(metrics, epoch)["train_loss"]
        best = min(val, key=lambda r: r["val_loss"])
        assert float(row["best_val_loss"]) == best["val_loss"] and int(row["best_epoch"]) == best["epoch"]
        assert float(row["final_val_loss"]) == val[-1]["val_loss"]
    by_run = {}
    for row in rows:
        by_run.setdefault(row["run"], {})[row["target"]] = row
    for run_rows in by_run.values():  # each epoch row has its own epoch's loss, not the run's final one
        assert run_rows["epoch_0"]["val_loss"] != run_rows["epoch_1"]["val_loss"]
    # the terminal output cuts no name, and summary.md shows the run columns once per run
    assert "…" not in res.output and "best_val_loss" in res.output
    md = (exp / "summary.md").read_text()
    train_table = md.split("## Training")[1].split("\n\n")[1]
    assert train_table.startswith("| run |") and "best_val_loss" in train_table
    assert all(train_table.count(run.name) == 1 for run in plan.runs)
    eval_table = md.split("## Evaluations")[1].split("\n\n")[1]
    assert eval_table.startswith("| run |") and "best_val_loss" not in eval_table
