"""`ck new experiment`: answers (given as options or typed at the prompts) become a spec that
`ck validate` accepts, with the sweep expanded into runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from inspect_fixtures import write_dataset

from cruijff_kit._base.errors import SpecError


def _ck(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cruijff_kit", *args], cwd=cwd, capture_output=True, text=True)


def test_options_give_a_valid_spec(tmp_path: Path, tiny_llama: Path) -> None:
    write_dataset(tmp_path)
    res = _ck("new", "experiment", "--yes", "--name", "cap-sweep", "--model", str(tiny_llama), "--data", "data.json",
              "--trainer", "trl", "--scheduler", "local", "--sweep", "train.learning_rate=1e-4,3e-4",
              "--out", "specs/spec.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    spec = yaml.safe_load((tmp_path / "specs" / "spec.yaml").read_text())
    assert spec["dataset"] == {"plugin": "json-instruct", "path": "../data.json"}  # relative to the spec
    assert spec["sweep"] == {"train.learning_rate": [1e-4, 3e-4]}
    assert spec["train"]["plugin"] == "trl" and spec["scheduler"] == {"plugin": "local"}
    val = _ck("validate", "specs/spec.yaml", cwd=tmp_path)
    assert val.returncode == 0, val.stdout + val.stderr

    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.spec import load_spec

    plan = make_plan(load_spec(tmp_path / "specs" / "spec.yaml"))
    assert len(plan.runs) == 2 and {r.type for r in plan.runs} == {"finetune"}
    again = _ck("new", "experiment", "--yes", "--out", "specs/spec.yaml", cwd=tmp_path)
    assert again.returncode != 0 and "exists already" in again.stderr


def test_prompts_give_a_control_run(tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from cruijff_kit._cli import _add_plugin_commands, cli

    _add_plugin_commands()  # `ck new` is a default plugin's command
    write_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    answers = ["ctrl", str(tiny_llama), "data.json", "none", "local", "inspect", "eval[0].split=test,validation"]
    res = CliRunner().invoke(cli, ["new", "experiment"], input="\n".join(answers) + "\n")
    assert res.exit_code == 0, res.output
    spec = yaml.safe_load((tmp_path / "spec.yaml").read_text())
    assert "train" not in spec and spec["eval"][0]["checkpoints"] == "none"
    val = _ck("validate", "spec.yaml", cwd=tmp_path)
    assert val.returncode == 0, val.stdout + val.stderr


def test_bad_sweep_is_explained() -> None:
    from cruijff_kit._scaffold.experiment import parse_sweep

    with pytest.raises(SpecError, match="KEY=V1,V2"):
        parse_sweep("train.learning_rate")
    assert parse_sweep("train.epochs=1, 2") == ("train.epochs", [1, 2])
