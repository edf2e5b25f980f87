"""``train.trainer_args``: fields of the trainer's own config class reach the trainer (read back from what
the trainer saved), and a misspelt key, a key a named option sets, or a key the run layout depends on is
refused at plan time with the YAML path and the fix."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from trl_fixtures import plan_spec, prepare_run, write_trl_spec

from cruijff_kit import SpecError
from cruijff_kit._api.kinds import TrainConfig

pytest.importorskip("trl")


# --------------------------------------------------------------------------- the shared check
def test_shared_check_names_path_option_reason_and_suggestion() -> None:
    from cruijff_kit.training import check_trainer_args

    kw: dict[str, Any] = {"known": ["optim", "learning_rate", "output_dir", "adam_beta1"],
                          "named": {"learning_rate": "train.learning_rate"},
                          "refused": {"output_dir": "the run layout depends on it"}, "owner": "X", "file": "s.yaml"}
    with pytest.raises(SpecError) as err:
        check_trainer_args({"optimm": "sgd"}, **kw)
    assert err.value.path == "train.trainer_args.optimm" and "Did you mean `optim`?" in str(err.value)
    assert "s.yaml" in str(err.value)
    with pytest.raises(SpecError) as err:
        check_trainer_args({"learning_rate": 0.1}, **kw)
    assert "set by train.learning_rate" in str(err.value) and "Set train.learning_rate instead" in str(err.value)
    with pytest.raises(SpecError, match="run layout depends on it") as err:
        check_trainer_args({"output_dir": "/tmp"}, **kw)
    assert err.value.path == "train.trainer_args.output_dir"
    with pytest.raises(SpecError) as err:  # close to a named key: says which option sets it
        check_trainer_args({"learning_rat": 0.1}, **kw)
    assert "Did you mean `learning_rate`? It is set by train.learning_rate" in str(err.value)
    check_trainer_args({"optim": "sgd", "adam_beta1": 0.8}, **kw)  # known and free: passes


@pytest.mark.parametrize("value", [{}, "torch.optim.SGD", None])
def test_shared_check_refuses_a_key_that_would_replace_named_keys_below_it(value: Any) -> None:
    """`optimizer` as a whole (empty, a scalar, null) would replace optimizer.lr and optimizer.weight_decay."""
    from cruijff_kit.training import check_trainer_args

    kw: dict[str, Any] = {"known": ["optimizer", "checkpointer"], "owner": "X", "file": "s.yaml",
                          "named": {"optimizer.lr": "train.learning_rate", "optimizer.weight_decay": "train.weight_decay"},
                          "refused": {"checkpointer.output_dir": "the run layout depends on it"}}
    with pytest.raises(SpecError) as err:
        check_trainer_args({"optimizer.betas": [0.9, 0.9], "optimizer": value}, **kw)
    text = str(err.value)
    assert err.value.path == "train.trainer_args.optimizer" and "s.yaml" in text
    assert "optimizer.lr, which train.learning_rate sets" in text
    assert "optimizer.weight_decay, which train.weight_decay sets" in text
    assert "`optimizer.<param>`" in text and "`optimizer._component_`" in text
    with pytest.raises(SpecError, match="checkpointer.output_dir, which cannot be changed .the run layout") as err:
        check_trainer_args({"checkpointer": value}, **kw)  # a refused key below counts the same
    assert err.value.path == "train.trainer_args.checkpointer"
    check_trainer_args({"optimizer.betas": [0.9, 0.9], "checkpointer.keep": 1}, **kw)  # keys below: pass


def test_a_trainer_that_does_not_read_trainer_args_refuses_them() -> None:
    from cruijff_kit import Trainer

    class Plain(Trainer):
        name = "plain"

    with pytest.raises(SpecError, match="does not read trainer_args") as err:
        Plain(TrainConfig.model_validate({"trainer_args": {"optim": "sgd"}}))
    assert err.value.path == "train.trainer_args"
    Plain(TrainConfig.model_validate({}))  # without trainer_args: built


# --------------------------------------------------------------------------- trl, plan time
@pytest.mark.parametrize(("args", "path", "words"), [
    ({"optimm": "sgd"}, "train.trainer_args.optimm", "Did you mean `optim`?"),
    ({"learning_rate": 0.1}, "train.trainer_args.learning_rate", "set by train.learning_rate"),
    ({"num_train_epochs": 3}, "train.trainer_args.num_train_epochs", "set by train.epochs"),
    ({"per_device_train_batch_size": 2}, "train.trainer_args.per_device_train_batch_size", "set by train.batch_size"),
    ({"output_dir": "/tmp/x"}, "train.trainer_args.output_dir", "cannot be set"),
    ({"save_strategy": "steps"}, "train.trainer_args.save_strategy", "run layout"),
    ({"eval_strategy": "no"}, "train.trainer_args.eval_strategy", "run layout"),
    ({"logging_strategy": "no"}, "train.trainer_args.logging_strategy", "run layout"),
    ({"truncation_mode": "keep_end"}, "train.trainer_args.truncation_mode", "max_seq_length cuts"),
    ({"adam_beta1": "high"}, "train.trainer_args.adam_beta1", "is not of its type `float`"),
    ({"optim": "adamw_nonsense"}, "train.trainer_args", "SFTConfig refuses these values"),
])
def test_trl_plan_refuses(tmp_path: Path, tiny_llama: Path, args: dict[str, Any], path: str, words: str) -> None:
    spec = write_trl_spec(tmp_path, tiny_llama, train={"epochs": 1, "trainer_args": args})
    with pytest.raises(SpecError) as err:
        plan_spec(spec)
    assert err.value.path == path, str(err.value)
    assert words in str(err.value) and str(spec) in str(err.value)


def test_trl_machine_dependent_values_are_left_to_the_stage(tmp_path: Path, tiny_llama: Path) -> None:
    """tf32 needs an Ampere GPU: a GPU run planned on a CPU machine is not refused for it; a CPU run is."""
    spec = write_trl_spec(tmp_path / "gpu", tiny_llama, resources={"gpus": 1},
                          train={"epochs": 1, "trainer_args": {"tf32": True, "ddp_backend": "nccl"}})
    assert plan_spec(spec).runs
    spec = write_trl_spec(tmp_path / "cpu", tiny_llama, train={"epochs": 1, "trainer_args": {"ddp_backend": "gloo"}})
    assert plan_spec(spec).runs
    spec = write_trl_spec(tmp_path / "gpu-typo", tiny_llama, resources={"gpus": 1},
                          train={"epochs": 1, "trainer_args": {"tf_32": True}})
    with pytest.raises(SpecError, match="Did you mean `tf32`"):
        plan_spec(spec)


def test_trl_dpo_names_its_own_options(tmp_path: Path, tiny_llama: Path) -> None:
    spec = write_trl_spec(tmp_path, tiny_llama, train={"epochs": 1, "objective": "dpo", "trainer_args": {"beta": 0.5}})
    with pytest.raises(SpecError, match="set by train.dpo.beta"):
        plan_spec(spec)
    # loss_type is DPO's named option but a free SFTConfig field (SFT's nll / dft losses)
    spec = write_trl_spec(tmp_path / "sft", tiny_llama, train={"epochs": 1, "trainer_args": {"loss_type": "dft"}})
    assert plan_spec(spec).runs


def _fake_ctx(tmp_path: Path) -> Any:
    return SimpleNamespace(state_dir=tmp_path / "state", run=SimpleNamespace(name="r"), seed=1,
                           layout=SimpleNamespace(train_dir=tmp_path))


@pytest.mark.parametrize("objective", ["sft", "dpo"])
def test_every_argument_the_plugin_passes_is_in_its_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          objective: str) -> None:
    """No drift: each keyword sft_args / dpo_args passes is named, refused, or a default trainer_args may change."""
    from cruijff_kit_trl import trainer_args
    from cruijff_kit_trl.config import TrlConfig
    from cruijff_kit_trl.dpo import dpo_args
    from cruijff_kit_trl.sft import sft_args

    seen: dict[str, Any] = {}
    monkeypatch.setattr(trainer_args, "make_args", lambda cls, kwargs, config: seen.update(kwargs))
    config = TrlConfig.model_validate({"objective": objective, "eval_steps": 3, "save_state_steps": 2})
    if objective == "sft":
        sft_args(_fake_ctx(tmp_path), config, "fp32", "cpu", "assistant", True)
    else:
        dpo_args(_fake_ctx(tmp_path), config, "fp32", "cpu", True)
    assert len(seen) > 30
    table = set(trainer_args.NAMED[objective]) | set(trainer_args.REFUSED) | trainer_args.DEFAULTS
    assert sorted(set(seen) - table) == []
    fields = set(trainer_args.field_names(trainer_args.config_class(objective)))
    assert sorted(set(trainer_args.NAMED[objective]) - fields) == []  # the table names real fields only


# --------------------------------------------------------------------------- trl, real training
@pytest.mark.integration
def test_trl_trainer_args_reach_the_trainer(tmp_path: Path, tiny_llama: Path) -> None:
    import torch

    from cruijff_kit._engine.stage import run_stage

    args = {"optim": "adamw_torch", "adam_beta1": 0.8, "adam_beta2": 0.95, "max_grad_norm": 0.25,
            "run_name": "my-tracker-name"}
    spec = write_trl_spec(tmp_path, tiny_llama, train={"epochs": 1, "batch_size": 8, "keep_state": True,
                                                       "validation": False, "trainer_args": args})
    run_dir = prepare_run(spec)
    run_stage(run_dir, "train")
    (ckpt,) = sorted((run_dir / "train" / "state").glob("checkpoint-*"))
    saved = torch.load(ckpt / "training_args.bin", weights_only=False)
    assert (saved.optim, saved.adam_beta1, saved.adam_beta2, saved.max_grad_norm, saved.run_name) == \
        ("adamw_torch", 0.8, 0.95, 0.25, "my-tracker-name")
    # and the optimizer the Trainer built used them (its own saved state, not the arguments)
    groups = torch.load(ckpt / "optimizer.pt", weights_only=False)["param_groups"]
    assert {tuple(g["betas"]) for g in groups} == {(0.8, 0.95)}


# --------------------------------------------------------------------------- torchtune
def _tt_plan(tmp_path: Path, model: Path, train: dict[str, Any]) -> Any:
    from torchtune_fixtures import write_tt_spec

    return plan_spec(write_tt_spec(tmp_path, model, train={"epochs": 1, **train}))


@pytest.mark.parametrize(("args", "path", "words"), [
    ({"optimzer.betas": [0.9, 0.95]}, "train.trainer_args.optimzer.betas", "Did you mean `optimizer`?"),
    ({"optimizer.betaz": [0.9, 0.95]}, "train.trainer_args.optimizer.betaz", "Did you mean `betas`?"),
    ({"optimizer": {"lr": 0.1}}, "train.trainer_args.optimizer.lr", "set by train.learning_rate"),
    ({"epochs": 3}, "train.trainer_args.epochs", "set by train.epochs"),
    ({"model.use_dora": True}, "train.trainer_args.model.use_dora", "set by train.lora.use_dora"),
    ({"output_dir": "/tmp/x"}, "train.trainer_args.output_dir", "run layout"),
    ({"checkpointer.output_dir": "/tmp/x"}, "train.trainer_args.checkpointer.output_dir", "run layout"),
    ({"model.num_layers": 3}, "train.trainer_args.model.num_layers", "config.json"),
    ({"shuffle": "yes"}, "train.trainer_args.shuffle", "must be true or false"),
    ({"optimizer._component_": "torch.optim.LBFGS"}, "train.trainer_args.optimizer._component_",
     "takes no `weight_decay`, which train.weight_decay sets"),
    ({"optimizer": {"_component_": "torch.optim.RMSprop", "fused": True}}, "train.trainer_args.optimizer.fused",
     "not a parameter of torch.optim.RMSprop"),
    # a whole section a named option writes into would drop train.learning_rate and train.weight_decay
    ({"optimizer": {}}, "train.trainer_args.optimizer", "optimizer.lr, which train.learning_rate sets"),
    ({"optimizer": "torch.optim.SGD"}, "train.trainer_args.optimizer", "optimizer.weight_decay, which "
                                                                       "train.weight_decay sets"),
    ({"optimizer": None}, "train.trainer_args.optimizer", "would replace the whole `optimizer` section"),
    # a mistyped component whose module imports: refused with a did-you-mean over the module's names
    ({"optimizer._component_": "torch.optim.SDG"}, "train.trainer_args.optimizer._component_",
     "Did you mean `SGD`?"),
    ({"loss": {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLos"}},
     "train.trainer_args.loss._component_", "Did you mean `CEWithChunkedOutputLoss`?"),
    ({"optimizer._component_": "AdamW"}, "train.trainer_args.optimizer._component_", "not a dotted path"),
])
def test_torchtune_plan_refuses(tmp_path: Path, tiny_llama: Path, args: dict[str, Any], path: str,
                                words: str) -> None:
    with pytest.raises(SpecError) as err:
        _tt_plan(tmp_path, tiny_llama, {"trainer_args": args})
    assert err.value.path == path, str(err.value)
    assert words in str(err.value) and "spec.yaml" in str(err.value)


def test_torchtune_overrides_are_held_to_the_same_table(tmp_path: Path, tiny_llama: Path) -> None:
    with pytest.raises(SpecError) as err:
        _tt_plan(tmp_path, tiny_llama, {"overrides": {"optimizer.lr": 0.1}})
    assert err.value.path == "train.overrides.optimizer.lr" and "train.learning_rate" in str(err.value)
    with pytest.raises(SpecError, match="in both"):
        _tt_plan(tmp_path / "b", tiny_llama, {"overrides": {"optimizer.betas": [0.9, 0.9]},
                                              "trainer_args": {"optimizer": {"betas": [0.8, 0.9]}}})
    with pytest.raises(SpecError, match="train.learning_rate sets") as err:
        _tt_plan(tmp_path / "c", tiny_llama, {"overrides": {"optimizer": None}})
    assert err.value.path == "train.overrides.optimizer"
    with pytest.raises(SpecError, match="Did you mean `SGD`") as err:
        _tt_plan(tmp_path / "d", tiny_llama, {"overrides": {"optimizer._component_": "torch.optim.SDG"}})
    assert err.value.path == "train.overrides.optimizer._component_"


def test_torchtune_component_of_a_module_not_installed_here_is_left_to_the_stage(tmp_path: Path,
                                                                                 tiny_llama: Path) -> None:
    """A module that does not import where the run is planned (torchtune may be absent there) is not refused."""
    assert _tt_plan(tmp_path, tiny_llama, {"trainer_args": {"optimizer._component_": "not_installed_pkg.Opt"}}).runs


def test_torchtune_hand_edited_whole_optimizer_is_a_spec_error_at_the_stage(tmp_path: Path, tiny_llama: Path) -> None:
    """build_config checks again (a spec edited after planning): a SpecError, not an AttributeError."""
    from cruijff_kit_torchtune.families import detect_family, map_targets
    from cruijff_kit_torchtune.trainer import TorchtuneConfig
    from cruijff_kit_torchtune.tuneconfig import build_config

    cfg = TorchtuneConfig.model_validate({"trainer_args": {"optimizer": None}})
    with pytest.raises(SpecError, match="train.learning_rate sets"):
        build_config(cfg, model_dir=tiny_llama, family=detect_family(tiny_llama),
                     targets=map_targets(cfg.lora.targets), run_dir=tmp_path, device="cpu", dtype="fp32",
                     seed=1, validation_split=None, save_epochs=[0], base_model="m")


def test_torchtune_table_covers_the_config_and_the_pinned_recipes(tmp_path: Path, tiny_llama: Path) -> None:
    """Every key the plugin writes is named, refused or a default; every top-level key torchtune 0.6.1's
    LoRA recipes read (their source) is a recipe key."""
    from cruijff_kit_torchtune import trainer_args as ta
    from cruijff_kit_torchtune.compat import recipes_dir
    from cruijff_kit_torchtune.families import detect_family, map_targets
    from cruijff_kit_torchtune.trainer import TorchtuneConfig
    from cruijff_kit_torchtune.tuneconfig import build_config

    cfg = TorchtuneConfig.model_validate({})
    out = build_config(cfg, model_dir=tiny_llama, family=detect_family(tiny_llama),
                       targets=map_targets(cfg.lora.targets), run_dir=tmp_path, device="cpu", dtype="fp32",
                       seed=1, validation_split=None, save_epochs=[0], base_model="m")
    leaves = ta.flatten({k: v for k, v in out.items()})
    ungoverned = [k for k in leaves if k not in ta.DEFAULTS and not any(
        k == r or k.startswith(f"{r}.") for r in [*ta.NAMED, *ta.REFUSED])]
    assert ungoverned == []
    assert set(out) <= ta.RECIPE_KEYS
    read: set[str] = set()
    for name in ("lora_finetune_single_device", "lora_finetune_distributed"):
        text = (recipes_dir() / f"{name}.py").read_text()
        read |= set(re.findall(r"\bcfg\.get\(\s*\"(\w+)\"", text)) | set(re.findall(r"\bcfg\.(\w+)\b", text))
    read -= {"get", "profile_memory"}  # profile_memory is read from the profiler section
    assert sorted(read - ta.RECIPE_KEYS) == []


@pytest.mark.integration
def test_torchtune_trainer_args_reach_the_recipe(tmp_path: Path, tiny_llama: Path) -> None:
    import torch
    from omegaconf import OmegaConf
    from torchtune_fixtures import write_tt_spec

    from cruijff_kit._engine.stage import run_stage

    spec = write_tt_spec(tmp_path, tiny_llama, train={
        "epochs": 1, "batch_size": 4, "max_seq_length": 64, "keep_state": True,
        "trainer_args": {"optimizer": {"betas": [0.8, 0.95], "eps": 1e-6}, "shuffle": False}})
    run_dir = prepare_run(spec)
    run_stage(run_dir, "train")
    resolved = OmegaConf.load(run_dir / "train" / "torchtune.yaml")
    assert list(resolved.optimizer.betas) == [0.8, 0.95] and resolved.optimizer.eps == 1e-6
    assert resolved.shuffle is False
    assert resolved.optimizer.lr == 2e-4 and resolved.optimizer._component_ == "torch.optim.AdamW"  # kept
    state = torch.load(run_dir / "train" / "state" / "torchtune_state.pt", weights_only=False)
    groups = state["optimizer"]["param_groups"]
    assert {(tuple(g["betas"]), g["eps"]) for g in groups} == {((0.8, 0.95), 1e-6)}


def test_a_third_party_trainer_without_trainer_args_refuses_them_at_validate(tmp_path: Path, with_toy: Path,
                                                                            ck: Any) -> None:
    (tmp_path / "spec.yaml").write_text(
        "experiment: toy\nmodel: {path: m}\ndataset: {plugin: toy-data}\n"
        "train: {plugin: toy, trainer_args: {optim: sgd}}\n")
    res = ck("validate", str(tmp_path / "spec.yaml"))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "train.trainer_args" in res.stderr and "does not read trainer_args" in res.stderr, res.stderr
    assert "spec.yaml" in res.stderr, res.stderr


def test_the_documented_examples_pass(tmp_path: Path, tiny_llama: Path) -> None:
    """The two trainer_args examples of docs/training.md plan without an error."""
    import yaml

    page = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    examples = [yaml.safe_load(b)["train"] for b in re.findall(r"```yaml\n(.*?)```", page, re.S)
                if "trainer_args" in b]
    assert {e["plugin"] for e in examples} == {"trl", "torchtune"}
    for i, train in enumerate(examples):
        if train["plugin"] == "trl":
            plan_spec(write_trl_spec(tmp_path / str(i), tiny_llama, train={**train, "epochs": 1}))
        else:
            _tt_plan(tmp_path / str(i), tiny_llama, {k: v for k, v in train.items() if k != "plugin"})


def test_torchtune_another_optimizer_keeps_the_named_options(tmp_path: Path, tiny_llama: Path) -> None:
    """The named options still reach a replaced optimizer; the default's `fused` switch goes only where the
    chosen optimizer has none."""
    from cruijff_kit_torchtune.families import detect_family, map_targets
    from cruijff_kit_torchtune.trainer import TorchtuneConfig
    from cruijff_kit_torchtune.tuneconfig import build_config

    def optimizer(args: dict[str, Any]) -> dict[str, Any]:
        cfg = TorchtuneConfig.model_validate({"learning_rate": 0.03, "weight_decay": 0.1, "trainer_args": args})
        out = build_config(cfg, model_dir=tiny_llama, family=detect_family(tiny_llama),
                           targets=map_targets(cfg.lora.targets), run_dir=tmp_path, device="cpu", dtype="fp32",
                           seed=1, validation_split=None, save_epochs=[0], base_model="m")
        return out["optimizer"]  # type: ignore[no-any-return]

    assert optimizer({}) == {"_component_": "torch.optim.AdamW", "lr": 0.03, "weight_decay": 0.1, "fused": False}
    assert optimizer({"optimizer._component_": "torch.optim.RMSprop", "optimizer.alpha": 0.9}) == {
        "_component_": "torch.optim.RMSprop", "lr": 0.03, "weight_decay": 0.1, "alpha": 0.9}
    assert optimizer({"optimizer": {"_component_": "torch.optim.SGD", "momentum": 0.9}}) == {
        "_component_": "torch.optim.SGD", "lr": 0.03, "weight_decay": 0.1, "fused": False, "momentum": 0.9}
