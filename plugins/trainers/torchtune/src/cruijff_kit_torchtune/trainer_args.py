"""``train.trainer_args`` (and ``train.overrides``) of ``plugin: torchtune``: keys of the recipe config.

Keys are dotted paths into ``train/torchtune.yaml`` (``optimizer.betas``, ``loss._component_``); a
mapping value stands for its dotted keys (``optimizer: {betas: [...]}`` sets ``optimizer.betas`` and keeps
the rest of the section). One table says what the plugin sets itself: :data:`NAMED` (from a named spec
option), :data:`REFUSED` (never accepted: the run layout depends on it, or the model's ``config.json``
decides it) and :data:`DEFAULTS` (a fixed value ``trainer_args`` may change). :data:`RECIPE_KEYS` are the
top-level keys torchtune 0.6.1's LoRA recipes read (a test holds it to the pinned recipes' source).
A key below a component section (one with ``_component_``) must be a parameter of that component, and a
``_component_`` must name something its module has. An empty mapping, a scalar or null stays one key that
replaces its whole section: refused where a named key lies below it (``optimizer``, over ``optimizer.lr``).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from cruijff_kit import SpecError, did_you_mean

#: The components the plugin's recipe config names by default (section -> ``_component_``).
COMPONENTS = {
    "optimizer": "torch.optim.AdamW",
    "loss": "torchtune.modules.loss.CEWithChunkedOutputLoss",
    "profiler": "torchtune.training.setup_torch_profiler",
}
#: Top-level keys of torchtune 0.6.1's LoRA recipes (single device and distributed).
RECIPE_KEYS = frozenset({
    "output_dir", "model", "tokenizer", "checkpointer", "resume_from_checkpoint", "save_adapter_weights_only",
    "dataset", "collate_fn", "seed", "shuffle", "batch_size", "optimizer", "lr_scheduler", "loss", "epochs",
    "max_steps_per_epoch", "gradient_accumulation_steps", "clip_grad_norm", "compile", "metric_logger",
    "log_every_n_steps", "log_peak_memory_stats", "device", "dtype", "enable_activation_checkpointing",
    "enable_activation_offloading", "profiler", "cudnn_deterministic_mode", "low_cpu_ram",
    "custom_sharded_layers", "fsdp_cpu_offload", "fsdp_reshard_after_forward", "cruijff_kit",
})
#: Keys set from a named spec option: dotted key -> the option to set instead.
NAMED: dict[str, str] = {
    "epochs": "train.epochs",
    "max_steps_per_epoch": "train.max_steps",
    "batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation",
    "optimizer.lr": "train.learning_rate",
    "optimizer.weight_decay": "train.weight_decay",
    "lr_scheduler": "train.lr_scheduler and train.warmup_ratio",
    "seed": "the spec's `seed`",
    "tokenizer.max_seq_len": "train.max_seq_length",
    "tokenizer.chat_template": "train.chat_template",
    "model.lora_rank": "train.lora.rank",
    "model.lora_alpha": "train.lora.alpha",
    "model.lora_dropout": "train.lora.dropout",
    "model.lora_attn_modules": "train.lora.targets",
    "model.apply_lora_to_mlp": "train.apply_lora_to_mlp (or train.lora.targets)",
    "model.apply_lora_to_output": "train.apply_lora_to_output (or lm_head in train.lora.targets)",
    "model.use_dora": "train.lora.use_dora",
    "model.quantize_base": "train.method",
    "dtype": "train.precision",
    "device": "scheduler.resources.gpus",
    "enable_activation_checkpointing": "train.gradient_checkpointing",
    "compile": "train.compile",
    "clip_grad_norm": "train.clip_grad_norm",
    "log_every_n_steps": "train.logging_steps",
    "metric_logger": "train.report_to (the metrics rows always go to train/metrics.jsonl)",
}
_LAYOUT = "the run layout depends on it (adapters per epoch, metrics rows, resumable state in train/state/)"
#: Keys never accepted, with the reason (a dotted key below one of these is refused too).
REFUSED: dict[str, str] = {
    "output_dir": _LAYOUT,
    "checkpointer": f"{_LAYOUT}; the base weights are read from model.path",
    "resume_from_checkpoint": "`ck run` resumes a stopped train stage by itself",
    "save_adapter_weights_only": f"{_LAYOUT} (adapter-only PEFT checkpoints)",
    "dataset": "the rows come from the spec's dataset and prompt",
    "collate_fn": "the rows come from the spec's dataset and prompt, tokenized by the plugin",
    "cruijff_kit": "it holds what the plugin's recipe adds; set the train options instead",
    "tokenizer": "the tokenizer is the model's own (model.path), with train.chat_template",
    "model": "the builder and its architecture come from the model's config.json",
}
#: Keys the plugin sets to a fixed value that trainer_args may change.
DEFAULTS = frozenset({"shuffle", "optimizer.fused", "log_peak_memory_stats", "enable_activation_offloading",
                      "profiler.enabled", "loss._component_", "optimizer._component_", "profiler._component_"})

#: Keys the recipes read as true/false.
BOOL_KEYS = frozenset({"shuffle", "optimizer.fused", "log_peak_memory_stats", "enable_activation_offloading",
                       "profiler.enabled", "low_cpu_ram", "fsdp_cpu_offload", "fsdp_reshard_after_forward",
                       "cudnn_deterministic_mode"})


def flatten(args: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of ``args``: a mapping value becomes its dotted keys (one level per mapping)."""
    out: dict[str, Any] = {}
    for key, value in args.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def _module(name: str) -> ModuleType:
    """The module ``name`` (torchtune imported with the plugin's shim)."""
    if name.split(".", 1)[0] == "torchtune":
        from cruijff_kit_torchtune.compat import import_torchtune

        import_torchtune()
    return importlib.import_module(name)


def optimizer_without_fused(section: Mapping[str, Any]) -> bool:
    """True when the ``optimizer`` section names another optimizer than the default and it takes no ``fused``
    (the plugin's own default, dropped then; a ``fused`` the user set stays and is refused at plan time)."""
    component = str(section.get("_component_", COMPONENTS["optimizer"]))
    if component == COMPONENTS["optimizer"]:
        return False
    params = _parameters(component)
    return params is not None and "fused" not in params


def _parameters(component: str, file: str | None = None, path: str | None = None) -> list[str] | None:
    """Keyword parameters of a component, or None when it takes any (``**kwargs``), its signature cannot be
    read, or its module cannot be imported here (torchtune may be absent where the run is planned).

    A module that imports without the name the path ends in is a :class:`SpecError` at ``path`` with a
    did-you-mean over the module's public names (``torch.optim.SDG``: did you mean ``SGD``?)."""
    module_name, _, name = component.rpartition(".")
    if not module_name:
        raise SpecError(f"`{component}` is not a dotted path to a class or function (module.Name).", file=file,
                        path=path, hint=f"Give the full path, e.g. {COMPONENTS['optimizer']}.")
    try:
        module = _module(module_name)
    except ImportError:
        return None
    if not hasattr(module, name):
        public = [n for n in dir(module) if not n.startswith("_")]
        raise SpecError(f"`{component}` names no `{name}` in the module {module_name}.", file=file, path=path,
                        hint=did_you_mean(name, public))
    try:
        sig = inspect.signature(getattr(module, name))
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return [n for n, p in sig.parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]


def check_args(trainer_args: Mapping[str, Any], overrides: Mapping[str, Any], file: str | None) -> None:
    """Plan time: every key of ``train.trainer_args`` (and of ``train.overrides``, the same thing) is a
    recipe key that no named option sets; a key below a component section is a parameter of it; a key
    is not set in both."""
    from cruijff_kit.training import check_trainer_args

    flat = {"train.trainer_args": flatten(trainer_args), "train.overrides": flatten(overrides)}
    both = sorted(set(flat["train.trainer_args"]) & set(flat["train.overrides"]))
    if both:
        raise SpecError(f"`{both[0]}` is set in both train.trainer_args and train.overrides.", file=file,
                        path=f"train.overrides.{both[0]}", hint="Set it in trainer_args only.")
    merged = {**flat["train.trainer_args"], **flat["train.overrides"]}
    for path, args in flat.items():
        check_trainer_args(args, known=RECIPE_KEYS, named=NAMED, refused=REFUSED,
                           owner="torchtune 0.6.1's LoRA recipe config", file=file, path=path)
        for section in COMPONENTS:  # each component chosen resolves (a mistyped name is not waved through)
            if f"{section}._component_" in args:
                _parameters(str(args[f"{section}._component_"]), file, f"{path}.{section}._component_")
    chosen = merged.get("optimizer._component_")
    if chosen is not None:  # the named options the plugin writes into the section must still apply
        params = _parameters(str(chosen))
        missing = [k for k in ("lr", "weight_decay") if params is not None and k not in params]
        if missing:
            where = "train.overrides" if "optimizer._component_" in flat["train.overrides"] else "train.trainer_args"
            raise SpecError(f"{chosen} takes no `{missing[0]}`, which {NAMED['optimizer.' + missing[0]]} sets.",
                            file=file, path=f"{where}.optimizer._component_",
                            hint="Choose an optimizer that takes a learning rate and weight decay.")
    for path, args in flat.items():
        for key, value in args.items():
            if key in BOOL_KEYS and not isinstance(value, bool):
                raise SpecError(f"`{key}` must be true or false, not {value!r:.40}.", file=file, path=f"{path}.{key}")
            section, _, param = key.partition(".")
            if not param or param == "_component_" or section not in COMPONENTS:
                continue
            component = str(merged.get(f"{section}._component_", COMPONENTS[section]))
            params = _parameters(component)
            if params is not None and param.split(".", 1)[0] not in params:
                raise SpecError(f"`{param}` is not a parameter of {component}, the `{section}` component.",
                                file=file, path=f"{path}.{key}", hint=did_you_mean(param, params))
