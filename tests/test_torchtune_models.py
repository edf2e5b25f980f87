"""The builder chosen for each model family computes what transformers computes, on tiny random models.

For Llama 2, Llama 3, 3.1/3.3 (rope scaling), 3.2 (scaling and tied embeddings) and Qwen2 (tied
embeddings), a tiny model is saved with transformers, its torchtune model is built from the
``model`` and ``checkpointer`` sections our recipe config would hold, and the logits are compared.
"""

from __future__ import annotations

from pathlib import Path

import pytest

LLAMA3_SCALING = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}


@pytest.mark.parametrize(("kind", "rope", "tie", "family"), [
    ("llama", {"rope_type": "default", "rope_theta": 10000.0}, False, "llama2"),
    ("llama", {"rope_type": "default", "rope_theta": 500000.0}, False, "llama3"),
    ("llama", {**LLAMA3_SCALING, "rope_theta": 500000.0, "factor": 8.0}, False, "llama3_1"),
    ("llama", {**LLAMA3_SCALING, "rope_theta": 500000.0, "factor": 32.0}, True, "llama3_2"),
    ("qwen2", {"rope_type": "default", "rope_theta": 1000000.0}, True, "qwen2"),
])
def test_torchtune_builder_matches_transformers(tmp_path: Path, kind: str, rope: dict, tie: bool,
                                                family: str) -> None:
    import torch
    from cruijff_kit_torchtune.compat import import_torchtune
    from cruijff_kit_torchtune.families import detect_family, map_targets
    from cruijff_kit_torchtune.trainer import TorchtuneConfig
    from cruijff_kit_torchtune.tuneconfig import build_config
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if kind == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    hf_cfg = config_cls(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384,
                        rope_parameters=rope, tie_word_embeddings=tie, dtype="float32",
                        initializer_range=0.2)  # large weights: rope scaling moves logits by ~0.2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf = model_cls(hf_cfg).eval()
    hf.save_pretrained(tmp_path / "model")

    import_torchtune()
    from torchtune import config, training

    fam = detect_family(tmp_path / "model")
    assert fam.name == family
    cfg = TorchtuneConfig()
    tune = build_config(cfg, model_dir=tmp_path / "model", family=fam, targets=map_targets(cfg.lora.targets),
                        run_dir=tmp_path / "run", device="cpu", dtype="fp32", seed=0, validation_split=None,
                        save_epochs=[0], base_model="m")
    from omegaconf import OmegaConf

    conf = OmegaConf.create(tune)
    model = config.instantiate(conf.model)
    state = config.instantiate(conf.checkpointer).load_checkpoint()[training.MODEL_KEY]
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    assert all("lora" in k for k in result.missing_keys)  # every base weight was loaded
    model.eval()
    tokens = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (model(tokens) - hf(input_ids=tokens).logits).abs().max().item()
    assert diff < 1e-3
