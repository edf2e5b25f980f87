"""``examples/collabllm.yaml``, the whole CollabLLM recipe in one spec, is accepted by ``ck validate`` and
``ck plan`` with the model path overridden, and plans base and every epoch of both runs with the
multi-turn ``collab`` task; a mistyped option of that task is refused naming the file and the field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def example(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    return tmp_path / "examples" / "collabllm.yaml"


def test_validate_and_plan_accept_the_example(example: Path, tiny_llama: Path, ck) -> None:
    over = f"model.path={tiny_llama}"
    res = ck("validate", str(example), "--set", over, cwd=example.parent.parent)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid. 2 run(s), 8 stage(s)" in res.stdout
    res = ck("plan", str(example), "--set", over, "--no-write", "--json", cwd=example.parent.parent)
    assert res.returncode == 0, res.stdout + res.stderr
    plan = json.loads(res.stdout)
    stages = sorted(s for run in plan["runs"] for s in run["stages"])
    assert stages == sorted(["train", "eval.collab.base", "eval.collab.epoch_0", "eval.collab.epoch_1"] * 2)


def test_a_mistyped_collab_option_names_the_file_and_field(example: Path, tiny_llama: Path, ck) -> None:
    text = example.read_text().replace("    max_turns: 4\n    metrics:", "    max_turn: 4\n    metrics:")
    example.write_text(text)
    res = ck("validate", str(example), "--set", f"model.path={tiny_llama}", cwd=example.parent.parent)
    assert res.returncode != 0
    err = res.stdout + res.stderr
    assert "collabllm.yaml" in err and "eval[0].max_turn" in err and "max_turns" in err
