"""The run spec's ``train`` section -> a torchtune recipe config (``train/torchtune.yaml``).

Pure Python: builds a plain dict that torchtune's ``config.instantiate`` reads (``_component_``
keys). The stock recipe keys are the ones torchtune's LoRA recipes document; the ``cruijff_kit``
section holds what our recipe adds (epochs to save, validation, global step limit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cruijff_kit import StageError
from cruijff_kit.files import parse_json_text
from cruijff_kit_torchtune.families import LoraTargets, ModelFamily, check_lora_options
from cruijff_kit_torchtune.trainer_args import COMPONENTS, check_args, flatten, optimizer_without_fused

WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def checkpoint_files(model_dir: Path) -> list[str]:
    """The weight files of a HF model folder (from its index when sharded); StageError when missing."""
    model_dir = Path(model_dir)
    for index in WEIGHT_INDEXES:
        path = model_dir / index
        if path.is_file():
            try:
                index = parse_json_text(path.read_text(encoding="utf-8"), file=str(path))
                files = sorted(set(index["weight_map"].values()))
            except (OSError, ValueError, KeyError) as exc:
                raise StageError(f"{path} is not a valid weight index ({exc}).") from None
            missing = [f for f in files if not (model_dir / f).is_file()]
            if missing:
                raise StageError(f"checkpoint file {model_dir / missing[0]} is missing ({len(missing)} of "
                                 f"{len(files)} files listed in {index}). Finish downloading the model, or "
                                 "point model.path at a complete folder.")
            return files
    for name in WEIGHT_FILES:
        if (model_dir / name).is_file():
            return [name]
    raise StageError(f"{model_dir} holds no model weights (expected model.safetensors, a sharded "
                     "model.safetensors.index.json with its files, or pytorch_model.bin). Finish downloading "
                     "the model, or point model.path at a complete folder.")


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in nested dicts, creating mappings as needed."""
    parts = dotted.split(".")
    cur = data
    for part in parts[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = cur[part] = {}
        cur = nxt
    cur[parts[-1]] = value


def build_config(cfg: Any, *, model_dir: Path, family: ModelFamily, targets: LoraTargets, run_dir: Path,
                 device: str, dtype: str, seed: int, validation_split: str | None,
                 save_epochs: list[int], base_model: str, metric_logger: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full recipe config for a :class:`~cruijff_kit_torchtune.trainer.TorchtuneConfig` ``cfg``
    (``metric_logger``: the trackers' logger section, :func:`cruijff_kit_torchtune.trackers.metric_logger_config`;
    default the console)."""
    run_dir = Path(run_dir)
    train_dir = run_dir / "train"
    model = {
        "_component_": family.builder,
        "lora_attn_modules": list(targets.attn),
        "apply_lora_to_mlp": targets.mlp,
        "apply_lora_to_output": targets.output,
        **family.args,
        "lora_rank": int(cfg.lora.rank),
        "lora_alpha": float(cfg.lora.alpha),
        "lora_dropout": float(cfg.lora.dropout),
        "quantize_base": cfg.method == "qlora",
        "use_dora": bool(cfg.lora.use_dora),
    }
    dataset = {"_component_": "cruijff_kit_torchtune.data.chat_dataset", "run_dir": str(run_dir), "split": "train"}
    out: dict[str, Any] = {
        "output_dir": str(train_dir),
        "model": model,
        "tokenizer": {
            "_component_": "cruijff_kit_torchtune.tokenizer.hf_chat_tokenizer",
            "path": str(model_dir),
            "max_seq_len": int(cfg.max_seq_length),
            "chat_template": cfg.chat_template,
        },
        "checkpointer": {
            "_component_": "torchtune.training.FullModelHFCheckpointer",
            "checkpoint_dir": str(model_dir),
            "checkpoint_files": checkpoint_files(model_dir),
            "recipe_checkpoint": None,
            "output_dir": str(train_dir),
            "model_type": family.model_type,
        },
        "resume_from_checkpoint": False,
        "save_adapter_weights_only": True,
        "dataset": dataset,
        "seed": int(seed),
        "shuffle": True,
        "batch_size": int(cfg.batch_size),
        "optimizer": {
            "_component_": COMPONENTS["optimizer"],
            "lr": float(cfg.learning_rate),
            "weight_decay": float(cfg.weight_decay),
            "fused": device == "cuda",
        },
        "lr_scheduler": {
            "_component_": "cruijff_kit_torchtune.schedules.warmup_schedule",
            "kind": cfg.lr_scheduler,
            "warmup_ratio": float(cfg.warmup_ratio),
        },
        "loss": {"_component_": COMPONENTS["loss"]},
        "epochs": int(cfg.epochs),
        "max_steps_per_epoch": None,
        "gradient_accumulation_steps": int(cfg.gradient_accumulation),
        "clip_grad_norm": cfg.clip_grad_norm,
        "compile": bool(cfg.compile),
        "metric_logger": metric_logger or {"_component_": "cruijff_kit_torchtune.recipe.ConsoleLogger"},
        "log_every_n_steps": int(cfg.logging_steps),
        "log_peak_memory_stats": False,
        "device": device,
        "dtype": dtype,
        "enable_activation_checkpointing": bool(cfg.gradient_checkpointing),
        "enable_activation_offloading": False,
        "profiler": {"_component_": COMPONENTS["profiler"], "enabled": False},
        "cruijff_kit": {
            "save_epochs": list(save_epochs),
            "validation_dataset": ({**dataset, "split": validation_split} if validation_split else None),
            "eval_steps": cfg.eval_steps,
            "max_steps": cfg.max_steps,
            "keep_state": bool(cfg.keep_state),
            "base_model": base_model,
            "base_model_path": str(model_dir),
            "family": family.name,
            "lora_targets": targets.hf_names(),
        },
    }
    check_lora_options(cfg.lora)
    check_args(cfg.trainer_args, cfg.overrides or {}, None)  # checked at plan time; again for a hand-edited spec
    extra = {**flatten(cfg.trainer_args), **flatten(cfg.overrides or {})}
    for key, value in extra.items():
        set_dotted(out, key, value)
    if "optimizer.fused" not in extra and optimizer_without_fused(out["optimizer"]):
        del out["optimizer"]["fused"]  # the default's fused kernel switch, which the chosen optimizer lacks
    return out
