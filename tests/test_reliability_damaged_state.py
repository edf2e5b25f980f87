"""Damaged state files (empty, cut short, binary garbage, the wrong shape, missing) through the real `ck`:
one clear message naming the file and the recovery, never a traceback; `ck status` and `ck summarize`
still show the other runs; after the recovery command (`ck run`, `ck reset`) the experiment finishes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import write_spec

SPEC = """
experiment: toy
model: {path: some-org/some-model}
dataset: {plugin: toy-data}
train: {plugin: toy, epochs: 1, steps_per_epoch: 2}
eval:
  - {plugin: toy-eval, task: exact, checkpoints: last, include_base: false}
sweep:
  train.lora.rank: [4, 8]
"""
#: every run has these two stages; the toy evaluator scores 1.0 on an adapter, and the toy trainer
#: logs train_loss = 1/step, so two steps end at 0.5
STAGES = ("train", "eval.exact.epoch_0")
ACCURACY, FINAL_TRAIN_LOSS = "1.0", "0.5"

#: how a file is damaged: original bytes -> damaged bytes (None: the file is removed)
Damage = Callable[[bytes], "bytes | None"]
COMMON: dict[str, Damage] = {
    "empty": lambda raw: b"",
    "truncated": lambda raw: raw[: len(raw) // 2],
    "binary-garbage": lambda raw: b"\x00\xff\xfe\x80 not text \x00\x9c" * 8,
    "list-not-object": lambda raw: b'["not", "an", "object"]\n',
}


@dataclass
class Experiment:
    spec: Path
    root: Path
    bad: Path  # the run whose file is damaged
    good: Path  # the run that must still be listed and summarized


@pytest.fixture
def finished(tmp_path: Path, with_toy: Path) -> Experiment:
    """Two finished toy runs, planned and run in this process (quick), with a log file each."""
    from cruijff_kit.engine import load_spec, make_plan, run_stage, write_experiment

    spec = write_spec(tmp_path, SPEC)
    plan = make_plan(load_spec(spec))
    write_experiment(plan)
    for run in plan.runs:
        for stage in STAGES:
            run_stage(run.layout.root, stage)
        (run.layout.logs_dir).mkdir(exist_ok=True)
        (run.layout.logs_dir / "train.out").write_text("[ck] stage train done\n")
    runs = sorted(r.layout.root for r in plan.runs)
    return Experiment(spec, plan.layout.root, runs[0], runs[1])


def damage(path: Path, how: Damage) -> bytes | None:
    """Damage ``path``; returns the bytes written (None when removed)."""
    new = how(path.read_bytes())
    if new is None:
        path.unlink()
    else:
        path.write_bytes(new)
    return new


def assert_clear(res: subprocess.CompletedProcess[str], path: Path, *fixes: str) -> None:
    """The output names the damaged file and the recovery, and shows no traceback."""
    out = res.stdout + res.stderr
    assert "Traceback" not in out, out
    assert str(path) in res.stderr, res.stderr
    for fix in fixes:
        assert fix in res.stderr, (fix, res.stderr)


def states(ck: Callable[..., subprocess.CompletedProcess[str]], target: Path,
           ) -> tuple[subprocess.CompletedProcess[str], dict[str, set[str]]]:
    """`ck status --json` (which must exit 0) and run name -> the set of its stages' states."""
    res = ck("status", str(target), "--json")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    out: dict[str, set[str]] = {}
    for row in json.loads(res.stdout):
        out.setdefault(row["run"], set()).add(row["state"])
    return res, out


def summary(ck: Callable[..., subprocess.CompletedProcess[str]], exp: Experiment,
            ) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, str]]]:
    """`ck summarize` (must exit 0) and its csv rows by run."""
    res = ck("summarize", str(exp.spec), "--no-plots")
    assert res.returncode == 0 and "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr
    with open(exp.root / "summary.csv", newline="") as fh:
        return res, {row["run"]: row for row in csv.DictReader(fh)}


def run_again(ck: Callable[..., subprocess.CompletedProcess[str]], exp: Experiment,
              ) -> subprocess.CompletedProcess[str]:
    res = ck("run", str(exp.spec))
    assert res.returncode == 0 and "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr
    return res


def assert_finished(ck: Callable[..., subprocess.CompletedProcess[str]], exp: Experiment) -> None:
    """Every stage done, both runs summarized with the hand-computed values, no warning left."""
    res, by_run = states(ck, exp.spec)
    assert by_run == {exp.bad.name: {"done"}, exp.good.name: {"done"}} and "Warning" not in res.stderr
    res, rows = summary(ck, exp)
    assert "Warning" not in res.stderr, res.stderr
    for run in (exp.bad, exp.good):
        assert rows[run.name]["accuracy"] == ACCURACY and rows[run.name]["final_train_loss"] == FINAL_TRAIN_LOSS


# --------------------------------------------------------------------------- status.json
STATUS_DAMAGE: dict[str, Damage] = {
    **COMMON,
    "stage-entry-is-a-string": lambda raw: b'{"stages": {"train": "done", "eval.exact.epoch_0": "done"}}',
    "unknown-state": lambda raw: b'{"stages": {"train": {"state": "finished?"}}}',
}


@pytest.mark.parametrize("kind", list(STATUS_DAMAGE))
def test_a_damaged_status_json_is_listed_as_damaged_and_ck_run_rebuilds_it(finished, ck, kind):
    exp = finished
    path = exp.bad / "status.json"
    written = damage(path, STATUS_DAMAGE[kind])

    # ck status: every run listed, the damaged one as damaged, exit 0 with a warning naming the file
    res, by_run = states(ck, exp.spec)
    assert_clear(res, path, "`ck run SPEC`", "status.json.damaged-", "`ck reset RUN_DIR STAGE`")
    assert by_run == {exp.bad.name: {"damaged"}, exp.good.name: {"done"}}

    # ck summarize: the other run summarized; the damaged run's rows say so
    res, rows = summary(ck, exp)
    assert_clear(res, path)
    assert rows[exp.good.name]["accuracy"] == ACCURACY and rows[exp.bad.name]["state"] == "damaged"

    # ck logs: the logs, and the warning
    res = ck("logs", str(exp.bad), "train")
    assert res.returncode == 0 and "stage train done" in res.stdout
    assert_clear(res, path)

    # ck run: moved aside (kept byte for byte), the run's stages redone from pending, the experiment finishes
    res = run_again(ck, exp)
    assert_clear(res, path, "moved aside", "pending")
    aside = list(exp.bad.glob("status.json.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == written
    assert "2 stage(s) submitted, 2 already done" in res.stdout  # the damaged run's two stages
    assert_finished(ck, exp)


# --------------------------------------------------------------------------- a run's spec.yaml
SPEC_DAMAGE: dict[str, Damage] = {**COMMON, "missing": lambda raw: None}


@pytest.mark.parametrize("kind", list(SPEC_DAMAGE))
def test_a_damaged_run_spec_is_listed_as_damaged_and_ck_run_writes_it_again(finished, ck, kind):
    exp = finished
    path = exp.bad / "spec.yaml"
    damage(path, SPEC_DAMAGE[kind])

    res, by_run = states(ck, exp.spec)
    assert_clear(res, path, "`ck run SPEC`")
    assert by_run == {exp.bad.name: {"damaged"}, exp.good.name: {"done"}}

    res, rows = summary(ck, exp)
    assert_clear(res, path, "`ck run SPEC`")
    assert rows[exp.good.name]["accuracy"] == ACCURACY and exp.bad.name not in rows
    assert f"run {exp.bad.name} not summarized" in (exp.root / "summary.md").read_text()

    res = ck("stage", str(exp.bad), "train")  # what a scheduler runs: the same message
    assert res.returncode != 0
    assert_clear(res, path, "`ck run SPEC`")

    res = run_again(ck, exp)
    assert_clear(res, path, "written again")
    assert "0 stage(s) submitted, 4 already done" in res.stdout  # its status and outputs were kept
    assert_finished(ck, exp)


# --------------------------------------------------------------------------- eval/results.json
RESULTS_DAMAGE: dict[str, Damage] = {
    **COMMON,
    "target-entry-is-a-string": lambda raw: b'{"exact": {"epoch_0": "1.0"}}',
    "missing": lambda raw: None,
}


@pytest.mark.parametrize("kind", list(RESULTS_DAMAGE))
def test_a_damaged_results_json_is_named_by_summarize_and_ck_run_evaluates_again(finished, ck, kind):
    exp = finished
    path = exp.bad / "eval" / "results.json"
    written = damage(path, RESULTS_DAMAGE[kind])

    res, rows = summary(ck, exp)
    assert_clear(res, path, "`ck run SPEC`")
    assert rows[exp.good.name]["accuracy"] == ACCURACY
    assert rows[exp.bad.name]["accuracy"] == ""  # missing, never a made-up number
    assert rows[exp.bad.name]["state"] == ("result missing" if written is None else "damaged")
    assert str(path) in (exp.root / "summary.md").read_text()

    res = run_again(ck, exp)
    assert_clear(res, path)
    assert "1 stage(s) submitted, 3 already done" in res.stdout  # the damaged run's evaluation only
    if written is not None:
        aside = list(path.parent.glob("results.json.damaged-*"))
        assert len(aside) == 1 and aside[0].read_bytes() == written
    assert_finished(ck, exp)


# --------------------------------------------------------------------------- train/metrics.jsonl
METRICS_DAMAGE: dict[str, Damage] = {
    "empty": COMMON["empty"],
    "binary-garbage": COMMON["binary-garbage"],
    "garbage-line-before-the-last": lambda raw: b"{not json\n" + raw,
    "row-is-a-list": lambda raw: b"[1, 2]\n" + raw,
}


@pytest.mark.parametrize("kind", list(METRICS_DAMAGE))
def test_damaged_metrics_are_named_by_summarize_and_ck_reset_then_run_trains_again(finished, ck, kind):
    exp = finished
    path = exp.bad / "train" / "metrics.jsonl"
    written = damage(path, METRICS_DAMAGE[kind])

    res, rows = summary(ck, exp)
    assert_clear(res, path, "`ck reset RUN_DIR train`")
    assert rows[exp.good.name]["final_train_loss"] == FINAL_TRAIN_LOSS
    assert rows[exp.bad.name]["final_train_loss"] == ""  # left empty, never a wrong loss
    assert rows[exp.bad.name]["accuracy"] == ACCURACY  # its evaluation is intact

    res = ck("reset", str(exp.spec), "train", "--run", exp.bad.name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "train, eval.exact.epoch_0" in res.stdout  # the evaluation of its adapter goes with it
    aside = list(exp.bad.glob("train.reset-*"))
    assert len(aside) == 1 and (aside[0] / "metrics.jsonl").read_bytes() == written
    assert states(ck, exp.spec)[1][exp.bad.name] == {"pending"}

    res = run_again(ck, exp)
    assert "2 stage(s) submitted, 2 already done" in res.stdout
    assert_finished(ck, exp)


# --------------------------------------------------------------------------- ck reset
def test_ck_reset_refuses_a_stage_running_in_a_live_process_then_resets_it(finished, ck):
    from cruijff_kit import status

    exp = finished
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        status.update_stage(exp.bad, "train", state=status.RUNNING, pid=live.pid, host=os.uname().nodename,
                            scheduler="local")
        res = ck("reset", str(exp.bad), "train")
        assert res.returncode != 0 and "Traceback" not in res.stderr
        assert f"process {live.pid}" in res.stderr and "`ck cancel SPEC`" in res.stderr, res.stderr
        assert (exp.bad / "train" / "epoch_0" / "adapter" / "adapter_config.json").exists()  # nothing moved
        assert status.stage_state(exp.bad, "train") == status.RUNNING
    finally:
        live.communicate(b"")  # the process ends: the stage is no longer running anywhere

    res = ck("reset", str(exp.spec), "train")  # two runs: which one?
    assert res.returncode != 0 and "--run NAME" in res.stderr and exp.bad.name in res.stderr

    res = ck("reset", str(exp.bad), "train")
    assert res.returncode == 0, res.stderr
    (aside,) = exp.bad.glob("train.reset-*")
    assert (aside / "epoch_0" / "adapter" / "adapter_config.json").exists()  # moved aside, not deleted
    (eval_aside,) = (exp.bad / "eval" / "exact").glob("epoch_0.reset-*")
    assert json.loads((eval_aside / "results.json").read_text())["exact"]["epoch_0"]["accuracy"]["value"] == 1.0
    res = run_again(ck, exp)
    assert "2 stage(s) submitted, 2 already done" in res.stdout
    assert_finished(ck, exp)


# --------------------------------------------------------------------------- the experiment's own files
EXPERIMENT_DAMAGE = {
    "spec-missing": ("spec.yaml", lambda raw: None),
    "plan-missing": ("plan.md", lambda raw: None),
    "spec-binary-garbage": ("spec.yaml", COMMON["binary-garbage"]),
    "plan-empty": ("plan.md", COMMON["empty"]),
}


@pytest.mark.parametrize("kind", list(EXPERIMENT_DAMAGE))
def test_a_damaged_experiment_spec_or_plan_is_named_and_ck_run_writes_it_again(finished, ck, kind):
    exp = finished
    name, how = EXPERIMENT_DAMAGE[kind]
    damage(exp.root / name, how)

    res, by_run = states(ck, exp.root)  # the experiment folder, not the spec: found through them
    assert_clear(res, exp.root / name, "`ck run SPEC`")
    assert by_run == {exp.bad.name: {"done"}, exp.good.name: {"done"}}

    res = run_again(ck, exp)
    assert "0 stage(s) submitted, 4 already done" in res.stdout
    res = ck("status", str(exp.root))
    assert res.returncode == 0 and "Warning" not in res.stderr, res.stderr


# --------------------------------------------------------------------------- hub cache metadata
REF_DAMAGE = {
    "empty": b"",
    "binary-garbage": b"\x00\xff\xfe\x80",
    "not-a-commit": b"../../../elsewhere\n",
}


@pytest.mark.parametrize("kind", list(REF_DAMAGE))
def test_a_damaged_hub_cache_ref_names_the_file_and_the_download_command(tmp_path, with_toy, ck, kind):
    spec = write_spec(tmp_path, SPEC)
    (tmp_path / "ck.profile.yaml").write_text("models_cache: cache\n")
    repo = tmp_path / "cache" / "models--some-org--some-model"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    ref = repo / "refs" / "main"
    ref.write_bytes(REF_DAMAGE[kind])

    res = ck("validate", str(spec))
    assert res.returncode != 0
    assert_clear(res, ref, "`ck models download some-org/some-model`")

    ref.write_text(commit)  # what `ck models download` writes
    ck("validate", str(spec), check=True)
    from cruijff_kit._engine.hubcache import find_cached

    assert find_cached("some-org/some-model", tmp_path / "cache") == repo / "snapshots" / commit


# --------------------------------------------------------------------------- ck cancel, ck stage writing results
SPEC_WITH_BASE = SPEC.replace("include_base: false", "include_base: true")
QUICK_DAMAGE = {k: COMMON[k] for k in ("truncated", "list-not-object")}


@pytest.fixture
def written(tmp_path: Path, with_toy: Path) -> Experiment:
    """Two planned toy runs (base and epoch_0 evaluations), folders written in this process, nothing run."""
    from cruijff_kit.engine import load_spec, make_plan, write_experiment

    spec = write_spec(tmp_path, SPEC_WITH_BASE)
    plan = make_plan(load_spec(spec))
    write_experiment(plan)
    runs = sorted(r.layout.root for r in plan.runs)
    return Experiment(spec, plan.layout.root, runs[0], runs[1])


@pytest.mark.parametrize("kind", list(QUICK_DAMAGE))
def test_ck_cancel_cancels_every_run_it_can_and_names_the_damaged_one(written, ck, kind):
    """The first run's status.json is damaged; the second run's train stage runs in a live local process.
    `ck cancel` stops that process and marks it cancelled, then exits non-zero naming the damaged file."""
    from cruijff_kit import status

    exp = written
    # a stage process as the local scheduler starts it (a session of its own; its pid is its group)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        status.update_stage(exp.good, "train", state="running", scheduler="local", job_id=str(proc.pid),
                            pid=proc.pid, host=os.uname().nodename)
        path = exp.bad / "status.json"
        bad = damage(path, QUICK_DAMAGE[kind])
        res = ck("cancel", str(exp.spec))
        assert res.returncode == 2, res.stdout + res.stderr
        assert_clear(res, path, f"run {exp.bad.name}", "Cancelled 1 stage(s)", "could not cancel",
                     str(exp.bad / ".claims"))
        assert proc.wait(timeout=60) == -15  # SIGTERM, sent by the local scheduler's cancel
        assert status.read(exp.good)["stages"]["train"]["state"] == "cancelled"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # nothing else was touched: the damaged file stays as it was, for the user to recover
    assert path.read_bytes() == bad
    assert not list(exp.bad.glob("status.json.damaged-*"))


RESULTS_WRITE_DAMAGE: dict[str, Damage] = {
    **COMMON,
    "target-entry-is-a-string": lambda raw: b'{"exact": {"epoch_0": "1.0"}}',
}


@pytest.mark.parametrize("kind", list(RESULTS_WRITE_DAMAGE))
def test_ck_stage_moves_a_damaged_results_json_aside_then_writes_and_ck_run_redoes_the_rest(written, ck, kind):
    """`ck stage` of an eval stage finds results.json damaged: it says so naming the file and the recovery,
    moves it aside byte for byte, writes its own result, and `ck run` evaluates the other target again."""
    from cruijff_kit import status
    from cruijff_kit.engine import run_stage

    exp = written
    for stage in ("train", "eval.exact.base", "eval.exact.epoch_0"):  # the base eval runs in its shared folder
        run_stage(exp.bad, stage)
    path = exp.bad / "eval" / "results.json"
    pointer = json.loads(path.read_text())["exact"]["base"]["shared"]  # the base eval both runs share
    assert set(json.loads(path.read_text())["exact"]) == {"base", "epoch_0"}
    bad = damage(path, RESULTS_WRITE_DAMAGE[kind])

    res = ck("stage", str(exp.bad), "eval.exact.epoch_0")
    assert res.returncode == 0, res.stdout + res.stderr
    assert_clear(res, path, "is damaged", "moved aside to results.json.damaged-", "`ck run SPEC`")
    (aside,) = exp.bad.glob("eval/results.json.damaged-*")
    assert aside.read_bytes() == bad  # kept, never deleted
    # the toy evaluator scores 1.0 on an adapter; the pointer to the shared base result is in the moved-aside file only
    written_now = json.loads(path.read_text())
    assert list(written_now) == ["exact"] and list(written_now["exact"]) == ["epoch_0"]
    assert written_now["exact"]["epoch_0"]["accuracy"] == {"value": 1.0, "stderr": 0.0}
    assert status.read(exp.bad)["stages"]["eval.exact.epoch_0"]["state"] == "done"

    res = run_again(ck, exp)  # the good run's train and epoch_0; the bad run's pointer is written again
    assert "2 stage(s) submitted, 3 already done" in res.stdout, res.stdout
    results = json.loads(path.read_text())["exact"]
    assert results["base"] == {"shared": pointer} and results["epoch_0"]["accuracy"]["value"] == 1.0
    shared = json.loads((exp.root / pointer / "eval" / "results.json").read_text())["exact"]
    assert shared["base"]["accuracy"]["value"] == 0.5
