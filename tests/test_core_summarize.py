"""`ck summarize` on run folders produced by `ck run` (toy plugin: fast, no torch)."""

from __future__ import annotations

import csv
import io
import json

import yaml
from conftest import write_spec

from cruijff_kit._base.fileio import read_jsonl
from cruijff_kit._summaries.summarize import flatten_metrics, lower_is_better

SPEC = """
experiment: toy
model: {path: m}
dataset: {plugin: toy-data}
train: {plugin: toy, epochs: 2, steps_per_epoch: 3}
eval:
  - {plugin: toy-eval, task: exact, checkpoints: all}
sweep:
  train.lora.rank: [4, 8]
  train.learning_rate: [0.1, 0.2]
"""


def test_summarize_table_matches_artifacts_and_plots(tmp_path, with_toy, ck):
    spec = write_spec(tmp_path, SPEC)
    ck("run", str(spec), check=True)
    exp = tmp_path / "runs" / "toy"
    res = ck("summarize", str(spec), check=True)
    assert "Wrote" in res.stdout
    rows = list(csv.DictReader(io.StringIO((exp / "summary.csv").read_text())))
    assert len(rows) == 4 * 3
    for row in rows:
        run_dir = exp / "runs" / row["run"]
        spec_r = yaml.safe_load((run_dir / "spec.yaml").read_text())
        assert float(row["train.lora.rank"]) == spec_r["train"]["lora"]["rank"]
        metrics = read_jsonl(run_dir / "train/metrics.jsonl")
        if row["target"] == "base":  # the base model's row carries no training value
            assert all(row[c] == "" for c in ("train_loss", "val_loss", "final_train_loss", "steps"))
        else:  # the toy trainer logs train_loss = 1/step, 3 steps per epoch: epoch N ends at step 3N+3
            epoch = int(row["target"].removeprefix("epoch_"))
            assert float(row["train_loss"]) == 1 / (3 * epoch + 3)
            assert row["val_loss"] == ""  # the toy trainer logs no validation
            assert float(row["final_train_loss"]) == metrics[-1]["train_loss"] == 1 / 6
            assert int(row["steps"]) == metrics[-1]["step"] == 6
        results = json.loads((run_dir / "eval/results.json").read_text())
        pointer = results["exact"][row["target"]].get("shared")
        if row["target"] == "base":  # the base eval is the same in every run: run once, in shared/, pointed to
            assert pointer and row["shared"] == pointer
            results = json.loads((exp / pointer / "eval/results.json").read_text())
        else:
            assert pointer is None and row["shared"] == ""
        assert float(row["accuracy"]) == results["exact"][row["target"]]["accuracy"]["value"]
        assert row["state"] == "done"
    md = (exp / "summary.md").read_text()
    assert "**1**" in md  # best accuracy marked
    pngs = sorted(p.name for p in (exp / "plots").glob("*.png"))
    assert "loss_curves.png" in pngs
    assert "exact_accuracy_vs_train.lora.rank.png" in pngs
    assert all((exp / "plots" / p).stat().st_size > 5000 for p in pngs)


def test_failed_and_missing_stages_are_listed(tmp_path, with_toy, ck):
    spec = write_spec(tmp_path, SPEC.split("sweep:")[0].replace("steps_per_epoch: 3", "steps_per_epoch: 3, fail_at_step: 4"))
    ck("run", str(spec))
    ck("summarize", str(spec), "--no-plots", check=True)
    md = (tmp_path / "runs/toy/summary.md").read_text()
    assert "not done" in md and "exact/epoch_1 (pending)" in md
    rows = list(csv.DictReader(io.StringIO((tmp_path / "runs/toy/summary.csv").read_text())))
    assert {r["target"]: r["state"] for r in rows}["base"] == "done"
    assert {r["target"]: r["state"] for r in rows}["epoch_0"] == "pending"


def test_flatten_and_direction():
    assert flatten_metrics({"accuracy": {"value": 0.5, "stderr": 0.1}, "f1": {"value": 0.25}, "samples": 10,
                            "epoch": 1, "risk": {"ece": {"value": 0.1}, "auc": {"value": 0.7}}, "log": "x.eval",
                            "calibration": {"risk": [{"count": 1}]}}) == {
        "accuracy": 0.5, "f1": 0.25, "risk.ece": 0.1, "risk.auc": 0.7}
    assert lower_is_better("val_loss") and lower_is_better("risk.ece") and not lower_is_better("accuracy")


def test_archive_copies_without_weights_verifies_and_removes_on_request(tmp_path, with_toy, ck):
    spec = write_spec(tmp_path, SPEC.split("sweep:")[0])
    ck("run", str(spec), check=True)
    exp = tmp_path / "runs" / "toy"
    (run,) = (exp / "runs").iterdir()
    res = ck("archive", str(exp), str(tmp_path / "arch"), check=True)
    assert "verified" in res.stdout
    copy = tmp_path / "arch" / "toy" / "runs" / run.name
    assert (copy / "status.json").read_text() == (run / "status.json").read_text()
    assert (copy / "train/epoch_1/adapter/adapter_config.json").exists()
    assert not (copy / "train/epoch_1/adapter/adapter_model.safetensors").exists()
    assert exp.exists()
    res = ck("archive", str(exp), str(tmp_path / "arch"))
    assert res.returncode == 2 and "already exists" in res.stderr
    ck("archive", str(exp), str(tmp_path / "arch2"), "--keep-adapters", "--remove", check=True)
    assert (tmp_path / "arch2/toy/runs" / run.name / "train/epoch_1/adapter/adapter_model.safetensors").exists()
    assert not exp.exists()


def test_risk_plots_from_results_entries(tmp_path):
    from cruijff_kit._summaries.plots import risk_plots
    from cruijff_kit._summaries.summarize import Summary
    from cruijff_kit.scoring import calibration_bins, roc_curve

    risks, outcomes = [0.1, 0.4, 0.35, 0.8, 0.9, 0.2], [0, 0, 1, 1, 1, 0]
    bins = [b.__dict__ for b in calibration_bins(risks, outcomes, 5)]
    roc = roc_curve(risks, outcomes)
    assert roc == [(0, 0), (0, 1 / 3), (0, 2 / 3), (1 / 3, 2 / 3), (1 / 3, 1), (2 / 3, 1), (1, 1)]
    summary = Summary("exp", [], [], [], {}, {}, {("r1", "task", "epoch_0", "risk"): {"calibration": bins, "roc": roc}})
    (path,) = risk_plots(summary, tmp_path)
    assert path.name == "task_risk_calibration_roc.png" and path.stat().st_size > 10000
