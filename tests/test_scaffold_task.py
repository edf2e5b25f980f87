"""`ck new task`: the generated inspect task runs under inspect on the tiny model, standalone (reading
a json-instruct file) and inside a spec (given the run's split)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_spec
from inspect_fixtures import write_dataset

pytest.importorskip("inspect_ai")


@pytest.fixture
def task_file(tmp_path: Path) -> Path:
    res = subprocess.run([sys.executable, "-m", "cruijff_kit", "new", "task", "shout-back", "--dir", str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    path = tmp_path / "shout_back.py"
    assert path.is_file() and "shout_back.py@shout_back" in res.stdout
    return path


@pytest.mark.integration
def test_task_runs_standalone_under_inspect(task_file: Path, tmp_path: Path, tiny_llama: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from inspect_ai import eval as inspect_eval

    data = write_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    (log,) = inspect_eval(task_file.name, model=f"ck/{tiny_llama}", task_args={"data": str(data), "max_tokens": 3},
                          limit=2, log_dir=str(tmp_path / "logs"), display="none",
                          model_args={"device": "cpu"})
    assert log.status == "success", log.error
    assert log.eval.task.endswith("shout_back") and len(log.samples) == 2
    assert [s.target for s in log.samples] == ["APPLE", "DOG"]
    names = {s.name for s in log.results.scores}
    assert {"match", "includes", "classification"} <= names


@pytest.mark.integration
def test_task_runs_in_a_spec(task_file: Path, tmp_path: Path, tiny_llama: Path) -> None:
    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.runner import write_experiment
    from cruijff_kit._engine.spec import load_spec
    from cruijff_kit._engine.stage import run_stage

    write_dataset(tmp_path)
    spec = write_spec(tmp_path, f"""
        experiment: scaffold-task
        model: {{path: {tiny_llama}}}
        dataset: {{plugin: json-instruct, path: data.json}}
        eval:
          - {{plugin: inspect, task: shout_back.py@shout_back, task_args: {{max_tokens: 3}}, device: cpu}}
    """)
    plan = make_plan(load_spec(spec))
    write_experiment(plan)
    run = plan.runs[0]
    from inspect_ai.log import read_eval_log

    res = run_stage(run.layout.root, "eval.shout_back.base")
    assert res["samples"] == 4
    assert set(json.loads(run.layout.results.read_text())) == {"shout_back"}
    # the run's test split, read through the task: its inputs and targets, answered with at most 3 tokens
    log = read_eval_log(str(run.layout.root / res["log"]))
    assert [(s.input[-1].text, s.target) for s in log.samples] == [(w, w.upper()) for w in ("apple", "dog", "kite", "moon")]
    assert all(s.output.usage.output_tokens <= 3 for s in log.samples)


def test_task_without_data_says_what_to_pass(task_file: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("shout_back_mod", task_file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(ValueError, match="-T data=FILE"):
        mod.shout_back()
