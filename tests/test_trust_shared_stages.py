"""Identical stages run once: a stage several runs of an experiment would compute identically (the
base-model eval of every run of a sweep) executes once, in ``shared/<name>/``, and every run points to it.

Everything goes through the real `ck` (subprocesses) with the toy plugin (no torch): the toy evaluator
writes one ``log.json`` per evaluation it makes, so counting those files counts evaluations.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import write_spec

TOY = """
experiment: toy
model: {path: some-org/some-model}
dataset: {plugin: toy-data}
train: {plugin: toy, epochs: 1, steps_per_epoch: 2}
eval:
  - {plugin: toy-eval, task: exact}
sweep:
  train.learning_rate: [0.0001, 0.0002, 0.0003]
"""


def _json(res: subprocess.CompletedProcess[str]) -> Any:
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
    return json.loads(res.stdout)


def _exp(tmp_path: Path) -> Path:
    return tmp_path / "runs" / "toy"


def _logs(exp: Path, target: str = "base") -> list[Path]:
    """Every evaluation of ``target`` the toy evaluator made in the experiment."""
    return sorted(exp.rglob(f"eval/exact/{target}/log.json"))


def _status(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "status.json").read_text())["stages"]


def test_the_base_eval_of_a_sweep_runs_once_and_every_run_points_to_it(tmp_path, with_toy, ck):
    spec = write_spec(tmp_path, TOY)
    ran = _json(ck("run", str(spec), "--json"))
    exp = _exp(tmp_path)
    runs = sorted(p.name for p in (exp / "runs").iterdir())
    assert len(runs) == 3
    # 3 trains + 3 epoch evals + the base eval once = 7 stages executed
    assert len(ran["submitted"]) == 7 and ran["unfinished"] == []

    logs = _logs(exp)
    assert len(logs) == 1, logs  # one base-model evaluation for the whole experiment
    shared = logs[0].parents[3]
    assert shared.parent == exp / "shared"
    assert len(_logs(exp, "epoch_0")) == 3  # each run's own checkpoint, evaluated in its own folder
    meta = yaml.safe_load((shared / "spec.yaml").read_text())["run"]
    assert meta["stages"] == ["eval.exact.base"] and sorted(meta["shared"]["used_by"]) == runs
    assert _status(shared)["eval.exact.base"]["state"] == "done"
    assert _status(shared)["eval.exact.base"]["attempts"] == 1
    pointer = f"shared/{shared.name}"
    for name in runs:
        run = exp / "runs" / name
        assert _status(run)["eval.exact.base"]["shared"] == pointer
        assert "state" not in _status(run)["eval.exact.base"]  # the state lives in the shared folder only
        assert json.loads((run / "eval" / "results.json").read_text())["exact"]["base"] == {"shared": pointer}
        assert not (run / "eval" / "exact" / "base").exists()

    rows = _json(ck("status", str(spec), "--json"))
    base = [r for r in rows if r["stage"] == "eval.exact.base"]
    assert sorted(r["run"] for r in base) == runs
    assert {(r["state"], r["shared"]) for r in base} == {("done", pointer)}
    shown = ck("status", str(spec))
    assert shown.returncode == 0 and "done (shared)" in shown.stdout and shared.name in shown.stdout

    plan = (exp / "plan.md").read_text()
    assert f"eval.exact.base in `shared/{shared.name}`, for 3 runs" in plan

    again = _json(ck("run", str(spec), "--json"))
    assert again["submitted"] == [] and again["already_done"] == 7


@pytest.mark.parametrize(("sweep", "shared"), [
    # changes only the training: the base model is evaluated the same way in every run
    ({"train.learning_rate": [0.0001, 0.0002]}, 1),
    ({"train.lora.rank": [4, 8], "train.epochs": [1, 2]}, 1),
    # changes what the base eval computes or how the base model is loaded: nothing shared
    ({"seed": [1, 2]}, 0),
    ({"train.method": ["lora", "qlora"]}, 0),
    ({"train.chat_template": ["{{ messages }}", "{% for m in messages %}{{ m.content }}{% endfor %}"]}, 0),
    ({"model.revision": ["main", "v2"]}, 0),
    ({"dataset.rows": [8, 9]}, 0),
    ({"prompt.system": ["Answer.", "Answer briefly."]}, 0),
    ({"eval.0.split": ["validation", "test"]}, 0),
    ({"eval.0.sleep_seconds": [0, 0.01]}, 0),
])
def test_only_stages_with_the_same_identity_are_shared(tmp_path, with_toy, sweep, shared):
    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.spec import load_spec

    text = TOY.split("sweep:")[0] + "sweep:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in sweep.items())
    plan = make_plan(load_spec(write_spec(tmp_path, text)))
    assert len(plan.runs) > 1 and len(plan.shared) == shared, [s.name for s in plan.shared]
    if shared:
        assert [s.name for s in plan.shared[0].stages] == ["eval.exact.base"]
        assert sorted(plan.shared[0].spec["run"]["shared"]["used_by"]) == sorted(r.name for r in plan.runs)
        assert len(plan.jobs()) == sum(len(r.stages) for r in plan.runs) - len(plan.runs) + 1
    else:
        assert plan.pointers == {} and len(plan.jobs()) == sum(len(r.stages) for r in plan.runs)


def test_two_evaluations_of_one_run_are_not_merged_into_one(tmp_path, with_toy, ck):
    text = TOY.replace("  - {plugin: toy-eval, task: exact}",
                       "  - {plugin: toy-eval, task: exact}\n  - {plugin: toy-eval, task: exact, name: again}")
    planned = _json(ck("plan", str(write_spec(tmp_path, text)), "--json"))
    assert sorted(s["stage"] for s in planned["shared"]) == ["eval.again.base", "eval.exact.base"]


def test_force_runs_the_shared_stage_once_again(tmp_path, with_toy, ck):
    spec = write_spec(tmp_path, TOY)
    _json(ck("run", str(spec), "--json"))
    forced = _json(ck("run", str(spec), "--force", "--json"))
    assert len(forced["submitted"]) == 7
    exp = _exp(tmp_path)
    logs = _logs(exp)
    assert len(logs) == 1
    assert _status(logs[0].parents[3])["eval.exact.base"]["attempts"] == 2


def test_reset_from_a_run_resets_the_shared_stage_for_every_run(tmp_path, with_toy, ck):
    spec = write_spec(tmp_path, TOY)
    _json(ck("run", str(spec), "--json"))
    exp = _exp(tmp_path)
    runs = sorted((exp / "runs").iterdir())
    res = ck("reset", str(runs[0]), "eval.exact.base")
    assert res.returncode == 0, res.stderr
    assert "is shared" in res.stdout and "for 3 runs" in res.stdout
    shared = next((exp / "shared").iterdir())
    assert _status(shared)["eval.exact.base"]["state"] == "pending"
    assert list(shared.glob("eval/exact/base.reset-*/log.json"))  # moved aside, not deleted
    rows = _json(ck("status", str(spec), "--json"))
    assert {r["state"] for r in rows if r["stage"] == "eval.exact.base"} == {"pending"}
    again = _json(ck("run", str(spec), "--json"))
    assert [(s["run"], s["stage"]) for s in again["submitted"]] == [(shared.name, "eval.exact.base")]


def test_a_shared_stage_run_by_hand_from_a_run_folder_runs_in_its_shared_folder(tmp_path, with_toy, ck):
    spec = write_spec(tmp_path, TOY)
    _json(ck("run", str(spec), "--dry-run", "--json"))  # writes the folders, runs nothing
    exp = _exp(tmp_path)
    run = sorted((exp / "runs").iterdir())[0]
    res = ck("stage", str(run), "eval.exact.base")
    assert res.returncode == 0, res.stderr
    assert "is shared: it runs once" in res.stderr
    assert _logs(exp) and all(p.is_relative_to(exp / "shared") for p in _logs(exp))
    assert not (run / "eval" / "exact" / "base").exists()


def test_cancel_stops_a_running_shared_stage(tmp_path, with_toy, ck):
    # only the base model is evaluated (no checkpoints), slowly: it is still running when cancelled
    spec = write_spec(tmp_path, TOY.replace("{plugin: toy-eval, task: exact}",
                                            "{plugin: toy-eval, task: exact, checkpoints: none, sleep_seconds: 120}"))
    exp = _exp(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "cruijff_kit", "run", str(spec)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        shared: Path | None = None
        while time.monotonic() < deadline:
            found = list((exp / "shared").glob("*/status.json")) if (exp / "shared").is_dir() else []
            if found and _status(found[0].parent).get("eval.exact.base", {}).get("state") == "running":
                shared = found[0].parent
                break
            time.sleep(0.2)
        assert shared is not None, "the shared stage never started"
        res = ck("cancel", str(spec))
        assert res.returncode == 0, res.stderr
        assert _status(shared)["eval.exact.base"]["state"] == "cancelled"
        rows = _json(ck("status", str(spec), "--json"))
        assert {r["state"] for r in rows if r["stage"] == "eval.exact.base"} == {"cancelled"}
    finally:
        proc.kill()
        proc.wait(timeout=60)


def test_an_archived_experiment_keeps_its_shared_stages(tmp_path, with_toy, ck):
    spec = write_spec(tmp_path, TOY)
    _json(ck("run", str(spec), "--json"))
    res = ck("archive", str(_exp(tmp_path)), str(tmp_path / "archive"))
    assert res.returncode == 0, res.stderr
    copy = tmp_path / "archive" / "toy"
    assert len(_logs(copy)) == 1 and _logs(copy)[0].is_relative_to(copy / "shared")
    rows = _json(ck("status", str(copy), "--json"))  # the pointers are relative: they resolve in the copy
    assert {r["state"] for r in rows if r["stage"] == "eval.exact.base"} == {"done"}


def test_a_run_added_later_shares_and_keeps_the_earlier_result(tmp_path, with_toy, ck):
    one = write_spec(tmp_path, TOY.replace("[0.0001, 0.0002, 0.0003]", "[0.0001]"))
    _json(ck("run", str(one), "--json"))
    exp = _exp(tmp_path)
    first = next((exp / "runs").iterdir())
    assert (first / "eval" / "exact" / "base" / "log.json").is_file()  # one run: nothing to share
    own = json.loads((first / "eval" / "results.json").read_text())["exact"]["base"]

    two = write_spec(tmp_path, TOY.replace("[0.0001, 0.0002, 0.0003]", "[0.0001, 0.0002]"))
    res = ck("run", str(two), "--json")
    assert res.returncode == 0, res.stderr
    assert "its own earlier result was moved" in res.stderr
    kept = json.loads((first / "eval" / "exact" / "base" / "own-result.json").read_text())
    assert kept == {"exact": {"base": own}}
    assert (first / "eval" / "exact" / "base" / "log.json").is_file()  # its log stays where it was
    assert len(list((exp / "shared").glob("*/eval/exact/base/log.json"))) == 1


def test_a_sweep_over_scheduler_settings_only_is_refused(tmp_path, with_toy, ck):
    text = TOY.replace("train.learning_rate: [0.0001, 0.0002, 0.0003]", 'scheduler.resources.time: ["1:00:00", "2:00:00"]')
    spec = write_spec(tmp_path, text.replace("eval:", "scheduler: {plugin: local}\neval:"))
    res = ck("validate", str(spec))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "make the same run" in res.stderr and "`scheduler.resources.time`" in res.stderr
    assert "'1:00:00'" in res.stderr and "'2:00:00'" in res.stderr
    # --set of the swept key makes the points one run, as asked
    res = ck("validate", str(spec), "--set", "scheduler.resources.time='3:00:00'", "--json")
    assert _json(res)["run_count"] == 1


def test_plots_draw_a_shared_base_once_and_never_average_different_base_evaluations():
    from cruijff_kit._summaries.plots import base_lines

    shared = [{"run": r, "target": "base", "accuracy": 0.5, "shared": "shared/exact-base-1"} for r in "abc"]
    tuned = [{"run": r, "target": "epoch_0", "accuracy": 0.9, "shared": None} for r in "abc"]
    assert base_lines(shared + tuned, "accuracy") == [("base model (shared by 3 runs)", 0.5)]
    # a lora and a qlora run evaluate the base model differently (4-bit for qlora): two lines, no mean of them
    own = [{"run": "lora", "target": "base", "accuracy": 0.5, "shared": None},
           {"run": "qlora", "target": "base", "accuracy": 0.25, "shared": None}]
    assert base_lines(own, "accuracy") == [("base model (lora)", 0.5), ("base model (qlora)", 0.25)]
    assert base_lines(own[:1], "accuracy") == [("base model", 0.5)]
    assert base_lines(tuned, "accuracy") == []
