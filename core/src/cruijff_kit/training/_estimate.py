"""Cheap resource estimates for ``ck plan``, from the model's ``config.json`` alone (no torch).

Every trainer shares this: :func:`estimate_run` turns a planned run and its :class:`TrainConfig`
into an :class:`~cruijff_kit._api.kinds.Estimate` (parameters, trainable LoRA parameters, memory, tokens
per epoch). :func:`check_targets` is the plan-time check that LoRA target modules exist in the model.

The arithmetic covers decoder-only Llama-style architectures (Llama, Mistral, Qwen2, Qwen3): an
embedding, ``num_hidden_layers`` blocks of attention (``q/k/v/o_proj``) and a gated MLP
(``gate/up/down_proj``) with RMS norms, and an LM head that may be tied to the embedding. Memory
figures are estimates for planning, not guarantees.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cruijff_kit._api.kinds import Estimate, Resources, TrainConfig
from cruijff_kit._base.errors import DataError, SpecError, did_you_mean
from cruijff_kit._base.hubcachedir import hub_cache_dir
from cruijff_kit._base.parsing import parse_json_text
from cruijff_kit._base.sizes import human_bytes

if TYPE_CHECKING:  # pragma: no cover
    from cruijff_kit._api.records import PlannedRun

#: ``model_type`` values whose layout the arithmetic here knows exactly.
KNOWN_TYPES = ("llama", "mistral", "qwen2", "qwen3")
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
#: Bytes per parameter of a weight stored in each precision (4-bit includes NF4 block constants).
WEIGHT_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "4bit": 0.5 + 0.127 / 8}
#: Bytes per trainable parameter: fp32 weight, fp32 gradient, and AdamW's two moments.
OPTIMIZER_BYTES_PER_TRAINABLE = 16
#: Characters per token assumed when only a character count is known.
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-style decoder read from its ``config.json``."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    tied_embeddings: bool
    attention_bias: bool
    mlp_bias: bool
    qk_norm: bool

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ModelShape:
        """Read the sizes from a parsed ``config.json`` (raises KeyError when a size is missing)."""
        if "text_config" in cfg and "hidden_size" not in cfg:  # multimodal wrappers
            cfg = {**cfg["text_config"], "tie_word_embeddings": cfg.get("tie_word_embeddings", False)}
        mtype = str(cfg.get("model_type", "unknown"))
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        return cls(
            model_type=mtype,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            intermediate_size=int(cfg["intermediate_size"]),
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", mtype == "qwen2")),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            qk_norm=mtype == "qwen3",
        )

    @property
    def known(self) -> bool:
        """True when the architecture's layout is one this module knows exactly."""
        return self.model_type in KNOWN_TYPES

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """``(in_features, out_features)`` of each per-layer linear module, by HF module name."""
        h, q, kv, i = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, \
            self.intermediate_size
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def linear_parameters(self) -> int:
        """Parameters in the per-layer linear modules (what 4-bit quantization shrinks), all layers."""
        per_layer = 0
        for name, (fan_in, fan_out) in self.linear_shapes().items():
            bias = (self.attention_bias and name in ("q_proj", "k_proj", "v_proj")) or \
                (self.mlp_bias and name in MLP)
            per_layer += fan_in * fan_out + (fan_out if bias else 0)
        return per_layer * self.num_layers

    def parameters(self) -> int:
        """Total parameter count (embedding, blocks, final norm, LM head unless tied)."""
        embed = self.vocab_size * self.hidden_size
        norms = 2 * self.hidden_size + (2 * self.head_dim if self.qk_norm else 0)
        head = 0 if self.tied_embeddings else embed
        return embed + self.linear_parameters() + norms * self.num_layers + self.hidden_size + head

    def lora_parameters(self, targets: list[str] | str, rank: int, *, dora: bool = False,
                        modules_to_save: list[str] | None = None) -> int:
        """Trainable parameters of LoRA adapters of ``rank`` on ``targets`` (per layer, plus ``lm_head``);
        ``all-linear`` is every linear layer of the blocks. ``dora`` adds DoRA's magnitude vector (one value
        per output feature of each adapted layer); ``modules_to_save`` adds a full trainable copy of each
        named module (per-layer linear modules, ``lm_head``, ``embed_tokens``; other names are not counted)."""
        shapes = self.linear_shapes()
        if targets == "all-linear":
            targets = list(shapes)
        per_rank = sum(shapes[t][0] + shapes[t][1] for t in targets if t in shapes) * self.num_layers
        outputs = sum(shapes[t][1] for t in targets if t in shapes) * self.num_layers
        if "lm_head" in targets:
            per_rank += self.hidden_size + self.vocab_size
            outputs += self.vocab_size
        total = rank * per_rank + (outputs if dora else 0)
        for name in modules_to_save or ():
            if name in shapes:
                total += shapes[name][0] * shapes[name][1] * self.num_layers
            elif name in ("lm_head", "embed_tokens"):
                total += self.vocab_size * self.hidden_size
        return total


# --------------------------------------------------------------------------- finding config.json
def find_config(model: str | Path) -> Path | None:
    """The ``config.json`` of a local model folder, or of a hub id already in the local hub cache: the
    snapshot its ``refs/main`` names (read by ``huggingface_hub.try_to_load_from_cache``), else, when no
    ref names ``main``, the only snapshot there (as the hub library's own verification resolves it)."""
    p = Path(model).expanduser()
    if (p / "config.json").is_file():
        return p / "config.json"
    text = str(model)
    if text.count("/") == 1 and not p.exists():
        from huggingface_hub import try_to_load_from_cache

        cache = hub_cache_dir()
        try:
            found = try_to_load_from_cache(text, "config.json", cache_dir=cache)
        except (ValueError, OSError):  # not a valid hub id, or an unreadable ref
            return None
        if isinstance(found, str):  # else None, or the hub's "known missing" marker
            return Path(found)
        repo = cache / ("models--" + text.replace("/", "--"))
        if not (repo / "refs" / "main").is_file():
            only = list((repo / "snapshots").glob("*/config.json"))
            return only[0] if len(only) == 1 else None
    return None


@lru_cache(maxsize=64)
def _read_json(path: str, mtime_ns: int) -> dict[str, Any]:
    return parse_json_text(Path(path).read_text(encoding="utf-8"), file=path)


def read_model_config(model: str | Path) -> dict[str, Any] | None:
    """Parsed ``config.json`` of ``model`` (cached per file and modification time), or None."""
    path = find_config(model)
    if path is None:
        return None
    try:
        return dict(_read_json(str(path), path.stat().st_mtime_ns))
    except (OSError, ValueError, TypeError, DataError):  # unreadable, repeated keys, deep nesting, not a mapping
        return None


def model_shape(model: str | Path) -> ModelShape | None:
    """The :class:`ModelShape` of ``model``, or None when its config is missing or not Llama-style."""
    cfg = read_model_config(model)
    if cfg is None:
        return None
    try:
        return ModelShape.from_config(cfg)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def model_ref(run: PlannedRun) -> str:
    """The local folder of the run's base model when it exists, else the name the user gave."""
    model = run.spec["model"]
    return str(model.get("local_path") or model["path"])


# --------------------------------------------------------------------------- plan-time checks
#: Module outside the decoder layers that LoRA can also target (the output projection).
OUTPUT_MODULE = "lm_head"


def target_modules(model: str | Path) -> list[str] | None:
    """LoRA-able module names of ``model`` (known architectures only), else None."""
    shape = model_shape(model)
    if shape is None or not shape.known:
        return None
    return [*shape.linear_shapes(), OUTPUT_MODULE]


def check_targets(run: PlannedRun, config: TrainConfig) -> None:
    """Raise a :class:`SpecError` when a LoRA target is not a module of the run's model.

    Only checked when the model's config is readable and of a known architecture.
    """
    names = target_modules(model_ref(run))
    if names is None or config.lora.all_linear:  # all-linear: every linear layer the model has
        return
    bad = [t for t in config.lora.targets if t not in names]
    if bad:
        raise SpecError(
            f"LoRA target module(s) {bad} do not exist in {run.spec['model']['path']} "
            f"(a {model_shape(model_ref(run)).model_type} model).",  # type: ignore[union-attr]
            file=run.spec.get("run", {}).get("spec_file"), path="train.lora.targets",
            hint=did_you_mean(bad[0], names) + " Its linear modules are: " + ", ".join(names) + ".")


def check_validation_split(run: PlannedRun, config: TrainConfig) -> None:
    """Raise a :class:`SpecError` when ``validation`` is on and the dataset says it has no such split.

    Only checked when the dataset plugin can list its splits cheaply.
    """
    if not config.validation:
        return
    try:
        splits = run.dataset().splits()
    except Exception:  # a dataset that cannot describe itself cheaply is checked when the stage runs
        splits = None
    if splits is not None and "validation" not in splits:
        raise SpecError(f"train.validation is true, but the dataset has no `validation` split (it has {splits}).",
                        file=run.spec.get("run", {}).get("spec_file"), path="train.validation",
                        hint="Add a validation split to the data, or set train.validation: false.")


# --------------------------------------------------------------------------- memory
def planned_precision(precision: str, gpus: int) -> str:
    """What ``precision: auto`` will become, judged from the planned resources (no torch)."""
    if precision != "auto":
        return precision
    return "bf16" if gpus > 0 else "fp32"


def activation_bytes(shape: ModelShape, batch_size: int, seq_len: int, dtype_bytes: float,
                     gradient_checkpointing: bool) -> int:
    """Activations kept for the backward pass at ``batch_size`` x ``seq_len`` (a rough upper bound).

    Per layer: the inputs of the norms, attention projections, scores and softmax, and the gated MLP.
    With gradient checkpointing only each layer's input is kept, plus one layer recomputed at a time.
    The fp32 logits and their gradient are added once.
    """
    b, s, h, i = batch_size, seq_len, shape.hidden_size, shape.intermediate_size
    q = shape.num_heads * shape.head_dim
    kv = shape.num_kv_heads * shape.head_dim
    per_layer = b * s * (4 * h + 2 * q + 2 * kv + 3 * i) + 2 * b * shape.num_heads * s * s
    if gradient_checkpointing:
        elements = b * s * h * shape.num_layers + per_layer
    else:
        elements = per_layer * shape.num_layers
    logits = 2 * b * s * shape.vocab_size * 4
    return int(elements * dtype_bytes + logits)


def memory_breakdown(shape: ModelShape, *, method: str, precision: str, trainable: int, batch_size: int,
                     seq_len: int, gradient_checkpointing: bool) -> dict[str, int]:
    """Bytes per part: ``weights``, ``optimizer`` (LoRA weights, grads, AdamW state), ``activations``."""
    dtype_bytes = WEIGHT_BYTES.get(precision, 4.0)
    total = shape.parameters()
    if method == "qlora":
        linear = shape.linear_parameters()
        weights = linear * WEIGHT_BYTES["4bit"] + (total - linear) * dtype_bytes
    else:
        weights = total * dtype_bytes
    return {
        "weights": int(weights),
        "optimizer": int(trainable * OPTIMIZER_BYTES_PER_TRAINABLE),
        "activations": activation_bytes(shape, batch_size, seq_len, dtype_bytes, gradient_checkpointing),
    }


# --------------------------------------------------------------------------- data
def tokens_per_epoch(run: PlannedRun, split: str = "train") -> tuple[int | None, int | None]:
    """``(tokens, rows)`` of ``split`` from the dataset plugin's cheap ``describe()`` (chars / 4)."""
    try:
        from cruijff_kit._api.kinds import Prompt

        info = run.dataset().describe(Prompt.model_validate(run.spec["prompt"])) or {}
    except Exception:  # a dataset that cannot describe itself cheaply gives no estimate
        return None, None
    chars = (info.get("chars") or {}).get(split)
    rows = (info.get("rows") or {}).get(split)
    return (int(chars) // CHARS_PER_TOKEN if chars is not None else None,
            int(rows) if rows is not None else None)


# --------------------------------------------------------------------------- the estimate
def world_size_of(run: PlannedRun) -> int:
    """Data-parallel processes the run's resources imply."""
    from cruijff_kit.training._distributed import world_size

    return world_size(Resources.model_validate(run.spec["scheduler"].get("resources", {})))


def estimate_run(run: PlannedRun, config: TrainConfig) -> Estimate:
    """The resource estimate of a LoRA/QLoRA training run, for any trainer.

    Reads only ``config.json`` and the dataset's ``describe()``. When the model has no local config
    (a hub id not in the local cache), the estimate holds only what the data gives, plus a note.
    """
    est = Estimate()
    resources = Resources.model_validate(run.spec["scheduler"].get("resources", {}))
    tokens, rows = tokens_per_epoch(run)
    est.tokens_per_epoch = tokens
    if tokens is not None:
        est.notes.append(f"tokens per epoch estimated as characters / {CHARS_PER_TOKEN}")
    if rows:
        ranks = world_size_of(run)
        per_step = config.batch_size * config.gradient_accumulation * ranks
        steps = -(-rows // per_step)
        total = steps * config.epochs if config.max_steps is None else min(config.max_steps, steps * config.epochs)
        est.notes.append(f"{steps} optimizer steps per epoch ({rows} rows / {per_step} per step), {total} in all")

    ref = model_ref(run)
    shape = model_shape(ref)
    if shape is None:
        why = "has no readable config.json" if read_model_config(ref) is None else \
            "has a config.json without Llama-style sizes"
        est.notes.append(f"model {run.spec['model']['path']} {why} here; no parameter or memory estimate "
                         "(download it, or give a local folder, to get one)")
        return est
    if not shape.known:
        est.notes.append(f"model_type {shape.model_type!r}: sizes computed as for a Llama-style decoder")
    est.parameters = shape.parameters()
    lora = config.lora
    est.trainable_parameters = shape.lora_parameters(lora.targets, lora.rank, dora=lora.use_dora,
                                                     modules_to_save=lora.modules_to_save)
    precision = planned_precision(config.precision, resources.gpus)
    parts = memory_breakdown(shape, method=config.method, precision=precision,
                             trainable=est.trainable_parameters, batch_size=config.batch_size,
                             seq_len=config.max_seq_length, gradient_checkpointing=config.gradient_checkpointing)
    est.memory_bytes = sum(parts.values())
    wdesc = "4-bit NF4 linear layers" if config.method == "qlora" else precision
    est.notes.append("memory per process: " + ", ".join(
        f"{k} {human_bytes(v)}" + (f" ({wdesc})" if k == "weights" else "") for k, v in parts.items()))
    return est
