"""Spec fuzzing: random and mutated specs give our error (with a YAML path), never a bare traceback."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cruijff_kit._base.errors import CkError, SpecError
from cruijff_kit._engine.planner import make_plan
from cruijff_kit._engine.spec import load_spec

VALID: dict[str, Any] = {
    "experiment": "fuzz",
    "model": {"path": "org/model"},
    "dataset": {"plugin": "toy-data", "rows": 4},
    "train": {"plugin": "toy", "epochs": 2, "lora": {"rank": 4}, "save_epochs": "all"},
    "eval": [{"plugin": "toy-eval", "task": "t", "checkpoints": "last"}],
    "scheduler": {"plugin": "local", "resources": {"gpus": 0}},
    "sweep": {"train.lora.rank": [2, 4]},
}

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True),
                    st.text(max_size=8), st.lists(st.integers(-2, 3), max_size=3))
keys = st.sampled_from(["experiment", "model", "dataset", "train", "eval", "scheduler", "sweep", "seed",
                        "variants", "prompt", "lora", "rank", "epochs", "plugin", "path", "task",
                        "checkpoints", "save_epochs", "resources", "gpus", "train.lora.rank", "eval[0].task",
                        "bogus", "eval[5].task"])


def paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += paths(v, (*prefix, i))
    return out


def mutate(spec: dict[str, Any], where: tuple, action: str, key: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    if not where:
        return spec if action != "replace" else value
    parent = spec
    for part in where[:-1]:
        parent = parent[part]
    last = where[-1]
    if action == "replace":
        parent[last] = value
    elif action == "delete" and isinstance(parent, dict):
        del parent[last]
    elif action == "add" and isinstance(parent[last], dict):
        parent[last][key] = value
    return spec


def check(tmp_path, data: Any) -> None:
    spec = tmp_path / "spec.yaml"
    if isinstance(data, bytes):
        spec.write_bytes(data)
    else:
        spec.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    try:
        make_plan(load_spec(spec))
    except SpecError as exc:
        assert str(spec) in str(exc) or "--set" in str(exc)
    except CkError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_specs_give_spec_errors(tmp_path, with_toy, data):
    where = data.draw(st.sampled_from(paths(VALID)))
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    spec = mutate(VALID, where, action, data.draw(keys), data.draw(scalars))
    check(tmp_path, spec)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=60))
def test_random_text_gives_spec_errors(tmp_path, with_toy, text):
    check(tmp_path, text)


def test_valid_base_spec_plans(tmp_path, with_toy):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(VALID))
    assert len(make_plan(load_spec(spec)).runs) == 2


@pytest.mark.parametrize("bad", ["experiment: x\nmodel: {path: m}\ndataset: {plugin: toy-data}\n\tbad: tab\n",
                                 b"experiment: \xff\xfe\n"])
def test_unreadable_specs(tmp_path, with_toy, bad):
    check(tmp_path, bad)
