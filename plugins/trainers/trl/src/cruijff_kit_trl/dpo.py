"""``train.objective: dpo``: LoRA/QLoRA direct preference optimization with TRL's ``DPOTrainer``.

The dataset must give preference pairs: ``prompt`` (messages), ``chosen`` and ``rejected`` (one
assistant message each, or text), as the ``multiturn`` dataset does with ``pairs: true``. The reference
model is the base model itself (the adapter switched off), so no second copy is loaded. Tokenizer,
model loading, LoRA shape, resume and the epoch adapters are the SFT path's.

Imported only inside a train stage (it imports torch, transformers, peft and trl).
"""

from __future__ import annotations

import os
from typing import Any

from cruijff_kit import DataError, training
from cruijff_kit_trl.config import TrlConfig
from cruijff_kit_trl.sft import (
    SCHEDULERS,
    load_model,
    load_tokenizer,
    lora_config,
    resume_point,
    run_trainer,
    tracker_callbacks,
    trackers,
    training_splits,
)

PAIR_COLUMNS = ("prompt", "chosen", "rejected")


def prepare_pairs(data: Any, config: TrlConfig) -> tuple[Any, Any]:
    """``(train, validation or None)`` with only the preference columns."""
    splits = training_splits(data, config)
    for name, ds in splits.items():
        missing = [c for c in PAIR_COLUMNS if c not in ds.column_names]
        if missing:
            raise DataError(f"train.objective: dpo needs preference pairs, but the `{name}` split has no "
                            f"{', '.join(f'`{c}`' for c in missing)} column (columns: {ds.column_names}). With the "
                            "multiturn dataset set dataset.pairs: true; other data needs prompt/chosen/rejected.")
        if len(ds) == 0:
            raise DataError(f"the `{name}` split has no preference pairs.")
        splits[name] = ds.select_columns(list(PAIR_COLUMNS))
    return splits["train"], splits.get("validation")


def dpo_args(ctx: Any, config: TrlConfig, precision: str, device: str, has_eval: bool) -> Any:
    """``DPOConfig`` for this run; resumable state goes to ``train/state/``."""
    from trl import DPOConfig

    if has_eval:
        eval_strategy, eval_steps = ("steps", config.eval_steps) if config.eval_steps else ("epoch", None)
    else:
        eval_strategy, eval_steps = "no", None
    save_strategy, save_steps = ("steps", config.save_state_steps) if config.save_state_steps else ("epoch", None)
    from cruijff_kit_trl import trainer_args

    return trainer_args.make_args(DPOConfig, dict(
        output_dir=str(ctx.state_dir), run_name=ctx.run.name, seed=ctx.seed, data_seed=ctx.seed,
        num_train_epochs=config.epochs, max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation, learning_rate=config.learning_rate,
        lr_scheduler_type=SCHEDULERS[config.lr_scheduler], warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay, max_length=config.max_seq_length,
        beta=config.dpo.beta, loss_type=[config.dpo.loss_type],
        gradient_checkpointing=config.gradient_checkpointing,
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=device == "cpu",
        eval_strategy=eval_strategy, eval_steps=eval_steps, save_strategy=save_strategy, save_steps=save_steps,
        save_total_limit=1, logging_strategy="steps", logging_steps=config.logging_steps, logging_first_step=True,
        logging_nan_inf_filter=False, report_to=trackers(ctx, config), disable_tqdm=True, dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
    ), config)


def run_dpo(ctx: Any, config: TrlConfig, chat_template: str | None) -> None:
    """Run DPO for the stage ``ctx``: adapters per saved epoch, metrics rows, resumable state."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    world = training.world_size(ctx.resources)
    device = training.run_device() if (ctx.resources.gpus > 0 or world == 1) else "cpu"  # as in run_sft
    if world > 1 and device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    precision = training.resolve_precision(config.precision, device)
    revision = ctx.spec["model"].get("revision")

    import datasets
    import transformers
    from trl import DPOTrainer

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()

    from cruijff_kit_trl.callbacks import EpochAdapters, MetricsRows

    tokenizer = load_tokenizer(ctx.model_path, chat_template, revision)
    train_ds, eval_ds = prepare_pairs(ctx.dataset(), config)
    model = load_model(ctx.model_path, config, precision, device, revision)
    args = dpo_args(ctx, config, precision, device, eval_ds is not None)

    resume = resume_point(ctx)
    adapters = EpochAdapters(ctx, config, tokenizer, precision=precision)
    metrics = MetricsRows(ctx, device, force_epoch_eval=bool(config.eval_steps) and eval_ds is not None,
                          force_epoch_save=bool(config.save_state_steps))
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer, peft_config=lora_config(config),
                         callbacks=[adapters, metrics, *tracker_callbacks(ctx, config)])
    run_trainer(trainer, adapters, metrics, ctx, config, resume,
                f"{config.method} dpo on {device} ({precision}), beta {config.dpo.beta}, "
                f"loss {config.dpo.loss_type}, {len(train_ds)} preference pairs, world size {world}",
                precision=precision)
