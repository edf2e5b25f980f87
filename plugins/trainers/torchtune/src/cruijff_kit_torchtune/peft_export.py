"""torchtune LoRA weights -> a PEFT adapter (``adapter_model.safetensors`` + ``adapter_config.json``).

torchtune names LoRA weights ``layers.0.attn.q_proj.lora_a.weight``; PEFT expects
``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``. For Llama models torchtune keeps
q/k projections in a rotary layout that differs from Hugging Face's (its checkpointer permutes them on
load), so LoRA ``B`` matrices of q/k are permuted back; Qwen2 uses the HF layout and is not permuted
(torchtune 0.6.1's own PEFT export permutes it anyway, which is wrong for Qwen2).

Only the adapter is written: no merged weights, whose presence next to an adapter config makes
``from_pretrained`` apply LoRA twice.
"""

from __future__ import annotations

import re
from typing import Any

from cruijff_kit_torchtune.families import ModelFamily

#: torchtune module path -> Hugging Face module path (layer index as {}).
_MODULES = {
    "layers.{}.attn.q_proj": "model.layers.{}.self_attn.q_proj",
    "layers.{}.attn.k_proj": "model.layers.{}.self_attn.k_proj",
    "layers.{}.attn.v_proj": "model.layers.{}.self_attn.v_proj",
    "layers.{}.attn.output_proj": "model.layers.{}.self_attn.o_proj",
    "layers.{}.mlp.w1": "model.layers.{}.mlp.gate_proj",
    "layers.{}.mlp.w2": "model.layers.{}.mlp.down_proj",
    "layers.{}.mlp.w3": "model.layers.{}.mlp.up_proj",
    "output": "lm_head",
}
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[ab])\.weight$")
#: A DoRA magnitude (one per output row): torchtune's ``magnitude``, PEFT's ``lora_magnitude_vector``.
_MAGNITUDE = re.compile(r"^(?P<module>.+)\.magnitude$")


def _hf_module(tt_module: str) -> str:
    m = re.match(r"^layers\.(\d+)\.(.+)$", tt_module)
    if m:
        pattern = f"layers.{{}}.{m.group(2)}"
        if pattern in _MODULES:
            return _MODULES[pattern].format(m.group(1))
    elif tt_module in _MODULES:
        return _MODULES[tt_module]
    raise KeyError(f"no Hugging Face name for torchtune module `{tt_module}`")


def _permute_lora_b(t: Any, n_heads: int, head_dim: int) -> Any:
    """Undo torchtune's interleaved rotary layout on the output rows of a q/k LoRA ``B`` matrix."""
    rank = t.shape[-1]
    return t.view(n_heads, head_dim // 2, 2, rank).transpose(1, 2).reshape(head_dim * n_heads, rank)


def to_peft_weights(state_dict: dict[str, Any], family: ModelFamily) -> dict[str, Any]:
    """torchtune LoRA state dict -> PEFT's saved keys (``base_model.model.<hf>.lora_A.weight``), CPU tensors."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        mag = _MAGNITUDE.match(key)
        if mag:  # rows in torchtune's rotary layout for Llama q/k, like the rows of B
            hf = _hf_module(mag.group("module"))
            tensor = value.detach().cpu().contiguous()
            if family.permute_qk and hf.endswith(("q_proj", "k_proj")):
                heads = family.num_heads if hf.endswith("q_proj") else family.num_kv_heads
                tensor = _permute_lora_b(tensor.unsqueeze(-1), heads, family.head_dim).squeeze(-1).contiguous()
            out[f"base_model.model.{hf}.lora_magnitude_vector"] = tensor
            continue
        m = _KEY.match(key)
        if not m:
            raise KeyError(f"unexpected adapter weight `{key}` (only LoRA A/B matrices and DoRA magnitudes "
                           "are exported)")
        hf = _hf_module(m.group("module"))
        tensor = value.detach().cpu().contiguous()
        if m.group("ab") == "b" and family.permute_qk:
            if hf.endswith("q_proj"):
                tensor = _permute_lora_b(tensor, family.num_heads, family.head_dim).contiguous()
            elif hf.endswith("k_proj"):
                tensor = _permute_lora_b(tensor, family.num_kv_heads, family.head_dim).contiguous()
        out[f"base_model.model.{hf}.lora_{m.group('ab').upper()}.weight"] = tensor
    return out


def peft_config(*, rank: int, alpha: float, dropout: float, target_modules: list[str],
                base_model: str, use_dora: bool = False) -> dict[str, Any]:
    """An ``adapter_config.json`` for a LoRA (or DoRA) adapter on a causal LM, as PEFT writes it."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": int(rank),
        "lora_alpha": alpha,
        "lora_dropout": float(dropout),
        "target_modules": sorted(target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": bool(use_dora),
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": None,
    }
