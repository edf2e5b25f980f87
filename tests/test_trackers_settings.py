"""What each tracker is told about a run (``cruijff_kit.training.tracker_settings``), the order in which
the spec, the environment and the experiment decide it, and the spec errors around ``train.trackers``.

Fast: no tracker is imported and nothing trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from torchtune_fixtures import LLAMA32_1B, write_config, write_tt_spec
from trl_fixtures import plan_spec, write_trl_spec

from cruijff_kit import training
from cruijff_kit._base.errors import SpecError

SPEC: dict[str, Any] = {
    "experiment": "lr-sweep",
    "seed": 7,
    "model": {"path": "org/model", "adapter": None},
    "train": {"plugin": "trl", "lora": {"rank": 4, "targets": ["q_proj", "v_proj"]}, "packing": False,
              "trainer_args": {}, "learning_rate": 0.01},
    "run": {"name": "brave-otter-a1b2c3", "sweep": {"train.learning_rate": 0.01}},
}
TRAIN_DIR = Path("/runs/lr-sweep/runs/brave-otter-a1b2c3/train")


def settings(options: dict[str, Any] | None = None, env: dict[str, str] | None = None,
             report_to: tuple[str, ...] = ("wandb", "mlflow")) -> training.TrackerSettings:
    return training.tracker_settings(SPEC, list(report_to), training.TrackerOptions.model_validate(options or {}),
                                     train_dir=TRAIN_DIR, env=env or {})


def test_defaults_group_a_sweep_by_its_experiment() -> None:
    found = settings()
    assert found.wandb == {"project": "lr-sweep", "group": "lr-sweep", "name": "brave-otter-a1b2c3",
                           "dir": str(TRAIN_DIR)}  # no entity: W&B's default
    assert found.mlflow == {"experiment": "lr-sweep", "run_name": "brave-otter-a1b2c3", "tracking_uri": None}
    assert found.tensorboard_dir == TRAIN_DIR / "tensorboard"
    assert found.config == SPEC
    assert found.sources == {"wandb.project": "experiment", "wandb.group": "experiment", "wandb.dir": "run folder",
                             "mlflow.experiment": "experiment"}


def test_the_environment_wins_over_the_experiment_and_the_spec_over_both() -> None:
    env = {"WANDB_PROJECT": "env-p", "WANDB_RUN_GROUP": "env-g", "WANDB_ENTITY": "env-e", "WANDB_DIR": "/wb",
           "MLFLOW_EXPERIMENT_NAME": "env-x", "MLFLOW_TRACKING_URI": "http://env:5000"}
    from_env = settings(env=env)
    assert from_env.wandb == {"project": "env-p", "group": "env-g", "name": "brave-otter-a1b2c3", "dir": "/wb",
                              "entity": "env-e"}
    assert from_env.mlflow == {"experiment": "env-x", "run_name": "brave-otter-a1b2c3",
                               "tracking_uri": "http://env:5000"}
    assert from_env.sources["wandb.project"] == "WANDB_PROJECT"
    options = {"wandb": {"project": "spec-p", "group": "spec-g", "entity": "spec-e"},
               "mlflow": {"experiment": "spec-x", "tracking_uri": "file:///store"}}
    from_spec = settings(options, env=env)
    assert from_spec.wandb == {"project": "spec-p", "group": "spec-g", "name": "brave-otter-a1b2c3", "dir": "/wb",
                               "entity": "spec-e"}
    assert from_spec.mlflow == {"experiment": "spec-x", "run_name": "brave-otter-a1b2c3",
                                "tracking_uri": "file:///store"}
    assert {k: v for k, v in from_spec.sources.items() if k != "wandb.dir"} == dict.fromkeys(
        ["wandb.project", "wandb.group", "wandb.entity", "mlflow.experiment", "mlflow.tracking_uri"], "spec")


def test_an_empty_variable_is_not_set_and_the_run_name_is_always_the_runs() -> None:
    found = settings(env={"WANDB_PROJECT": "", "WANDB_NAME": "other", "MLFLOW_EXPERIMENT_NAME": ""})
    assert found.wandb["project"] == "lr-sweep" and found.wandb["name"] == "brave-otter-a1b2c3"
    assert found.mlflow["experiment"] == "lr-sweep"


def test_config_and_params_hold_no_secret() -> None:
    token = "hf_abcdefghijklmnop0123456789"
    spec = {**SPEC, "prompt": {"template": f"key {token} {{input}}"}}
    found = training.tracker_settings(spec, ["wandb", "mlflow"], training.TrackerOptions(), train_dir=TRAIN_DIR,
                                      env={"HF_TOKEN": token})
    assert found.config["prompt"]["template"] == "key <HF_TOKEN> {input}"
    assert found.params["prompt.template"] == "key <HF_TOKEN> {input}"
    assert token not in repr(found)


def test_flat_params_by_hand() -> None:
    assert training.flat_params({"a": {"b": 1, "c": [1, "x"], "d": {}}, "e": None, "f": "text", "g": True,
                                 "h": 0.5}) == {"a.b": "1", "a.c": '[1, "x"]', "a.d": "{}", "e": "null", "f": "text",
                                                "g": "true", "h": "0.5"}
    cut = training.flat_params({"t": "x" * 7000})["t"]
    assert len(cut) == 6000 and cut.endswith("...")


def test_describe_names_where_each_value_came_from() -> None:
    lines = settings({"wandb": {"group": "g"}}, env={"WANDB_PROJECT": "p"},
                     report_to=("wandb", "mlflow", "tensorboard")).describe()
    assert lines[0] == ("W&B run 'brave-otter-a1b2c3': project 'p' (WANDB_PROJECT), group 'g' (spec), "
                        f"dir '{TRAIN_DIR}' (run folder)")
    assert lines[1] == "MLflow run 'brave-otter-a1b2c3': experiment 'lr-sweep' (experiment)"
    assert lines[2] == f"TensorBoard event files in {TRAIN_DIR / 'tensorboard'}"


def test_options_of_a_tracker_not_in_report_to_are_an_error(tmp_path: Path) -> None:
    from test_trl_plan import QWEN25_05B, fake_model

    model = fake_model(tmp_path / "model", QWEN25_05B)
    spec = write_trl_spec(tmp_path / "trl", model, train={"report_to": ["mlflow"],
                                                           "trackers": {"wandb": {"project": "p"}}})
    with pytest.raises(SpecError) as err:
        plan_spec(spec)
    text = str(err.value)
    assert str(spec) in text and "trackers.wandb sets project" in text and "add wandb to train.report_to" in text

    tt_model = write_config(tmp_path / "tt-model", LLAMA32_1B)
    spec = write_tt_spec(tmp_path / "tt", tt_model, train={"trackers": {"mlflow": {"experiment": "x"}}})
    with pytest.raises(SpecError) as err:
        plan_spec(spec)
    assert "trackers.mlflow sets experiment" in str(err.value) and "report_to" in str(err.value)


def test_unknown_tracker_option_is_an_error(tmp_path: Path) -> None:
    tt_model = write_config(tmp_path / "tt-model", LLAMA32_1B)
    spec = write_tt_spec(tmp_path / "tt", tt_model, train={"report_to": ["wandb"],
                                                           "trackers": {"wandb": {"projcet": "x"}}})
    with pytest.raises(SpecError) as err:
        plan_spec(spec)
    assert "projcet" in str(err.value)


def test_torchtune_plan_names_the_extra_of_a_missing_tracker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cruijff_kit.training import _trackers

    real = _trackers.find_spec
    monkeypatch.setattr(_trackers, "find_spec", lambda name: None if name == "mlflow" else real(name))
    tt_model = write_config(tmp_path / "tt-model", LLAMA32_1B)
    spec = write_tt_spec(tmp_path / "tt", tt_model, train={"report_to": ["tensorboard", "mlflow"]})
    with pytest.raises(SpecError) as err:
        plan_spec(spec)
    text = str(err.value)
    assert "train.report_to" in text and "['mlflow']" in text
    assert "pip install 'cruijff-kit-torchtune[mlflow]'" in text


def test_torchtune_metric_logger_section() -> None:
    from cruijff_kit_torchtune.trackers import hf_names, metric_logger_config

    spec_file = TRAIN_DIR.parent / "spec.yaml"
    assert metric_logger_config(settings(report_to=()), spec_file) == {
        "_component_": "cruijff_kit_torchtune.recipe.ConsoleLogger"}
    section = metric_logger_config(settings(report_to=("mlflow", "tensorboard")), spec_file)
    assert section == {"_component_": "cruijff_kit_torchtune.trackers.TrackerLogger", "spec_file": str(spec_file),
                       "mlflow": {"experiment": "lr-sweep", "run_name": "brave-otter-a1b2c3", "tracking_uri": None},
                       "tensorboard": {"log_dir": str(TRAIN_DIR / "tensorboard")}}
    payload = {"loss": 2.5, "lr": 0.01, "tokens_per_second_per_gpu": 100, "eval_loss": 2.0}
    assert hf_names(payload, prefixed=False) == {"loss": 2.5, "learning_rate": 0.01,
                                                 "tokens_per_second_per_gpu": 100.0, "eval_loss": 2.0}
    assert hf_names(payload, prefixed=True) == {"train/loss": 2.5, "train/learning_rate": 0.01,
                                                "train/tokens_per_second_per_gpu": 100.0, "eval/loss": 2.0}


def test_tracker_and_upload_settings_keep_the_run_name(tmp_path: Path) -> None:
    """Where metrics are reported (or the adapter uploaded) changes no result: the run keeps its name and
    nothing retrains; a setting that changes the result gives a new name."""
    from test_trl_plan import QWEN25_05B, fake_model

    model = fake_model(tmp_path / "model", QWEN25_05B)
    names = {}
    for label, train in {"plain": {}, "trackers": {"report_to": ["wandb", "mlflow"],
                                                   "trackers": {"wandb": {"project": "p", "group": "g"}}},
                         "upload": {"push_to_hub": "me/adapter", "hub_private": False},
                         "lr": {"learning_rate": 1e-3}}.items():
        names[label] = plan_spec(write_trl_spec(tmp_path / "trl", model, train=train)).runs[0].name
    assert names["plain"] == names["trackers"] == names["upload"]
    assert names["lr"] != names["plain"]

    tt_model = write_config(tmp_path / "tt-model", LLAMA32_1B)
    plain = plan_spec(write_tt_spec(tmp_path / "tt", tt_model)).runs[0].name
    tracked = plan_spec(write_tt_spec(tmp_path / "tt", tt_model,
                                      train={"report_to": ["mlflow"], "trackers": {"mlflow": {"experiment": "x"}}}))
    assert tracked.runs[0].name == plain
