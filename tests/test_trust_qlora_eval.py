"""QLoRA adapters are evaluated on the 4-bit NF4 base they were trained on, unless full precision is asked for.

Real components on CPU: a tiny model trained with ``train.method: qlora`` (and one with lora) by the trl
trainer through ``ck stage``; the inspect evaluator's stages run for real (base and epoch targets, with
``quantization`` auto and none), their results and eval logs read back; the ``ck/`` provider rebuilt from
the model args the log recorded; the inference API and the local simulator loading the same adapters.
Expected layer counts are the tiny model's shape: 2 decoder layers x 7 linear layers (q, k, v, o, gate,
up, down) = 14 linear layers that bitsandbytes stores in 4 bits; ``lm_head`` stays full precision.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from trl_fixtures import prepare_run, write_trl_spec

from cruijff_kit import CkError, status
from cruijff_kit._base.errors import SpecError, StageError

pytest.importorskip("bitsandbytes")
pytest.importorskip("inspect_ai")
pytestmark = pytest.mark.integration

#: Linear layers of the tiny llama that a 4-bit base holds as bitsandbytes Linear4bit (2 layers x 7).
QUANTIZED_LINEARS = 14
EVAL = {"plugin": "inspect", "task": "exact-match", "generation": {"max_tokens": 4}, "limit": 2,
        "batch_size": 2, "device": "cpu"}
TRAIN = {"epochs": 1, "batch_size": 8, "learning_rate": 2e-2, "save_epochs": "last", "validation": False,
         "logging_steps": 1, "max_steps": 2}


def _train(folder: Path, model: Path, method: str, evals: list[dict[str, Any]]) -> Path:
    spec = write_trl_spec(folder, model, train={**TRAIN, "method": method})
    data = yaml.safe_load(spec.read_text())
    data["eval"] = evals
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    from cruijff_kit._engine.stage import run_stage

    run_dir = prepare_run(spec)
    run_stage(run_dir, "train")
    assert status.stage_state(run_dir, "train") == status.DONE
    return run_dir


@pytest.fixture(scope="module")
def qlora_run(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A qlora run trained for real; eval `auto` (base and epoch_0) and `full` (quantization: none) done."""
    from cruijff_kit._engine.stage import run_stage

    evals = [{**EVAL, "name": "auto", "checkpoints": "all", "include_base": True},
             {**EVAL, "name": "full", "quantization": "none", "checkpoints": "all", "include_base": False}]
    run_dir = _train(tmp_path_factory.mktemp("qlora"), tiny_llama, "qlora", evals)
    for stage in ("eval.auto.base", "eval.auto.epoch_0", "eval.full.epoch_0"):
        run_stage(run_dir, stage)
    return run_dir


@pytest.fixture(scope="module")
def lora_run(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lora run trained for real (no eval run)."""
    return _train(tmp_path_factory.mktemp("lora"), tiny_llama, "lora", [{**EVAL, "include_base": False}])


def _adapter(run_dir: Path) -> Path:
    return run_dir / "train" / "epoch_0" / "adapter"


def _four_bit_layers(model: Any) -> list[Any]:
    from bitsandbytes.nn import Linear4bit

    return [m for m in model.modules() if isinstance(m, Linear4bit)]


def _results(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "eval" / "results.json").read_text())


# --------------------------------------------------------------------------- what the trainer records
def test_adapters_record_how_they_were_trained(qlora_run: Path, lora_run: Path) -> None:
    from cruijff_kit.training import adapter_info

    qlora = adapter_info(_adapter(qlora_run))
    # trl quantized the base with bitsandbytes NF4 + double quantization; on CPU precision auto is fp32
    assert qlora["method"] == "qlora"
    assert qlora["quantization"] == {"quant_type": "nf4", "double_quant": True, "compute_dtype": "float32",
                                     "library": "bitsandbytes"}
    lora = adapter_info(_adapter(lora_run))
    assert lora["method"] == "lora" and "quantization" not in lora


# --------------------------------------------------------------------------- the evaluator
def test_results_say_which_base_each_target_was_evaluated_on(qlora_run: Path) -> None:
    results = _results(qlora_run)
    nf4 = {"quantization": "nf4", "quant_type": "nf4", "double_quant": True, "compute_dtype": "float32",
           "dtype": "float32"}
    for target in ("base", "epoch_0"):  # the base of a qlora run is compared on the same 4-bit base
        entry = results["auto"][target]
        assert {k: entry.get(k) for k in nf4} == nf4, (target, entry)
    full = results["full"]["epoch_0"]
    assert full["quantization"] == "none" and full["dtype"] == "float32" and "compute_dtype" not in full


def test_eval_logs_record_it_and_rebuild_the_same_model(qlora_run: Path) -> None:
    from cruijff_kit_inspect.provider import CkModelAPI
    from inspect_ai.log import read_eval_log

    results = _results(qlora_run)
    loaded = {}
    for task, target, want in (("auto", "epoch_0", "nf4"), ("full", "epoch_0", "none"), ("auto", "base", "nf4")):
        log = read_eval_log(str(qlora_run / results[task][target]["log"]))
        assert log.eval.metadata["quantization"] == want and log.eval.metadata["dtype"] == "float32"
        assert log.eval.model_args.get("quantization") == want  # the provider is told the decision
        api = CkModelAPI(log.eval.model.removeprefix("ck/"), **dict(log.eval.model_args))
        assert api.quantization["quantization"] == want
        loaded[(task, target)] = api.model
    epoch_4bit = _four_bit_layers(loaded[("auto", "epoch_0")])
    assert len(epoch_4bit) == QUANTIZED_LINEARS
    assert all(m.weight.quant_state.quant_type == "nf4" for m in epoch_4bit)
    assert loaded[("auto", "epoch_0")].peft_config  # the adapter sits on top of the 4-bit base
    assert len(_four_bit_layers(loaded[("auto", "base")])) == QUANTIZED_LINEARS
    full = loaded[("full", "epoch_0")]
    assert _four_bit_layers(full) == []
    import torch

    assert full.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.dtype == torch.float32


def test_model_for_refuses_nf4_on_vllm_and_merging(qlora_run: Path) -> None:
    from cruijff_kit_inspect.config import InspectConfig
    from cruijff_kit_inspect.evaluator import model_for
    from pydantic import ValidationError

    vllm = InspectConfig.model_validate({"task": "includes", "backend": "vllm"})
    with pytest.raises(StageError, match="backend: hf .* quantization: none"):
        model_for(vllm, "/m", _adapter(qlora_run), quantization="nf4")
    assert model_for(vllm, "/m", _adapter(qlora_run), quantization="none")[0].startswith("vllm/")
    for options in ({"backend": "vllm", "quantization": "nf4"}, {"merge_adapter": "memory", "quantization": "nf4"},
                    {"model": "openai/gpt-4o-mini", "quantization": "nf4"}):
        with pytest.raises(ValidationError, match="quantization"):
            InspectConfig.model_validate({"task": "includes", **options})


def test_plan_refuses_auto_on_vllm_for_a_qlora_run(tiny_llama: Path, tmp_path: Path) -> None:
    spec = write_trl_spec(tmp_path, tiny_llama, train={**TRAIN, "method": "qlora"})
    data = yaml.safe_load(spec.read_text())
    data["eval"] = [{**EVAL, "backend": "vllm"}]
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    from trl_fixtures import plan_spec

    with pytest.raises(CkError, match=r"trained with qlora.*quantization: none"):
        plan_spec(spec)
    data["eval"] = [{**EVAL, "backend": "vllm", "quantization": "none", "device": "auto"}]  # vllm serves on GPUs
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(CkError, match="vllm package"):  # past the quantization check: vllm is not installed
        plan_spec(spec)


# --------------------------------------------------------------------------- the inference API
def test_inference_api_follows_the_adapter(qlora_run: Path, lora_run: Path) -> None:
    from cruijff_kit.inference import load

    q = load(qlora_run, device="cpu", progress=False)  # the run folder: its last epoch's adapter
    assert q.quantization["quantization"] == "nf4" and q.quantization["double_quant"] is True
    assert len(_four_bit_layers(q.model)) == QUANTIZED_LINEARS
    assert len(q.generate(["the"], max_new_tokens=2)) == 1

    full = load(qlora_run, device="cpu", quantization="none", progress=False)
    assert full.quantization == {"quantization": "none", "dtype": "float32"}
    assert _four_bit_layers(full.model) == []

    lora = load(lora_run, device="cpu", progress=False)
    assert lora.quantization == {"quantization": "none", "dtype": "float32"}
    assert _four_bit_layers(lora.model) == []
    forced = load(lora_run, device="cpu", quantization="nf4", progress=False)
    assert len(_four_bit_layers(forced.model)) == QUANTIZED_LINEARS


def test_inference_api_refuses_merging_into_4bit_and_unknown_choices(qlora_run: Path) -> None:
    from cruijff_kit.inference import load

    with pytest.raises(SpecError, match="merge.*4-bit"):
        load(qlora_run, device="cpu", merge=True, progress=False)
    with pytest.raises(SpecError, match="quantization"):
        load(qlora_run, device="cpu", quantization="int8", progress=False)


# --------------------------------------------------------------------------- the local simulator
def _assistant(tmp_path: Path, tiny_llama: Path, **options: Any) -> Any:
    from cruijff_kit_local_simulator.simulator import LocalAssistant, LocalConfig

    return LocalAssistant(LocalConfig(model=str(tiny_llama), device="cpu", **options), base_dir=tmp_path)


def test_simulator_loads_a_qlora_adapter_on_its_4bit_base(qlora_run: Path, lora_run: Path, tiny_llama: Path,
                                                          tmp_path: Path) -> None:
    q = _assistant(tmp_path, tiny_llama, adapter=str(qlora_run))
    q.open()
    assert len(_four_bit_layers(q._model)) == QUANTIZED_LINEARS
    assert q.stats()["quantization"] == "nf4" and q.stats()["4bit"] is True
    lora = _assistant(tmp_path, tiny_llama, adapter=str(lora_run))
    lora.open()
    assert _four_bit_layers(lora._model) == [] and lora.stats()["quantization"] == "none"


def test_simulator_without_bitsandbytes_is_an_error_not_a_fallback(
        qlora_run: Path, tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "bitsandbytes" or m.startswith("bitsandbytes.")]:
        monkeypatch.setitem(sys.modules, name, None)  # every import of bitsandbytes now fails
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(StageError, match=r"bitsandbytes cannot be imported.*quantization: none"):
        _assistant(tmp_path, tiny_llama, adapter=str(qlora_run)).open()
    with pytest.raises(StageError, match=r"load_in_4bit: true.*bitsandbytes.*load_in_4bit: false"):
        _assistant(tmp_path, tiny_llama, load_in_4bit=True).open()
    plain = _assistant(tmp_path, tiny_llama, adapter=str(qlora_run), quantization="none")
    plain.open()  # full precision was asked for: no bitsandbytes needed
    assert plain.stats()["quantization"] == "none"


def test_simulator_load_in_4bit_is_nf4_and_conflicts_are_refused() -> None:
    from cruijff_kit_local_simulator.simulator import LocalConfig
    from pydantic import ValidationError

    assert LocalConfig(model="m", load_in_4bit=True).base_quantization_choice() == "nf4"
    assert LocalConfig(model="m", load_in_4bit=False).base_quantization_choice() == "none"
    assert LocalConfig(model="m").base_quantization_choice() == "auto"
    with pytest.raises(ValidationError, match="load_in_4bit: true means quantization: nf4"):
        LocalConfig(model="m", load_in_4bit=True, quantization="none")


# --------------------------------------------------------------------------- the shared decision
def test_method_info_is_what_trainers_record() -> None:
    from cruijff_kit.training import method_info

    assert method_info("lora") == {"method": "lora"}
    assert method_info("qlora", "bf16", library="torchao") == {
        "method": "qlora", "quantization": {"quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16",
                                            "library": "torchao"}}
    with pytest.raises(ValueError, match="compute dtype"):
        method_info("qlora")  # a qlora record without its compute dtype would be a guess


def test_base_quantization_without_a_record(tmp_path: Path) -> None:
    from cruijff_kit.inference import base_quantization

    (tmp_path / "adapter_config.json").write_text("{}")  # an adapter trained elsewhere: no cruijff_kit.json
    assert base_quantization(tmp_path).quantization == "none"
    assert base_quantization(None, method="qlora", dtype="bfloat16").record() == {
        "quantization": "nf4", "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}
    assert base_quantization(tmp_path, "nf4", dtype="float32").compute_dtype == "float32"
    (tmp_path / "cruijff_kit.json").write_text(json.dumps({"method": "qlora", "quantization": {"compute_dtype": "fp8"}}))
    with pytest.raises(StageError, match=r"cruijff_kit.json: quantization.compute_dtype is 'fp8'"):
        base_quantization(tmp_path)
    assert base_quantization(tmp_path, "none").quantization == "none"  # full precision needs no settings
