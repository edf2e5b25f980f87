"""Which torchtune model builder fits a Hugging Face model folder, read from its ``config.json``.

Pure Python (no torch): used at plan time for checks and estimates, and at train time to write the
``model`` and ``checkpointer`` sections of ``train/torchtune.yaml``.

Supported: Llama 2, Llama 3, 3.1, 3.2 and 3.3 (``model_type: llama``) and Qwen2 / Qwen2.5
(``model_type: qwen2``). Anything else is a :class:`~cruijff_kit._base.errors.SpecError` that points to the
``trl`` trainer, which trains any causal LM transformers can load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cruijff_kit import SpecError, did_you_mean
from cruijff_kit.files import parse_json_text

#: Hugging Face LoRA target names -> torchtune attention module names.
ATTN_TARGETS = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "output_proj"}
#: Hugging Face MLP target names; torchtune adds LoRA to all three at once (``apply_lora_to_mlp``).
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
#: The output projection (``apply_lora_to_output``).
OUTPUT_TARGET = "lm_head"
KNOWN_TARGETS = (*ATTN_TARGETS, *MLP_TARGETS, OUTPUT_TARGET)

def check_lora_options(lora: Any) -> None:
    """SpecError for ``train.lora`` options torchtune 0.6.1's LoRA recipes cannot train: ``use_rslora`` and
    ``modules_to_save`` (``use_dora`` is supported)."""
    if lora.use_rslora:
        raise SpecError("torchtune 0.6.1's LoRA layers scale by alpha / rank and have no rank-stabilized "
                        "(alpha / sqrt(rank)) variant.", path="train.lora.use_rslora",
                        hint="Remove use_rslora, or use train.plugin: trl (PEFT supports it).")
    if lora.modules_to_save:
        raise SpecError("torchtune's LoRA recipes train the adapter's parameters only, so no module can be "
                        "trained in full and saved with it.", path="train.lora.modules_to_save",
                        hint="Remove modules_to_save, or use train.plugin: trl (PEFT supports it).")


#: NF4 quantization in torchtune needs every quantized weight's element count divisible by this.
NF4_BLOCK = 64 * 256

SUPPORTED = "Llama 2, Llama 3 / 3.1 / 3.2 / 3.3 and Qwen2 / Qwen2.5"


@dataclass(frozen=True)
class ModelFamily:
    """The torchtune side of one HF model: builder, its arguments, and the checkpointer's model type."""

    name: str  # "llama2" | "llama3" | "llama3_1" | "llama3_2" | "qwen2"
    builder: str  # dotted path of the torchtune LoRA component builder
    model_type: str  # FullModelHFCheckpointer model_type
    args: dict[str, Any] = field(default_factory=dict)  # architecture arguments of the builder
    #: True when torchtune's q/k weights are HF's permuted (rotary layout differs: Llama), False for Qwen2.
    permute_qk: bool = True
    tie_word_embeddings: bool = False

    @property
    def num_heads(self) -> int:
        return int(self.args["num_heads"])

    @property
    def num_kv_heads(self) -> int:
        return int(self.args["num_kv_heads"])

    @property
    def embed_dim(self) -> int:
        return int(self.args["embed_dim"])

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


@dataclass(frozen=True)
class LoraTargets:
    """HF LoRA target names translated to torchtune's builder arguments."""

    attn: list[str]
    mlp: bool
    output: bool

    def hf_names(self) -> list[str]:
        """The HF module names that carry LoRA (the ``target_modules`` of the PEFT adapter)."""
        inverse = {v: k for k, v in ATTN_TARGETS.items()}
        names = [inverse[a] for a in self.attn]
        if self.mlp:
            names += list(MLP_TARGETS)
        if self.output:
            names.append(OUTPUT_TARGET)
        return names


def read_hf_config(model_dir: Path) -> dict[str, Any]:
    """``config.json`` of a local model folder, or a StageError-like SpecError naming the file."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise SpecError(f"the torchtune trainer needs a local model folder with config.json, but {path} "
                        "does not exist.", path="model.path",
                        hint="Point model.path at a downloaded Hugging Face model folder.")
    try:
        return parse_json_text(path.read_text(encoding="utf-8"), file=str(path))
    except (OSError, ValueError) as exc:
        raise SpecError(f"{path} is not readable JSON ({exc}).", path="model.path") from None


def _rope(cfg: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """(rope theta, rope scaling dict) from either the transformers 4 or 5 spelling."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    theta = cfg.get("rope_theta", params.get("rope_theta", 10000.0))
    merged = {**params, **scaling}
    return float(theta), merged


def _unsupported(model_dir: Path, what: str) -> SpecError:
    return SpecError(
        f"the torchtune trainer cannot train {model_dir}: {what}. It supports {SUPPORTED} models.",
        path="train.plugin", hint="Use `train.plugin: trl`, which trains any causal LM transformers loads.")


def detect_family(model_dir: Path, cfg: dict[str, Any] | None = None) -> ModelFamily:
    """Pick the torchtune LoRA builder for the model in ``model_dir`` from its ``config.json``."""
    model_dir = Path(model_dir)
    cfg = read_hf_config(model_dir) if cfg is None else cfg
    model_type = cfg.get("model_type")
    try:
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        common = {
            "vocab_size": int(cfg["vocab_size"]),
            "num_layers": int(cfg["num_hidden_layers"]),
            "num_heads": heads,
            "num_kv_heads": int(cfg.get("num_key_value_heads") or heads),
            "embed_dim": hidden,
            "intermediate_dim": int(cfg["intermediate_size"]),
            "max_seq_len": int(cfg.get("max_position_embeddings") or 4096),
            "norm_eps": float(cfg.get("rms_norm_eps", 1e-5)),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise _unsupported(model_dir, f"config.json lacks a usable {exc}") from None
    head_dim = cfg.get("head_dim")
    if head_dim is not None and int(head_dim) != hidden // heads:
        raise _unsupported(model_dir, f"head_dim {head_dim} differs from hidden_size / num_attention_heads "
                           f"({hidden // heads}), which torchtune's builders assume")
    theta, rope = _rope(cfg)
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    tie = bool(cfg.get("tie_word_embeddings", False))

    if model_type == "qwen2":
        if rope_type != "default":
            raise _unsupported(model_dir, f"rope scaling `{rope_type}` is not supported by torchtune's Qwen2")
        return ModelFamily("qwen2", "torchtune.models.qwen2._component_builders.lora_qwen2", "QWEN2",
                           {**common, "rope_base": theta, "tie_word_embeddings": tie},
                           permute_qk=False, tie_word_embeddings=tie)
    if model_type != "llama":
        raise _unsupported(model_dir, f"its config.json has model_type `{model_type}`")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise _unsupported(model_dir, "it has attention or MLP biases, which torchtune's Llama builders lack")
    if rope_type == "llama3":
        expected = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        odd = {k: rope.get(k) for k, v in expected.items() if k in rope and float(rope[k]) != v}
        if odd:
            raise _unsupported(model_dir, f"its Llama 3 rope scaling {odd} differs from torchtune's fixed values")
        factor = int(float(rope.get("factor", 8)))
        if tie:  # Llama 3.2 1B / 3B
            return ModelFamily("llama3_2", "torchtune.models.llama3_2._component_builders.lora_llama3_2",
                               "LLAMA3_2", {**common, "rope_base": int(theta), "scale_factor": factor,
                                            "tie_word_embeddings": True}, tie_word_embeddings=True)
        # Llama 3.1 and 3.3
        return ModelFamily("llama3_1", "torchtune.models.llama3_1._component_builders.lora_llama3_1",
                           "LLAMA3", {**common, "rope_base": int(theta), "scale_factor": factor})
    if rope_type != "default":
        raise _unsupported(model_dir, f"rope scaling `{rope_type}` is not supported by torchtune's Llama builders")
    if tie:
        raise _unsupported(model_dir, "it ties input and output embeddings without Llama 3.2 rope scaling")
    if theta == 10000.0:
        return ModelFamily("llama2", "torchtune.models.llama2._component_builders.lora_llama2", "LLAMA2",
                           dict(common))
    return ModelFamily("llama3", "torchtune.models.llama3._component_builders.lora_llama3", "LLAMA3",
                       {**common, "rope_base": int(theta)})


def map_targets(targets: list[str] | str, apply_lora_to_mlp: bool | None = None,
                apply_lora_to_output: bool | None = None) -> LoraTargets:
    """Translate ``train.lora.targets`` (HF names) to torchtune's ``lora_attn_modules`` and flags.

    torchtune adds LoRA to all three MLP projections or none, so ``gate_proj``/``up_proj``/``down_proj``
    must be listed together (or replaced by ``apply_lora_to_mlp: true``). ``all-linear`` (PEFT's meaning:
    every linear layer of the blocks, not the output layer) is the four attention projections and the MLP;
    the output projection only with ``apply_lora_to_output: true``.
    """
    if targets == "all-linear":
        if apply_lora_to_mlp is False:
            raise SpecError("targets: all-linear puts LoRA on the MLP projections, and apply_lora_to_mlp: false "
                            "takes it off them.", path="train.apply_lora_to_mlp",
                            hint="Remove apply_lora_to_mlp, or list the attention targets instead of all-linear.")
        return LoraTargets(list(ATTN_TARGETS.values()), True, bool(apply_lora_to_output))
    unknown = [t for t in targets if t not in KNOWN_TARGETS]
    if unknown:
        raise SpecError(
            f"LoRA target `{unknown[0]}` is not a module of torchtune's Llama / Qwen2 models.",
            path="train.lora.targets",
            hint=f"{did_you_mean(unknown[0], KNOWN_TARGETS)} Valid targets: {', '.join(KNOWN_TARGETS)}.")
    attn = [tt for hf, tt in ATTN_TARGETS.items() if hf in targets]
    mlp_listed = [t for t in MLP_TARGETS if t in targets]
    if mlp_listed and len(mlp_listed) != len(MLP_TARGETS):
        missing = [t for t in MLP_TARGETS if t not in targets]
        raise SpecError(
            f"lists {', '.join(mlp_listed)} but not {', '.join(missing)}: torchtune adds LoRA to the three MLP "
            "projections together.", path="train.lora.targets",
            hint="List all of gate_proj, up_proj, down_proj (or set apply_lora_to_mlp: true), or none of them.")
    mlp = bool(mlp_listed) if apply_lora_to_mlp is None else apply_lora_to_mlp
    output = (OUTPUT_TARGET in targets) if apply_lora_to_output is None else apply_lora_to_output
    if not attn and not mlp and not output:
        raise SpecError("selects no module for LoRA.", path="train.lora.targets",
                        hint="Add q_proj and v_proj, for example.")
    return LoraTargets(attn, mlp, output)


def quantized_weight_shapes(family: ModelFamily) -> dict[str, tuple[int, int]]:
    """Shapes of the linear weights torchtune stores in NF4 when ``quantize_base`` is on."""
    a = family.args
    q_out = a["num_heads"] * family.head_dim
    kv_out = a["num_kv_heads"] * family.head_dim
    hidden, inter = a["embed_dim"], a["intermediate_dim"]
    return {"q_proj": (q_out, hidden), "k_proj": (kv_out, hidden), "v_proj": (kv_out, hidden),
            "o_proj": (hidden, q_out), "gate_proj": (inter, hidden), "up_proj": (inter, hidden),
            "down_proj": (hidden, inter)}


def check_qlora(family: ModelFamily, model_dir: Path) -> None:
    """Raise a SpecError when a weight torchtune would quantize to NF4 cannot be (numel % 16384)."""
    bad = {n: s for n, s in quantized_weight_shapes(family).items() if (s[0] * s[1]) % NF4_BLOCK}
    if bad:
        shown = ", ".join(f"{n} {s[0]}x{s[1]}" for n, s in bad.items())
        raise SpecError(
            f"method qlora with torchtune needs every quantized weight's size divisible by {NF4_BLOCK} "
            f"(64 x 256, its NF4 block layout), but {model_dir} has {shown}.", path="train.method",
            hint="Use method: lora, or train.plugin: trl (bitsandbytes 4-bit has no such limit).")
