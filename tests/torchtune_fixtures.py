"""Helpers for the torchtune trainer tests: specs, HF config.json files of real model families, runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml
from trl_fixtures import write_capitalize_data

#: config.json sizes of real checkpoints (weights are never needed to choose a builder).
LLAMA2_7B = {"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
             "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
             "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
             "rope_scaling": None, "tie_word_embeddings": False}
LLAMA3_8B = {**LLAMA2_7B, "vocab_size": 128256, "intermediate_size": 14336, "num_key_value_heads": 8,
             "max_position_embeddings": 8192, "rope_theta": 500000.0}
LLAMA31_8B = {**LLAMA3_8B, "max_position_embeddings": 131072,
              "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
LLAMA33_70B = {**LLAMA31_8B, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
               "num_attention_heads": 64}
LLAMA32_1B = {**LLAMA31_8B, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
              "head_dim": 64, "tie_word_embeddings": True,
              "rope_scaling": {**LLAMA31_8B["rope_scaling"], "factor": 32.0}}
QWEN25_05B = {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
              "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
              "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
              "tie_word_embeddings": True}
MISTRAL_7B = {**LLAMA3_8B, "model_type": "mistral", "vocab_size": 32768}


def write_config(folder: Path, cfg: dict[str, Any]) -> Path:
    """A model folder holding only ``config.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def write_tt_spec(folder: Path, model: Path | str, *, train: dict[str, Any] | None = None,
                  resources: dict[str, Any] | None = None, plugin: str = "torchtune",
                  experiment: str = "tt-test", eval_: list[dict[str, Any]] | None = None) -> Path:
    """A spec with the json-instruct capitalization data and a train section for ``plugin``."""
    folder.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {
        "experiment": experiment,
        "output_dir": str(folder / "out"),
        "seed": 7,
        "model": {"path": str(model)},
        "prompt": {"template": "Capitalize: {input}"},
        "dataset": {"plugin": "json-instruct", "path": str(write_capitalize_data(folder, 16, 8, 4))},
        "train": {"plugin": plugin, **(train or {})},
        "scheduler": {"plugin": "local", "resources": resources or {}},
    }
    if eval_:
        spec["eval"] = eval_
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


#: A fast, learnable training setup for the tiny models.
FAST_TRAIN = {"epochs": 2, "batch_size": 4, "learning_rate": 0.01, "max_seq_length": 64,
              "lora": {"rank": 8, "dropout": 0.0}}


def copy_model(src: Path, dest: Path, *, skip: tuple[str, ...] = ()) -> Path:
    """Copy a model folder, leaving out the named files."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(*skip, "*.lock", ".done"))
    return dest


def lora_logits_match(run_dir: Path, epoch: int, tokens: Any) -> tuple[float, float]:
    """(max |torchtune - PEFT| logit difference, max change the adapter makes) for ``epoch``'s adapter.

    Builds the model from the run's ``train/torchtune.yaml`` with torchtune, loads the base weights and
    the adapter (read back from the PEFT file and converted by key), and compares with transformers +
    ``PeftModel`` on the same tokens.
    """
    import torch
    from cruijff_kit_torchtune.compat import import_torchtune
    from omegaconf import OmegaConf
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    import_torchtune()
    from torchtune import config, training

    cfg = OmegaConf.load(run_dir / "train" / "torchtune.yaml")
    model = config.instantiate(cfg.model)
    ckpt = config.instantiate(cfg.checkpointer)
    model.load_state_dict(ckpt.load_checkpoint()[training.MODEL_KEY], strict=False)
    adapter_dir = run_dir / "train" / f"epoch_{epoch}" / "adapter"
    peft_sd = load_file(str(adapter_dir / "adapter_model.safetensors"))
    tt_sd = _peft_to_tune(peft_sd, cfg)
    missing = model.load_state_dict(tt_sd, strict=False)
    assert not missing.unexpected_keys, missing.unexpected_keys
    model.eval()
    base = AutoModelForCausalLM.from_pretrained(cfg.checkpointer.checkpoint_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    with torch.no_grad():
        ours = model(tokens)
        theirs = peft_model(input_ids=tokens).logits
        with peft_model.disable_adapter():
            plain = peft_model(input_ids=tokens).logits
    return float((ours - theirs).abs().max()), float((theirs - plain).abs().max())


def _peft_to_tune(peft_sd: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """Invert the plugin's export with an independent key map (so the test checks the permutation too)."""
    names = {"self_attn.q_proj": "attn.q_proj", "self_attn.k_proj": "attn.k_proj",
             "self_attn.v_proj": "attn.v_proj", "self_attn.o_proj": "attn.output_proj",
             "mlp.gate_proj": "mlp.w1", "mlp.down_proj": "mlp.w2", "mlp.up_proj": "mlp.w3"}
    heads, kv, dim = cfg.model.num_heads, cfg.model.num_kv_heads, cfg.model.embed_dim
    head_dim = dim // heads
    permute = "qwen2" not in cfg.model._component_
    out = {}
    for key, value in peft_sd.items():
        rest = key.removeprefix("base_model.model.model.")
        layer, module_ab = rest.split(".", 2)[1], rest.split(".", 2)[2]
        module, ab = module_ab.rsplit(".lora_", 1)
        ab = ab.split(".")[0].lower()
        if permute and ab == "b" and module in ("self_attn.q_proj", "self_attn.k_proj"):
            n = heads if module.endswith("q_proj") else kv
            r = value.shape[-1]
            value = value.view(n, 2, head_dim // 2, r).transpose(1, 2).reshape(n * head_dim, r)
        out[f"layers.{layer}.{names[module]}.lora_{ab}.weight"] = value
    return out


class RecordingLogger:
    """A torchtune metric logger that keeps every logged payload (``metric_logger._component_``)."""

    #: ``(step, payload)`` of every ``log_dict`` call since the last :meth:`clear`.
    logged: list[tuple[int, dict[str, Any]]] = []

    def __init__(self, **_: Any) -> None:
        pass

    @classmethod
    def clear(cls) -> None:
        cls.logged = []

    def log_config(self, config: Any) -> None:
        """Nothing to record."""

    def log(self, name: str, data: Any, step: int) -> None:
        type(self).logged.append((int(step), {name: float(data)}))

    def log_dict(self, payload: dict[str, Any], step: int) -> None:
        type(self).logged.append((int(step), {k: float(v) for k, v in payload.items()}))

    def close(self) -> None:
        """Nothing to close."""
