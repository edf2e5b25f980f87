"""The train stage with torchtune: write ``train/torchtune.yaml``, run our recipe, write PEFT adapters.

Called by :meth:`TorchtuneTrainer.train` in the stage process, or in each worker when the stage was
relaunched under ``torchrun`` (``resources.processes`` / ``gpus`` > 1).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from cruijff_kit import StageError
from cruijff_kit.files import atomic_write_yaml
from cruijff_kit_torchtune.families import ModelFamily, detect_family, map_targets

CONFIG_FILE = "torchtune.yaml"


def local_model_dir(model_path: str) -> Path:
    """The local folder of the base model: the path itself, or a hub id's snapshot in the local cache."""
    from cruijff_kit.training import find_config

    found = find_config(model_path)
    if found is None:
        raise StageError(f"the torchtune trainer needs the base model's files on disk, but {model_path} is not a "
                         "model folder and not in the local hub cache. Download it first (or use "
                         "train.plugin: trl, which downloads by itself).")
    return found.parent


def _validation_split(ctx: Any, cfg: Any, data: Any) -> str | None:
    if not cfg.validation:
        return None
    if "validation" in data and len(data["validation"]) > 0:
        return "validation"
    print("[ck torchtune] the dataset has no `validation` split: no validation loss is computed",
          file=sys.stderr, flush=True)
    return None


def _init_distributed(device: str) -> tuple[int, int]:
    """Start the process group of a torchrun worker (gloo on CPU); returns (world size, rank)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("cuda:nccl,cpu:gloo" if device == "cuda" else "gloo")
    if world > 1:
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def run_training(trainer: Any, ctx: Any) -> None:
    """Train the run with our torchtune recipe (this process is one worker, or the only one)."""
    from cruijff_kit.training import chat_template_text, resolve_precision, run_device
    from cruijff_kit_torchtune.data import conversations_of, provide_rows
    from cruijff_kit_torchtune.tuneconfig import build_config

    cfg = trainer.config
    model_dir = local_model_dir(ctx.model_path)
    family = detect_family(model_dir)
    targets = map_targets(cfg.lora.targets, cfg.apply_lora_to_mlp, cfg.apply_lora_to_output)
    device = run_device()
    precision = resolve_precision(cfg.precision, device)
    if precision == "fp16":
        raise StageError("train.precision fp16 is not supported by torchtune's recipes; use bf16 or auto.")

    data = ctx.dataset()
    if "train" not in data:
        raise StageError(f"the dataset has no `train` split (it has {list(data)}).")
    val_split = _validation_split(ctx, cfg, data)
    provide_rows(ctx.run_dir, "train", conversations_of(data["train"]))
    if val_split:
        provide_rows(ctx.run_dir, val_split, conversations_of(data[val_split]))

    template = chat_template_text(cfg.chat_template, trainer.path)
    if template != cfg.chat_template:
        cfg = cfg.model_copy(update={"chat_template": template})
    tune_cfg = build_config(cfg, model_dir=model_dir, family=family, targets=targets, run_dir=ctx.run_dir,
                            device=device, dtype=precision, seed=ctx.seed, validation_split=val_split,
                            save_epochs=cfg.saved_epochs(), base_model=ctx.model_id,
                            metric_logger=tracker_logger(ctx, cfg))
    world, rank = _init_distributed(device)
    if rank == 0:
        atomic_write_yaml(ctx.layout.train_dir / CONFIG_FILE, tune_cfg)
    run_recipe(tune_cfg, ctx=ctx, family=family, world=world, rank=rank)


def tracker_logger(ctx: Any, cfg: Any) -> dict[str, Any] | None:
    """The recipe's ``metric_logger`` section when the run reports to trackers (None: the console only)."""
    if not cfg.report_to:
        return None
    from cruijff_kit.training import tracker_settings
    from cruijff_kit_torchtune.trackers import metric_logger_config

    settings = tracker_settings(ctx.spec, cfg.report_to, cfg.trackers, train_dir=ctx.layout.train_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        for line in settings.describe():
            print(f"[ck torchtune] {line}", file=sys.stderr, flush=True)
    return metric_logger_config(settings, ctx.layout.spec)


def run_recipe(tune_cfg: dict[str, Any], *, ctx: Any, family: ModelFamily, world: int, rank: int) -> None:
    """Build our recipe from ``tune_cfg`` and run setup, train and cleanup."""
    from omegaconf import OmegaConf

    from cruijff_kit_torchtune import recipe as rmod

    conf = OmegaConf.create(tune_cfg)
    hooks = make_hooks(ctx, conf, family)
    cls = rmod.distributed_class() if world > 1 else rmod.single_device_class()
    recipe = cls(cfg=conf)
    recipe.ck_hooks = hooks
    backend = torch_backend() if world > 1 else None
    print(f"[ck torchtune] rank {rank}/{world} recipe={cls.__name__} backend={backend} model={family.name} "
          f"device={conf.device} dtype={conf.dtype} pid={os.getpid()}", flush=True)
    close = hooks.close or (lambda: None)
    try:
        recipe.setup(cfg=conf)
        try:
            recipe.train()
        except BaseException:
            with contextlib.suppress(Exception):  # tracker runs end marked failed
                getattr(recipe, "_metric_logger", None).close(failed=True)  # type: ignore[union-attr]
            raise
        finally:
            recipe.cleanup()
    except BaseException:
        with contextlib.suppress(Exception):  # the rows logged so far, without hiding the error
            close()
        raise
    close()
    if recipe.ck_stopped_at is not None and rank == 0:
        from cruijff_kit.training import require_saved_epochs

        step, epoch = recipe.ck_stopped_at
        require_saved_epochs(ctx, list(conf.cruijff_kit.save_epochs), step=step, epoch=epoch,
                             max_steps=conf.cruijff_kit.max_steps)


def torch_backend() -> str | None:
    """The process group's backend (``gloo`` on CPU)."""
    import torch.distributed as dist

    return str(dist.get_backend()) if dist.is_initialized() else None


def make_hooks(ctx: Any, conf: Any, family: ModelFamily) -> Any:
    """Connect the recipe to the run: metrics rows, PEFT adapters per epoch, resume state, the nan/inf stop."""
    from cruijff_kit.training import (
        LossWatch,
        MetricsWriter,
        method_info,
        save_adapter_weights,
        truncate_metrics,
    )
    from cruijff_kit_torchtune.peft_export import peft_config, to_peft_weights
    from cruijff_kit_torchtune.recipe import RecipeHooks

    ck = conf.cruijff_kit
    tokenizer_holder: dict[str, Any] = {}

    def tokenizer() -> Any:
        if "tok" not in tokenizer_holder:
            from cruijff_kit_torchtune.tokenizer import HFChatTokenizer

            tokenizer_holder["tok"] = HFChatTokenizer(conf.tokenizer.path, chat_template=conf.tokenizer.chat_template)
        return tokenizer_holder["tok"]

    def save_adapter(epoch: int, state: dict[str, Any], step: int) -> None:
        import torch.distributed as dist

        world = dist.get_world_size() if dist.is_initialized() else 1
        weights = to_peft_weights(state, family)
        config = peft_config(rank=conf.model.lora_rank, alpha=conf.model.lora_alpha,
                             dropout=conf.model.lora_dropout, target_modules=list(ck.lora_targets),
                             base_model=ck.base_model_path, use_dora=bool(conf.model.get("use_dora", False)))
        save_adapter_weights(weights, config, tokenizer(), ctx.adapter_dir(epoch), base_model=ck.base_model,
                             base_model_path=ck.base_model_path,
                             extra={"epoch": epoch, "step": step, "trainer": "torchtune",
                                    **method_info("qlora" if conf.model.quantize_base else "lora",
                                                  str(conf.dtype), library="torchao"),
                                    "run": ctx.run_dir.name, "world_size": world})
        print(f"[ck torchtune] epoch {epoch}: adapter written to {ctx.adapter_dir(epoch)}", flush=True)

    def resumed(step: int) -> None:
        truncate_metrics(ctx.layout.metrics, step)

    writer = MetricsWriter(ctx)  # rows are written off the training thread
    return RecipeHooks(log=writer.log, flush=writer.flush, close=writer.close, save_adapter=save_adapter,
                       state_dir=ctx.state_dir, resumed=resumed, watch=LossWatch(ctx, precision=str(conf.dtype)))
