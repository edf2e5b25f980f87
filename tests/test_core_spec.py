"""Spec loading and validation: every user error gets a message naming file, YAML path and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_spec

from cruijff_kit._base.errors import SpecError
from cruijff_kit._engine.planner import make_plan
from cruijff_kit._engine.spec import load_spec, parse_overrides, parse_value, split_path

BASE = """
experiment: toy
model: {path: some-org/some-model}
dataset: {plugin: toy-data}
train: {plugin: toy, epochs: 2}
eval:
  - {plugin: toy-eval, task: exact}
"""


def plan_of(tmp_path: Path, text: str, sets: list[str] | None = None):
    spec = write_spec(tmp_path, text)
    return make_plan(load_spec(spec, parse_overrides(sets or [])))


def error_of(tmp_path: Path, text: str, sets: list[str] | None = None) -> SpecError:
    with pytest.raises(SpecError) as info:
        plan_of(tmp_path, text, sets)
    return info.value


def test_valid_spec_fills_defaults(tmp_path, with_toy):
    plan = plan_of(tmp_path, BASE)
    (run,) = plan.runs
    train = run.spec["train"]
    assert train["lora"]["alpha"] == 16.0  # 2 x default rank 8
    assert train["steps_per_epoch"] == 3  # the plugin's own default
    assert run.spec["scheduler"]["plugin"] == "local"
    assert [s.name for s in run.stages] == ["train", "eval.exact.base", "eval.exact.epoch_1"]


def test_unknown_top_level_key_suggests_closest(tmp_path, with_toy):
    err = error_of(tmp_path, BASE + "experimnt_notes: x\nsede: 3\n")
    assert "spec.yaml" in str(err)
    assert "unknown key `sede`" in str(err) or "unknown key `experimnt_notes`" in str(err)
    err = error_of(tmp_path, BASE.replace("experiment: toy", "experiment: toy\nsed: 1"))
    assert "`sed`" in str(err) and "Did you mean `seed`?" in str(err)


def test_unknown_plugin_option_names_yaml_path(tmp_path, with_toy):
    err = error_of(tmp_path, BASE.replace("epochs: 2", "epochs: 2, lora: {rnk: 4}"))
    assert err.path == "train.lora.rnk"
    assert "Did you mean `rank`?" in str(err)
    assert "`toy` trainer plugin" in str(err)


def test_wrong_value_names_expectation(tmp_path, with_toy):
    err = error_of(tmp_path, BASE.replace("epochs: 2", "epochs: 2, lora: {rank: 0}"))
    assert err.path == "train.lora.rank"
    assert "greater than 0" in str(err) and "got 0" in str(err)


def test_unknown_plugin_suggests_installed(tmp_path, with_toy):
    err = error_of(tmp_path, BASE.replace("plugin: toy,", "plugin: tyo,"))
    assert err.path == "train.plugin"
    assert "Unknown trainer plugin `tyo`" in str(err) and "Did you mean `toy`?" in str(err)


def test_key_unused_by_chosen_plugin_is_an_error(tmp_path, with_toy):
    err = error_of(tmp_path, BASE.replace("{plugin: toy-data}", "{plugin: toy-data, path: x.json}"))
    assert err.path == "dataset.path"
    assert "unknown key `path`" in str(err)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    bad = write_spec(tmp_path, "experiment: x\nmodel: [unclosed\n")
    with pytest.raises(SpecError, match=r"not valid YAML near line \d+"):
        load_spec(bad)
    lst = write_spec(tmp_path, "- a\n- b\n", "list.yaml")
    with pytest.raises(SpecError, match="must be a YAML mapping"):
        load_spec(lst)


def test_missing_required_key(tmp_path, with_toy):
    err = error_of(tmp_path, BASE.replace("model: {path: some-org/some-model}\n", ""))
    assert err.path == "model" and "required key `model` is missing" in str(err)


def test_set_beats_file_and_sweep_even_when_equal_to_default(tmp_path, with_toy):
    text = BASE + "sweep:\n  train.learning_rate: [0.1, 0.2]\n"
    plan = plan_of(tmp_path, text, ["train.learning_rate=2e-4"])
    # both sweep points collapse into one run whose value is the command line's (= the default)
    assert len(plan.runs) == 1
    assert plan.runs[0].spec["train"]["learning_rate"] == 2e-4
    plan = plan_of(tmp_path, BASE.replace("epochs: 2", "epochs: 2, learning_rate: 0.5"),
                   ["train.learning_rate=2e-4"])
    assert plan.runs[0].spec["train"]["learning_rate"] == 2e-4


def test_set_errors(tmp_path, with_toy):
    spec = write_spec(tmp_path, BASE)
    with pytest.raises(SpecError, match="dotted.path=value"):
        parse_overrides(["train.learning_rate"])
    with pytest.raises(SpecError, match="Did you mean `train`"):
        load_spec(spec, parse_overrides(["trian.epochs=3"]))


def test_parse_value_reads_numbers_like_a_researcher_means():
    assert parse_value("1e-4") == 1e-4
    assert parse_value("3") == 3
    assert parse_value("[4, 8]") == [4, 8]
    assert parse_value("true") is True
    assert parse_value("cosine") == "cosine"
    assert split_path("eval[0].checkpoints") == ["eval", 0, "checkpoints"]
    assert split_path("eval.1.task") == ["eval", 1, "task"]


def test_sweep_path_errors(tmp_path, with_toy):
    err = error_of(tmp_path, BASE + "sweep:\n  trian.epochs: [1, 2]\n")
    assert err.path == "sweep.trian.epochs" and "Did you mean `train`?" in str(err)
    err = error_of(tmp_path, BASE + "sweep:\n  train.lora.rnk: [1, 2]\n")
    assert err.path == "train.lora.rnk" and "set by the sweep" in str(err)


def test_checkpoint_never_saved_is_a_plan_error(tmp_path, with_toy):
    text = BASE.replace("epochs: 2}", "epochs: 2, save_epochs: last}").replace(
        "task: exact}", "task: exact, checkpoints: [0]}")
    err = error_of(tmp_path, text)
    assert err.path == "eval[0].checkpoints" and "never saved" in str(err)


def test_save_epochs_past_last_epoch(tmp_path, with_toy):
    err = error_of(tmp_path, BASE.replace("epochs: 2}", "epochs: 2, save_epochs: [2]}"))
    assert err.path == "train.save_epochs" or err.path == "train"
    assert "0-based" in str(err)


def test_prompt_precedence_most_specific_wins(tmp_path, with_toy):
    text = BASE.replace("train:", "prompt: {system: run-level, template: 'Q: {input}'}\ntrain:").replace(
        "task: exact}", "task: exact}\n  - {plugin: toy-eval, task: other, prompt: {system: task-level}}")
    (run,) = plan_of(tmp_path, text).runs
    assert run.spec["eval"][0]["prompt"] == {"system": "run-level", "template": "Q: {input}"}
    assert run.spec["eval"][1]["prompt"] == {"system": "task-level", "template": "Q: {input}"}
    # per run, through a variant
    text2 = text + "variants:\n  - {prompt.system: variant-level}\n"
    (run,) = plan_of(tmp_path, text2).runs
    assert run.spec["prompt"]["system"] == "variant-level"
    assert run.spec["eval"][0]["prompt"]["system"] == "variant-level"
    assert run.spec["eval"][1]["prompt"]["system"] == "task-level"


def test_run_types(tmp_path, with_toy):
    control = BASE.replace("train: {plugin: toy, epochs: 2}\n", "")
    (run,) = plan_of(tmp_path, control).runs
    assert run.type == "control" and [s.name for s in run.stages] == ["eval.exact.base"]
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    eval_only = control.replace("{path: some-org/some-model}", "{path: some-org/some-model, adapter: adapter}")
    (run,) = plan_of(tmp_path, eval_only).runs
    assert run.type == "eval-only"
    assert [s.name for s in run.stages] == ["eval.exact.adapter", "eval.exact.base"]
    assert run.spec["model"]["adapter"] == str(adapter.resolve())
    nothing = control.replace("eval:\n  - {plugin: toy-eval, task: exact}\n", "")
    assert "nothing to do" in str(error_of(tmp_path, nothing))


def test_duplicate_eval_names(tmp_path, with_toy):
    text = BASE + "  - {plugin: toy-eval, task: exact}\n"
    err = error_of(tmp_path, text)
    assert err.path == "eval[1]" and "`name:`" in str(err)


def test_empty_save_epochs_is_an_error(tmp_path, with_toy):
    err = error_of(tmp_path, BASE.replace("epochs: 2}", "epochs: 2, save_epochs: []}"))
    assert err.path.startswith("train.save_epochs") and "at least one epoch" in str(err)


@pytest.mark.parametrize(("extra", "overrides", "path", "origin"), [
    # the sweep sets the learning rate; the typo is the spec body's: no attribution
    ("sweep:\n  train.learning_rate: [1.0e-4, 2.0e-4]\n", ["train.lora.rnk=4"], "train.lora.rnk", "--set"),
    ("sweep:\n  train.learning_rate: [1.0e-4, 2.0e-4]\n", [], "train.epochs", None),
    ("sweep:\n  train.epochs: [1, -3]\n", [], "train.epochs", "the sweep"),
    ("variants:\n  - {train.epochs: -3}\n", [], "train.epochs", "a variant"),
    ("sweep:\n  seed: [1, -1]\n", [], "seed", "the sweep"),
])
def test_errors_name_the_sweep_only_for_values_it_set(tmp_path, with_toy, extra, overrides, path, origin):
    text = BASE + extra
    if origin is None:
        text = text.replace("epochs: 2", "epochs: -3")
    spec = write_spec(tmp_path, text)
    with pytest.raises(SpecError) as info:
        make_plan(load_spec(spec, parse_overrides(overrides)))
    err = info.value
    assert err.path == path, str(err)
    if origin is None:
        assert "set by" not in str(err), str(err)
    else:
        assert f"set by {origin})" in str(err), str(err)
        others = {"the sweep", "a variant", "--set"} - {origin}
        assert not any(f"set by {o}" in str(err) for o in others)
