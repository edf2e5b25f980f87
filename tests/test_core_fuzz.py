"""Spec fuzzing: random and mutated specs give our error (with a YAML path), never a bare traceback."""

from __future__ import annotations

import copy
import re
from pathlib import Path
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


def rendered_paths(obj: Any, prefix: str = "") -> set[str]:
    """Every YAML path of ``obj`` written as errors write them: ``train.lora.rank``, ``eval[0].task``."""
    out = {prefix} if prefix else set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            out |= rendered_paths(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out |= rendered_paths(v, f"{prefix}[{i}]")
    return out


LINE = re.compile(r"is not valid YAML near line (\d+), column \d+: ")


def check_error(spec: Path, data: Any, exc: CkError) -> None:
    """``exc`` names ``spec`` and where in it the problem is: a YAML path that exists in ``data`` or that
    one of its sweep keys sets (or, for a missing key, that key under a parent that exists), the line of
    a syntax error, or that the document is no mapping at all (then there is no field to name)."""
    text = str(exc)
    assert isinstance(exc, SpecError), f"{type(exc).__name__} for a bad spec: {text}"
    assert exc.file == str(spec) and text.startswith(str(spec)), text
    if exc.path is None and (m := LINE.search(text)) is not None:  # a syntax error: named by its line
        lines = (data.decode("utf-8", "replace") if isinstance(data, bytes) else data).splitlines() or [""]
        assert 1 <= int(m.group(1)) <= len(lines) + 1, text
        return
    if exc.path is None and isinstance(data, bytes):
        assert text == f"{spec}: is not UTF-8 text."
        return
    # read with libyaml, the parser ck reads specs with (the pure-Python one refuses some text libyaml
    # accepts, e.g. a trailing tab after a scalar)
    loaded = yaml.load(data, Loader=yaml.CSafeLoader) if isinstance(data, str) else data
    if exc.path is None:  # the document itself is no mapping: there is no field to name
        assert not isinstance(loaded, dict), text
        # (a lone tag such as `!` is None to safe_load, an empty string to ck's stricter reader)
        shown = "str" if loaded is None else type(loaded).__name__
        assert text == f"{spec}: must be a YAML mapping (key: value), got {shown}.", text
        return
    loaded = {} if loaded is None else loaded  # an empty file reads as an empty mapping
    assert text.startswith(f"{spec} at `{exc.path}`: "), text
    known = rendered_paths(loaded)
    sweep = loaded.get("sweep") if isinstance(loaded.get("sweep"), dict) else {}
    for key in map(str, sweep):  # a sweep key makes its path (and the mappings above it) in every run
        known |= {key[:i] for i, ch in enumerate(key) if ch in ".["} | {key}
    if exc.path in known:
        return
    missing = re.search(r"required key `([^`]+)` is missing", exc.problem)
    assert missing is not None, f"path `{exc.path}` is not in the spec {sorted(known)}: {text}"
    parent = exc.path.removesuffix(missing.group(1)).removesuffix(".")
    assert exc.path.endswith(missing.group(1)) and (parent == "" or parent in known), text


def check(tmp_path: Path, data: Any) -> None:
    spec = tmp_path / "spec.yaml"
    if isinstance(data, bytes):
        spec.write_bytes(data)
    else:
        spec.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    try:
        make_plan(load_spec(spec))
    except CkError as exc:
        check_error(spec, data, exc)


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


@pytest.mark.parametrize(("bad", "expected"), [
    ("experiment: x\nmodel: {path: m}\ndataset: {plugin: toy-data}\n\tbad: tab\n",
     "is not valid YAML near line 4, column 1: found character that cannot start any token."),
    (b"experiment: \xff\xfe\n", "is not UTF-8 text."),
    # a control character: named by its line and column (the 21st character of line 3, after the é)
    ("experiment: x\nmodel: {path: m}\ndataset: {plugin: t\u00e9\x07}\n",
     "is not valid YAML near line 3, column 21: unacceptable character #x0007"),
])
def test_unreadable_specs(tmp_path, with_toy, bad, expected):
    check(tmp_path, bad)
    with pytest.raises(SpecError) as err:
        load_spec(tmp_path / "spec.yaml")
    assert str(err.value).startswith(f"{tmp_path / 'spec.yaml'}: {expected}")
