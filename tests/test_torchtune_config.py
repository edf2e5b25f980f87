"""Plan-time behaviour of the torchtune trainer: model families, LoRA targets, QLoRA, the recipe config.

Nothing here imports torch or torchtune (the last test checks that).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cruijff_kit_torchtune.families import detect_family, map_targets
from cruijff_kit_torchtune.schedules import lr_factor, warmup_steps
from cruijff_kit_torchtune.trainer import TorchtuneConfig
from cruijff_kit_torchtune.tuneconfig import build_config, checkpoint_files
from torchtune_fixtures import (
    LLAMA2_7B,
    LLAMA3_8B,
    LLAMA31_8B,
    LLAMA32_1B,
    LLAMA33_70B,
    MISTRAL_7B,
    QWEN25_05B,
    write_config,
    write_tt_spec,
)
from trl_fixtures import plan_spec

from cruijff_kit._base.errors import SpecError, StageError


@pytest.mark.parametrize(("cfg", "name", "builder", "model_type", "extra"), [
    (LLAMA2_7B, "llama2", "llama2._component_builders.lora_llama2", "LLAMA2", {}),
    (LLAMA3_8B, "llama3", "llama3._component_builders.lora_llama3", "LLAMA3", {"rope_base": 500000}),
    (LLAMA31_8B, "llama3_1", "llama3_1._component_builders.lora_llama3_1", "LLAMA3", {"scale_factor": 8}),
    (LLAMA33_70B, "llama3_1", "llama3_1._component_builders.lora_llama3_1", "LLAMA3", {"num_layers": 80}),
    (LLAMA32_1B, "llama3_2", "llama3_2._component_builders.lora_llama3_2", "LLAMA3_2",
     {"scale_factor": 32, "tie_word_embeddings": True}),
    (QWEN25_05B, "qwen2", "qwen2._component_builders.lora_qwen2", "QWEN2",
     {"tie_word_embeddings": True, "rope_base": 1000000.0, "num_kv_heads": 2}),
])
def test_builder_chosen_from_hf_config(tmp_path: Path, cfg: dict, name: str, builder: str, model_type: str,
                                       extra: dict) -> None:
    family = detect_family(write_config(tmp_path / name, cfg))
    assert family.name == name
    assert family.builder == f"torchtune.models.{builder}"
    assert family.model_type == model_type
    for key, value in extra.items():
        assert family.args[key] == value
    assert family.args["embed_dim"] == cfg["hidden_size"]
    assert family.permute_qk is (name != "qwen2")


def test_tiny_models_and_transformers5_rope_spelling(tiny_llama: Path, tiny_qwen: Path) -> None:
    llama = detect_family(tiny_llama)  # rope_parameters: {rope_theta: 500000}
    vocab = json.loads((tiny_llama / "config.json").read_text())["vocab_size"]
    assert (llama.name, llama.args["rope_base"], llama.args["vocab_size"]) == ("llama3", 500000, vocab)
    assert detect_family(tiny_qwen).name == "qwen2"


def test_unsupported_family_names_trl(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"model_type `mistral`.*Llama 2.*Qwen2.*train.plugin: trl"):
        detect_family(write_config(tmp_path / "m", MISTRAL_7B))
    biased = {**LLAMA3_8B, "attention_bias": True}
    with pytest.raises(SpecError, match="biases"):
        detect_family(write_config(tmp_path / "b", biased))


def test_targets_mapped_to_torchtune_names() -> None:
    t = map_targets(["q_proj", "v_proj", "o_proj"])
    assert (t.attn, t.mlp, t.output) == (["q_proj", "v_proj", "output_proj"], False, False)
    t = map_targets(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"])
    assert t.mlp and t.output and t.attn == ["q_proj", "k_proj", "v_proj", "output_proj"]
    assert sorted(t.hf_names()) == ["down_proj", "gate_proj", "k_proj", "lm_head", "o_proj", "q_proj",
                                    "up_proj", "v_proj"]
    assert map_targets(["q_proj"], apply_lora_to_mlp=True).mlp


def test_mismatched_targets_are_clear_errors() -> None:
    with pytest.raises(SpecError, match=r"`query_key_value`.*Valid targets: q_proj"):
        map_targets(["query_key_value"])
    with pytest.raises(SpecError, match=r"`qproj`.*Did you mean `q_proj`"):
        map_targets(["qproj"])
    with pytest.raises(SpecError, match=r"lists gate_proj but not up_proj, down_proj.*together"):
        map_targets(["q_proj", "gate_proj"])


def test_plan_errors_name_spec_and_field(tmp_path: Path, tiny_llama: Path) -> None:
    spec = write_tt_spec(tmp_path / "a", tiny_llama, train={"lora": {"targets": ["q_proj", "up_proj"]}})
    with pytest.raises(SpecError) as err:
        plan_spec(spec)
    assert str(spec) in str(err.value) and "train.lora.targets" in str(err.value)
    spec = write_tt_spec(tmp_path / "b", write_config(tmp_path / "mistral", MISTRAL_7B))
    with pytest.raises(SpecError, match=r"spec.yaml.*model_type `mistral`"):
        plan_spec(spec)
    with pytest.raises(SpecError, match="fp32 or bf16 only"):
        plan_spec(write_tt_spec(tmp_path / "c", tiny_llama, train={"precision": "fp16"}))
    with pytest.raises(SpecError, match="unknown key `compiled`"):
        plan_spec(write_tt_spec(tmp_path / "d", tiny_llama, train={"compiled": True}))
    for validation in (True, False):
        spec = write_tt_spec(tmp_path / f"e{validation}", tiny_llama, train={"validation": validation})
        data_file = tmp_path / f"e{validation}" / "capitalize.json"
        data = json.loads(data_file.read_text())
        del data["validation"]
        data_file.write_text(json.dumps(data))
        if validation:
            with pytest.raises(SpecError, match=r"train.validation.*no `validation` split"):
                plan_spec(spec)
        else:
            assert plan_spec(spec).runs


def test_qlora_needs_nf4_block_sizes(tmp_path: Path, tiny_model_factory) -> None:
    small = tiny_model_factory("llama3")  # hidden 64: q_proj 64x64 = 4096 elements
    with pytest.raises(SpecError, match=r"divisible by 16384.*q_proj 64x64.*method: lora"):
        plan_spec(write_tt_spec(tmp_path / "a", small, train={"method": "qlora"}))
    big = write_config(tmp_path / "ok", {**LLAMA3_8B})
    assert plan_spec(write_tt_spec(tmp_path / "b", big, train={"method": "qlora"})).runs


def test_recipe_config_from_spec(tmp_path: Path, tiny_llama: Path) -> None:
    cfg = TorchtuneConfig.model_validate({
        "epochs": 3, "batch_size": 2, "gradient_accumulation": 4, "learning_rate": 1e-4, "weight_decay": 0.01,
        "lr_scheduler": "linear", "warmup_ratio": 0.1, "max_seq_length": 256, "gradient_checkpointing": True,
        "lora": {"rank": 16, "dropout": 0.1, "targets": ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]},
        "save_epochs": [0, 2], "eval_steps": 5, "overrides": {"optimizer.betas": [0.9, 0.95]}})
    family = detect_family(tiny_llama)
    out = build_config(cfg, model_dir=tiny_llama, family=family, targets=map_targets(cfg.lora.targets),
                       run_dir=tmp_path / "run", device="cpu", dtype="fp32", seed=3,
                       validation_split="validation", save_epochs=cfg.saved_epochs(), base_model="tiny")
    m = out["model"]
    assert m["lora_attn_modules"] == ["q_proj", "v_proj"] and m["apply_lora_to_mlp"] is True
    assert (m["lora_rank"], m["lora_alpha"], m["lora_dropout"]) == (16, 32.0, 0.1)  # alpha = 2 x rank
    assert m["quantize_base"] is False
    assert out["compile"] is False and out["enable_activation_checkpointing"] is True
    assert (out["epochs"], out["batch_size"], out["gradient_accumulation_steps"]) == (3, 2, 4)
    assert out["optimizer"]["betas"] == [0.9, 0.95] and out["optimizer"]["lr"] == 1e-4
    assert out["lr_scheduler"] == {"_component_": "cruijff_kit_torchtune.schedules.warmup_schedule",
                                   "kind": "linear", "warmup_ratio": 0.1}
    assert out["tokenizer"]["max_seq_len"] == 256
    assert out["checkpointer"]["checkpoint_files"] == ["model.safetensors"]
    assert out["cruijff_kit"]["save_epochs"] == [0, 2]
    assert out["cruijff_kit"]["validation_dataset"]["split"] == "validation"
    yaml.safe_dump(out)  # plain data, writable as train/torchtune.yaml


def test_missing_checkpoint_files_are_named(tmp_path: Path) -> None:
    folder = write_config(tmp_path / "m", LLAMA3_8B)
    with pytest.raises(StageError, match="holds no model weights"):
        checkpoint_files(folder)
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"")
    with pytest.raises(StageError, match=r"model-00002-of-00002.safetensors is missing \(1 of 2"):
        checkpoint_files(folder)


def test_schedules_follow_hf_shapes() -> None:
    assert warmup_steps(100, 0.1) == 10 and warmup_steps(7, 0.1) == 1
    assert lr_factor(5, 100, 10, "cosine") == 0.5
    assert lr_factor(10, 100, 10, "cosine") == 1.0
    assert math.isclose(lr_factor(55, 100, 10, "cosine"), 0.5)
    assert math.isclose(lr_factor(55, 100, 10, "linear"), 0.5)
    assert lr_factor(99, 100, 10, "constant") == 1.0


def test_registration_imports_no_heavy_library() -> None:
    code = ("import sys; from cruijff_kit._api.registry import registry; r = registry();"
            "assert 'torchtune' in r.names('trainer');"
            "heavy = [m for m in ('torch', 'torchtune', 'transformers', 'peft', 'datasets') if m in sys.modules];"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
