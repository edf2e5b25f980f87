"""Numbers that cannot train: non-finite values are refused wherever a number is read, a training whose
loss becomes nan or inf stops at that step, and seeds, epochs and sweep sizes are range-checked before
any work (docs/reliability.md, "Numbers that cannot train").
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import write_spec

from cruijff_kit import status, training
from cruijff_kit._base.errors import SpecError, StageError
from cruijff_kit._engine import planner
from cruijff_kit._engine.planner import combinations, make_plan, sweep_size
from cruijff_kit._engine.spec import load_spec, parse_overrides

BASE = """
experiment: nums
model: {path: some-org/some-model}
dataset: {plugin: toy-data}
train: {plugin: toy, epochs: 2}
eval:
  - {plugin: toy-eval, task: exact}
"""


def plan_of(tmp_path: Path, text: str, sets: list[str] | None = None, **flags: bool):
    spec = write_spec(tmp_path, text)
    return make_plan(load_spec(spec, parse_overrides(sets or [])), **flags)


def error_of(tmp_path: Path, text: str, sets: list[str] | None = None, **flags: bool) -> SpecError:
    with pytest.raises(SpecError) as info:
        plan_of(tmp_path, text, sets, **flags)
    return info.value


# --------------------------------------------------------------------------- non-finite values in a spec
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", ".NaN", "1e999", "1.0e+999", "-1e999"])
def test_non_finite_learning_rate_is_refused_naming_the_path(tmp_path, with_toy, value):
    err = error_of(tmp_path, BASE.replace("epochs: 2", f"epochs: 2, learning_rate: {value}"))
    assert err.path == "train.learning_rate"
    assert "finite number" in str(err) and "spec.yaml" in str(err)


@pytest.mark.parametrize("key,value,path", [
    ("train.learning_rate", "inf", "train.learning_rate"),
    ("train.learning_rate", "1e999", "train.learning_rate"),
    ("train.learning_rate", "nan", "train.learning_rate"),
    ("train.lora.dropout", ".nan", "train.lora.dropout"),
    ("train.lora.alpha", "-inf", "train.lora.alpha"),
    ("train.weight_decay", "Infinity", "train.weight_decay"),
    ("seed", ".inf", "seed"),
    ("scheduler", "{plugin: local, poll_seconds: .inf}", "scheduler.poll_seconds"),
])
def test_set_on_the_command_line_refuses_non_finite_values(tmp_path, with_toy, key, value, path):
    err = error_of(tmp_path, BASE, [f"{key}={value}"])
    assert err.path == path and "finite number" in str(err)


def test_sweep_and_variant_values_are_checked_per_run(tmp_path, with_toy):
    err = error_of(tmp_path, BASE + "sweep:\n  train.learning_rate: [1.0e-4, .inf]\n")
    assert err.path == "train.learning_rate" and "finite number" in str(err) and "set by the sweep" in str(err)
    err = error_of(tmp_path, BASE + "variants:\n  - {train.warmup_ratio: .nan}\n")
    assert err.path == "train.warmup_ratio" and "finite number" in str(err)


def test_free_form_options_refuse_non_finite_numbers_inside(tmp_path):
    """`train.overrides` (torchtune) holds values of any type: a nan or inf deep inside is named."""
    spec = BASE.replace("dataset: {plugin: toy-data}", "dataset: {plugin: json-instruct, path: d.json}")
    spec = spec.replace("train: {plugin: toy, epochs: 2}", "train:\n  plugin: torchtune\n  overrides:\n"
                        "    optimizer: {lr: .inf, betas: [0.9, 0.99]}\n").split("eval:")[0]
    (tmp_path / "d.json").write_text(json.dumps({"train": [{"input": "a", "output": "A"}]}))
    err = error_of(tmp_path, spec)
    assert err.path == "train.overrides"
    assert "`optimizer.lr` is inf" in str(err) and "finite number" in str(err)


def test_simulate_section_and_retry_policy_refuse_non_finite(tmp_path, with_toy):
    sim = ("simulate:\n  tasks: {path: tasks.json}\n  user: {plugin: openai, model: m}\n"
           "  assistant: {plugin: openai, model: m}\n  retry: {initial_delay: .inf}\n")
    err = error_of(tmp_path, BASE + sim)
    assert err.path == "simulate.retry.initial_delay" and "finite number" in str(err)
    sim = sim.replace("retry: {initial_delay: .inf}", "scoring: {metrics: {ok: {type: exact_match, weight: .nan}}}")
    err = error_of(tmp_path, BASE + sim)
    assert err.path == "simulate.scoring.metrics.ok.weight" and "finite number" in str(err)


def _models_of(module_prefixes: tuple[str, ...]) -> list[type]:
    from pydantic import BaseModel

    seen, todo = [], list(BaseModel.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__.startswith(module_prefixes) and cls not in seen:
            seen.append(cls)
    return seen


def test_every_model_that_reads_user_numbers_refuses_inf_and_nan():
    """Every pydantic model of the core and of the installed plugins sets allow_inf_nan=False."""
    import cruijff_kit._api.retry  # noqa: F401
    import cruijff_kit._engine.spec  # noqa: F401
    import cruijff_kit._simulate.config  # noqa: F401
    import cruijff_kit.collab._user  # noqa: F401
    import cruijff_kit.data._synthetic  # noqa: F401
    from cruijff_kit._api.registry import registry

    reg = registry()
    for kind in ("trainer", "evaluator", "scheduler", "dataset", "simulator"):
        for name in reg.names(kind):
            reg.get(kind, name)  # every installed plugin's Config is defined by now
    assert {"trl", "torchtune"} <= set(reg.names("trainer"))
    import cruijff_kit_runpod.config  # noqa: F401 - profiles
    import cruijff_kit_slurm.config  # noqa: F401
    import cruijff_kit_tabular.schema  # noqa: F401

    #: models that read no user numbers: the simulated user's JSON reply holds text only
    no_numbers = {"UserReply"}
    models = _models_of(("cruijff_kit",))
    assert len(models) > 40, [m.__name__ for m in models]
    allowing = [f"{m.__module__}.{m.__name__}" for m in models
                if m.model_config.get("allow_inf_nan", True) and m.__name__ not in no_numbers]
    assert allowing == []


# --------------------------------------------------------------------------- floats read outside pydantic
def test_numbers_parsed_from_text_are_finite_or_none():
    from cruijff_kit_tabular.render import to_number

    from cruijff_kit import scoring

    assert scoring.parse_number("the answer is 1e999") is None
    assert scoring.parse_number("about 3e2 people") == 300.0
    assert scoring.parse_probability("1e999%") is None and scoring.parse_probability("73%") == 0.73
    assert to_number("nan") is None and to_number("inf") is None and to_number("-1e999") is None
    assert to_number("1,234.5") == 1234.5


def test_a_tabular_missing_code_of_nan_or_inf_is_refused_clearly():
    from cruijff_kit_tabular.schema import Schema
    from pydantic import ValidationError

    for raw in ({"columns": {"a": {}}, "missing_codes": [math.nan]},
                {"columns": {"a": {"missing_codes": [9, math.inf]}}}):
        with pytest.raises(ValidationError, match="a missing code must be text or a finite number"):
            Schema.model_validate(raw)
    assert Schema.model_validate({"columns": {"a": {"missing_codes": [9, "NA", 2.5]}}}).columns["a"].missing_codes \
        == [9, "NA", 2.5]


def test_retry_waits_stay_finite():
    import random

    from cruijff_kit_openai.simulator import OpenAISimulator

    from cruijff_kit._api.retry import RetryPolicy, backoff_delay

    rng = random.Random(0)
    assert math.isfinite(backoff_delay(RetryPolicy(), 2, rng, hint=math.nan))
    assert backoff_delay(RetryPolicy(multiplier=1e300, max_delay=5.0, jitter=0.0), 9, rng) == 5.0
    exc = SimpleNamespace(response=SimpleNamespace(headers={"retry-after": "inf"}))
    assert OpenAISimulator.retry_after(None, exc) is None  # type: ignore[arg-type]
    exc = SimpleNamespace(response=SimpleNamespace(headers={"retry-after": "2"}))
    assert OpenAISimulator.retry_after(None, exc) == 2.0  # type: ignore[arg-type]


def test_a_judges_nan_score_is_a_malformed_reply():
    from cruijff_kit.collab._metrics import MalformedReply, _score_of

    assert _score_of('{"score": 0.5}') == 0.5
    with pytest.raises(MalformedReply, match="not a finite number"):
        _score_of('{"score": NaN}')


@pytest.mark.parametrize("args,problem", [
    (["--rule", "weighted-sum", "--threshold", "inf"], "`threshold`: Input should be a finite number"),
    (["--rule", "coin", "--p", "nan"], "`p`: Input should be a finite number"),
    (["--rule", "weighted-sum", "--weights", "1,1,1,1,1,1,1,1,1,1e999"], "Input should be a finite number"),
    (["--seed", "-1"], "-1 is not in the range 0<=x<=4294967295"),
    (["--seed", str(2**32)], "is not in the range 0<=x<=4294967295"),
])
def test_data_synthetic_refuses_non_finite_options_and_bad_seeds(tmp_path, ck, args, problem):
    res = ck("data", "synthetic", str(tmp_path / "out"), *args)
    assert res.returncode == 2 and problem in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- seeds, epochs, sweep sizes
def test_seed_is_range_checked(tmp_path, with_toy):
    for seed in ("-1", str(2**32), str(10**30)):
        err = error_of(tmp_path, BASE + f"seed: {seed}\n")
        assert err.path == "seed", str(err)
    (run,) = plan_of(tmp_path, BASE + f"seed: {2**32 - 1}\n").runs
    assert run.spec["seed"] == 2**32 - 1


def test_many_epochs_need_a_confirmation(tmp_path, with_toy):
    err = error_of(tmp_path, BASE.replace("epochs: 2", "epochs: 1001"))
    assert err.path == "train.epochs" and "1,001 epochs" in str(err) and "--allow-many-epochs" in str(err)
    plan = plan_of(tmp_path, BASE.replace("epochs: 2", "epochs: 1001, save_epochs: last"), allow_many_epochs=True)
    assert plan.runs[0].spec["train"]["epochs"] == 1001
    err = error_of(tmp_path, BASE.replace("epochs: 2", "epochs: 100001"), allow_many_epochs=True)
    assert err.path == "train.epochs" and "100000" in str(err)  # a hard limit, confirmed or not
    err = error_of(tmp_path, BASE + "sweep:\n  train.epochs: [1, 5000]\n")
    assert err.path == "train.epochs" and "(`train.epochs` set by the sweep)" in str(err)


def _huge_sweep(axes: int, values: int) -> str:
    lines = [f"  train.lora.rank: {list(range(1, values + 1))}", f"  seed: {list(range(values))}",
             f"  train.batch_size: {list(range(1, values + 1))}", f"  train.max_seq_length: {list(range(1, values + 1))}"]
    return BASE + "sweep:\n" + "\n".join(lines[:axes]) + "\n"


def test_a_large_sweep_is_refused_before_any_run_is_built(tmp_path, with_toy, monkeypatch):
    def no_run(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("a run was resolved")

    monkeypatch.setattr(planner, "resolve_run", no_run)
    err = error_of(tmp_path, _huge_sweep(3, 30))  # 27,000 runs
    assert err.path == "sweep" and "27,000 runs (30 x 30 x 30)" in str(err) and "--allow-large-sweep" in str(err)
    err = error_of(tmp_path, _huge_sweep(4, 1000), allow_large_sweep=True)  # 10**12: never, even confirmed
    assert "1,000,000,000,000 runs" in str(err) and "100,000" in str(err)
    variants = "variants:\n" + "".join(f"  - {{train.lora.dropout: 0.{i}}}\n" for i in range(1, 5))
    err = error_of(tmp_path, _huge_sweep(3, 14) + variants)  # 14**3 x 4 = 10,976
    assert "10,976 runs (14 x 14 x 14 x 4 variants)" in str(err)


def test_combinations_are_generated_lazily(tmp_path, with_toy):
    loaded = load_spec(write_spec(tmp_path, _huge_sweep(4, 1000)))
    assert sweep_size(loaded) == 10**12
    first = list(itertools.islice(combinations(loaded), 3))  # a list of 10**12 would never return
    assert first[0] == {"train.lora.rank": 1, "seed": 0, "train.batch_size": 1, "train.max_seq_length": 1}
    assert len(first) == 3


def test_confirmed_sweep_plans_every_run(tmp_path, with_toy, monkeypatch):
    monkeypatch.setattr(planner, "RUNS_WITHOUT_CONFIRMATION", 10)
    err = error_of(tmp_path, _huge_sweep(2, 4))  # 16 runs over the (lowered) limit
    assert "16 runs" in str(err)
    assert len(plan_of(tmp_path, _huge_sweep(2, 4), allow_large_sweep=True).runs) == 16


def test_ck_validate_plan_run_refuse_a_large_sweep_and_name_the_flag(tmp_path, with_toy, ck):
    spec = write_spec(tmp_path, _huge_sweep(3, 30))
    for command in ("validate", "plan", "run"):
        res = ck(command, str(spec), timeout=120)
        assert res.returncode == 2, (command, res.stderr)
        assert "27,000 runs" in res.stderr and "--allow-large-sweep" in res.stderr
    assert not (tmp_path / "runs").exists()  # nothing written
    res = ck("validate", str(write_spec(tmp_path, BASE.replace("epochs: 2", "epochs: 2000"), "e.yaml")))
    assert res.returncode == 2 and "--allow-many-epochs" in res.stderr
    res = ck("validate", str(tmp_path / "e.yaml"), "--allow-many-epochs", check=True)
    assert "valid. 1 run(s)" in res.stdout
    res = ck("validate", str(spec), "--set", "seed=-5")
    assert res.returncode == 2 and "at `seed`" in res.stderr


def test_ck_flags_confirm_a_large_sweep(tmp_path, with_toy, monkeypatch, capsys):
    from cruijff_kit._cli import main

    monkeypatch.setattr(planner, "RUNS_WITHOUT_CONFIRMATION", 10)
    spec = str(write_spec(tmp_path, _huge_sweep(2, 4)))
    for command in (["validate"], ["plan"], ["run", "--dry-run"]):
        with pytest.raises(SystemExit):
            main([*command, spec])
        assert "16 runs" in capsys.readouterr().err
        main([*command, spec, "--allow-large-sweep"])  # no SystemExit: confirmed
    assert (tmp_path / "runs/nums/plan.md").read_text().count("| finetune |") == 16
    assert len(list((tmp_path / "runs/nums/runs").iterdir())) == 16


# --------------------------------------------------------------------------- the loss watch, without torch
def _ctx(tmp_path: Path, **config: Any) -> Any:
    layout = SimpleNamespace(train_dir=tmp_path / "train")
    return SimpleNamespace(layout=layout, config=SimpleNamespace(learning_rate=1e-3, precision="auto", **config))


def test_loss_watch_message_names_step_cause_and_valid_adapters(tmp_path):
    ctx = _ctx(tmp_path)
    (tmp_path / "train" / "epoch_0" / "adapter").mkdir(parents=True)
    (tmp_path / "train" / "epoch_0" / "adapter" / "adapter_config.json").write_text("{}")
    watch = training.LossWatch(ctx, precision="fp16")
    watch.observe(2.5)
    watch.check(step=7, epoch=1)  # finite: nothing happens
    watch.observe(1.0)
    watch.observe(math.inf)
    with pytest.raises(StageError) as info:
        watch.check(step=8, epoch=1)
    msg = str(info.value)
    assert msg.startswith("the training loss became inf at step 8 (epoch 1), so training stopped there")
    assert msg.index("fp16 overflow (train.precision is fp16") < msg.index("learning rate too high")
    assert "train.learning_rate is 0.001" in msg and "bad data rows" in msg
    assert f"epochs [0] were saved before the loss broke and stay valid: {tmp_path / 'train/epoch_0/adapter'}" in msg
    watch.check(step=9, epoch=1)  # the pending losses were consumed
    with pytest.raises(StageError, match=r"validation loss became nan after step 9 \(epoch 1\).*No epoch|"
                                         r"validation loss became nan after step 9 \(epoch 1\)"):
        watch.check_value(math.nan, step=9, epoch=1)
    watch.check_value(None, step=9, epoch=1)
    err = training.nonfinite_loss_error(None, step=3, epoch=0, train_dir=tmp_path / "train")
    assert "on another process" in str(err) and "No epoch had finished" in str(err)


def test_an_adapter_with_nan_weights_is_never_written(tmp_path):
    import torch
    from safetensors.torch import save_file

    from cruijff_kit.training._finite import nonfinite_tensors

    good = {"a": torch.ones(4), "b": torch.zeros(2, 2, dtype=torch.bfloat16)}
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        path = tmp_path / f"w-{dtype}.safetensors"
        save_file({**good, "bad": torch.tensor([1.0, math.nan, 2.0], dtype=dtype)}, str(path))
        assert nonfinite_tensors(path) == ["bad"], dtype
        save_file({"x": torch.tensor([-math.inf], dtype=dtype), **good}, str(path))
        assert nonfinite_tensors(path) == ["x"], dtype
    save_file(good, str(tmp_path / "ok.safetensors"))
    assert nonfinite_tensors(tmp_path / "ok.safetensors") == []
    (tmp_path / "junk.safetensors").write_bytes(b"x")
    assert nonfinite_tensors(tmp_path / "junk.safetensors") == []  # not a weights file: not this guard's job

    def write(weights: dict[str, Any]) -> Any:
        def fill(tmp: Path) -> None:
            save_file(weights, str(tmp / "adapter_model.safetensors"))
            (tmp / "adapter_config.json").write_text(json.dumps({"r": 4}))
        return fill

    train = tmp_path / "run" / "train"
    training.write_adapter_dir(train / "epoch_0" / "adapter", write(good), None, base_model="m",
                               extra={"epoch": 0, "step": 4})
    broken = {"lora_B": torch.tensor([[math.nan]])}
    with pytest.raises(StageError) as info:
        training.write_adapter_dir(train / "epoch_1" / "adapter", write(broken), None, base_model="m",
                                   extra={"epoch": 1, "step": 8})
    msg = str(info.value)
    assert "the adapter of epoch 1 at step 8 holds nan or inf weights (lora_B)" in msg
    assert "epochs [0] were saved before and stay valid" in msg
    assert sorted(p.name for p in train.iterdir()) == ["epoch_0", "epoch_1"]
    assert list((train / "epoch_1").iterdir()) == []  # no adapter, no temporary folder left


# --------------------------------------------------------------------------- real training that diverges
#: lr 1e30 with one optimizer step per epoch: step 1 trains from the base weights (finite loss), its
#: update makes the LoRA weights ~1e30, and the first forward of step 2 (epoch 1) overflows to nan.
DIVERGE = {"epochs": 3, "learning_rate": 1e30, "lr_scheduler": "constant", "validation": False,
           "lora": {"rank": 4, "dropout": 0.0}}


def _assert_stopped_at_step_2(run_dir: Path, message: str) -> None:
    assert "the training loss became nan at step 2 (epoch 1)" in message, message
    assert "learning rate too high (train.learning_rate is 1e+30" in message
    assert "fp16 overflow" in message and "bad data rows" in message
    assert f"epochs [0] were saved before the loss broke and stay valid: {run_dir / 'train/epoch_0/adapter'}" \
        in message
    st = status.read(run_dir)["stages"]["train"]
    assert st["state"] == status.FAILED and st["error"] == message
    epoch0 = run_dir / "train" / "epoch_0" / "adapter"
    assert training.adapter_info(epoch0)["step"] == 1
    from cruijff_kit.training._finite import nonfinite_tensors

    assert (epoch0 / "adapter_config.json").exists() and nonfinite_tensors(epoch0 / "adapter_model.safetensors") == []
    assert sorted(p.name for p in (run_dir / "train").glob("epoch_*")) == ["epoch_0"]  # none after the break
    assert not [p for p in (run_dir / "train").rglob("*") if ".tmp-" in p.name]


@pytest.mark.integration
def test_trl_stops_at_the_first_nan_loss_through_ck_run(tmp_path, tiny_llama, ck):
    from trl_fixtures import read_rows, write_capitalize_data, write_trl_spec

    data = {"plugin": "json-instruct", "path": str(write_capitalize_data(tmp_path, n_train=8, n_val=4, n_test=4))}
    spec = write_trl_spec(tmp_path, tiny_llama, train={**DIVERGE, "batch_size": 8, "logging_steps": 1}, data=data)
    res = ck("run", str(spec), timeout=600)
    assert res.returncode == 1, res.stdout + res.stderr[-3000:]
    assert "FAILED" in res.stderr and "the training loss became nan at step 2 (epoch 1)" in res.stderr
    (run_dir,) = (tmp_path / "out" / "trl-test" / "runs").iterdir()
    _assert_stopped_at_step_2(run_dir, status.read(run_dir)["stages"]["train"]["error"])
    assert [r["step"] for r in read_rows(run_dir)] == [1]  # nothing logged after the break
    res = ck("status", str(spec))
    assert "the training loss became nan at step 2" in res.stdout


@pytest.mark.integration
def test_trl_stops_at_a_nan_validation_loss_before_saving_the_epoch(tmp_path, tiny_llama):
    from trl_fixtures import prepare_run, write_capitalize_data, write_trl_spec

    from cruijff_kit._engine.stage import run_stage

    data = {"plugin": "json-instruct", "path": str(write_capitalize_data(tmp_path, n_train=8, n_val=4, n_test=4))}
    run_dir = prepare_run(write_trl_spec(tmp_path, tiny_llama, data=data, train={
        **DIVERGE, "validation": True, "batch_size": 8, "logging_steps": 1}))
    with pytest.raises(StageError) as info:
        run_stage(run_dir, "train")
    msg = str(info.value)
    assert msg.startswith("the validation loss became nan after step 1 (epoch 0)"), msg
    assert "No epoch had finished with a saved adapter before it." in msg
    assert status.read(run_dir)["stages"]["train"]["error"] == msg
    assert not list((run_dir / "train").glob("epoch_*"))


@pytest.mark.integration
def test_torchtune_stops_at_the_first_nan_loss(tmp_path, tiny_llama):
    from torchtune_fixtures import write_tt_spec
    from trl_fixtures import prepare_run, read_rows

    from cruijff_kit._engine.stage import run_stage

    # 16 training rows in one batch: one optimizer step per epoch
    run_dir = prepare_run(write_tt_spec(tmp_path, tiny_llama, train={**DIVERGE, "batch_size": 16,
                                                                     "max_seq_length": 64}))
    with pytest.raises(StageError) as info:
        run_stage(run_dir, "train")
    _assert_stopped_at_step_2(run_dir, str(info.value))
    assert [r["step"] for r in read_rows(run_dir) if r["train_loss"] is not None] == [1]


@pytest.mark.integration
def test_torchtune_distributed_workers_stop_together_and_report_the_step(tmp_path, tiny_llama):
    """Two ranks over gloo: the verdict is all-reduced, both stop at step 2, and the launching process
    fails the stage with the workers' message (not just an exit code)."""
    from torchtune_fixtures import write_tt_spec
    from trl_fixtures import prepare_run

    from cruijff_kit._engine.stage import run_stage

    run_dir = prepare_run(write_tt_spec(tmp_path, tiny_llama, resources={"processes": 2},
                                        train={**DIVERGE, "batch_size": 8, "max_seq_length": 64}))
    with pytest.raises(StageError) as info:
        run_stage(run_dir, "train")
    _assert_stopped_at_step_2(run_dir, str(info.value))
    assert not (run_dir / "logs" / "train.worker-error").exists()  # consumed by the launching process


@pytest.mark.integration
def test_trl_distributed_ranks_stop_together_and_report_the_step(tmp_path, tiny_llama):
    """DDP over gloo (accelerate): each rank's loss is its own, the verdict is all-reduced."""
    from trl_fixtures import prepare_run, write_capitalize_data, write_trl_spec

    from cruijff_kit._engine.stage import run_stage

    data = {"plugin": "json-instruct", "path": str(write_capitalize_data(tmp_path, n_train=8, n_val=4, n_test=4))}
    run_dir = prepare_run(write_trl_spec(tmp_path, tiny_llama, data=data, resources={"processes": 2},
                                         train={**DIVERGE, "batch_size": 4, "logging_steps": 1}))
    with pytest.raises(StageError) as info:
        run_stage(run_dir, "train")
    _assert_stopped_at_step_2(run_dir, str(info.value))


def test_yaml_of_the_spec_reference_mentions_the_flags():
    page = (Path(__file__).resolve().parents[1] / "docs" / "spec-reference.md").read_text()
    assert "--allow-large-sweep" in page and "--allow-many-epochs" in page and "2**32" in page


def test_reliability_doc_lists_every_promise_with_code_and_test():
    text = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    section = text.split("## Numbers that cannot train", 1)[1].split("\n## ", 1)[0]
    for needle in ("allow_inf_nan", "LossWatch", "--allow-large-sweep", "--allow-many-epochs",
                   "test_reliability_numbers.py", "2**32"):
        assert needle in section, needle
