"""The train stage of ``plugin: trl``: tokenizer, data, model, ``SFTTrainer``, resume, adapters.

Imported only inside a train stage (it imports torch, transformers, peft and trl).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cruijff_kit import DataError, DeadlineExceeded, StageError, call_with_deadline, training
from cruijff_kit_trl.config import TrlConfig

#: Total seconds of one try of a hub API call of ``push_to_hub`` (creating the repo), and the tries of each call.
HUB_CALL_SECONDS, HUB_ATTEMPTS, HUB_BACKOFF = 60.0, 3, 1.0
#: The upload is given up on past ``HUB_CALL_SECONDS`` plus one second per this many bytes (an average under
#: 64 KiB/s): the hub library reports no progress of an upload that a stall deadline could watch.
HUB_MIN_BYTES_PER_SECOND = 64 * 1024


def _say(text: str) -> None:
    print(f"[trl] {text}", file=sys.stderr, flush=True)


def is_rank_zero() -> bool:
    """True in the process that writes files (rank 0, or the only process)."""
    return int(os.environ.get("RANK", "0")) == 0


# --------------------------------------------------------------------------- tokenizer and data
def load_tokenizer(model_path: str, chat_template: str | None, revision: str | None = None) -> Any:
    """The model's tokenizer, with the spec's chat template when given and a pad token set."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path, revision=revision)
    if chat_template:
        tok.chat_template = chat_template
    if not tok.chat_template:
        raise StageError(f"the tokenizer of {model_path} has no chat template, so chat data cannot be "
                         "rendered. Set train.chat_template to a Jinja template (or a .jinja file).")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def supports_assistant_mask(tokenizer: Any) -> bool:
    """True when TRL can mask non-assistant tokens with this chat template (markers present or patchable)."""
    from cruijff_kit_trl.masks import has_generation_markers

    if has_generation_markers(tokenizer.chat_template):
        return True
    from trl.chat_template_utils import get_training_chat_template

    try:
        get_training_chat_template(tokenizer)
    except ValueError:
        return False
    return True


def _as_dataset(split: Any) -> Any:
    from datasets import Dataset

    return split if isinstance(split, Dataset) else Dataset.from_list(list(split))


def _to_prompt_completion(ds: Any, split: str) -> Any:
    """Chat rows -> ``prompt`` (all turns before the last) + ``completion`` (the last assistant turn)."""

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        msgs = row["messages"]
        if not msgs or msgs[-1]["role"] != "assistant":
            raise DataError(f"a `{split}` row does not end with an assistant message: {msgs!r:.200}")
        return {"prompt": msgs[:-1], "completion": msgs[-1:]}

    return ds.map(convert, remove_columns=ds.column_names)


def training_splits(data: Any, config: TrlConfig) -> dict[str, Any]:
    """``{"train": ..., "validation": ...}`` as datasets; errors when a needed split is missing."""
    if "train" not in data:
        raise DataError(f"the dataset has no `train` split (it has {sorted(data)}); the trainer needs one.")
    splits = {"train": _as_dataset(data["train"])}
    if config.validation:
        if "validation" not in data:
            raise DataError(f"train.validation is true but the dataset has no `validation` split (it has "
                            f"{sorted(data)}). Add one, or set train.validation: false.")
        splits["validation"] = _as_dataset(data["validation"])
    return splits


def prepare_data(data: Any, tokenizer: Any, config: TrlConfig) -> tuple[Any, Any, str]:
    """``(train, validation or None, loss mode)`` ready for ``SFTTrainer``.

    Loss modes: ``assistant`` (every assistant turn, TRL's assistant mask), ``completion`` (the last
    assistant turn, for templates TRL cannot mask), ``all`` (whole conversation).
    """
    splits = training_splits(data, config)
    for name, ds in splits.items():
        if "messages" not in ds.column_names:
            raise DataError(f"the `{name}` split has no `messages` column (columns: {ds.column_names}); "
                            "the dataset plugin must render rows as chat messages.")
        if len(ds) == 0:
            raise DataError(f"the `{name}` split is empty.")
        splits[name] = ds.select_columns(["messages"])
    mode = loss_mode(tokenizer, config)
    if mode == "completion":
        _say("the chat template has no {% generation %} markers and TRL cannot patch it: training on the "
             "last assistant turn of each conversation only (prompt/completion loss).")
        splits = {k: _to_prompt_completion(v, k) for k, v in splits.items()}
    return splits["train"], splits.get("validation"), mode


def loss_mode(tokenizer: Any, config: TrlConfig) -> str:
    """``assistant``, ``completion`` or ``all``: which tokens SFT trains on (see :func:`prepare_data`)."""
    if not config.assistant_only_loss:
        return "all"
    return "assistant" if supports_assistant_mask(tokenizer) else "completion"


# --------------------------------------------------------------------------- model
def load_model(model_path: str, config: TrlConfig, precision: str, device: str, revision: str | None = None) -> Any:
    """The base model in the training precision; for qlora quantized to 4-bit NF4 and prepared for k-bit."""
    from transformers import AutoModelForCausalLM

    dtype = training.torch_dtype(precision)
    kwargs: dict[str, Any] = {"dtype": dtype, "revision": revision}
    if config.method == "qlora":
        from cruijff_kit_trl.checks import quantization_problem

        problem = quantization_problem(device)
        if problem:
            raise StageError(problem)
        from transformers import BitsAndBytesConfig

        quant = training.method_info("qlora", precision)["quantization"]  # what the adapter records
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=quant["quant_type"],
            bnb_4bit_use_double_quant=quant["double_quant"], bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"} if device == "cuda" else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if config.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    return model


def lora_config(config: TrlConfig) -> Any:
    """PEFT ``LoraConfig`` from the spec's ``train.lora``."""
    from peft import LoraConfig

    lo = config.lora
    return LoraConfig(r=lo.rank, lora_alpha=lo.alpha, lora_dropout=lo.dropout,
                      target_modules=lo.targets if lo.all_linear else list(lo.targets), bias="none",
                      task_type="CAUSAL_LM", modules_to_save=lo.modules_to_save, use_rslora=lo.use_rslora,
                      use_dora=lo.use_dora)


# --------------------------------------------------------------------------- trainer arguments
SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def trackers(ctx: Any, config: TrlConfig) -> list[str] | str:
    """The Trainer's ``report_to`` for this run ("none" when empty); W&B and MLflow are callbacks
    (:func:`cruijff_kit_trl.trackers.callbacks`) that put the run in its experiment's project and group."""
    from cruijff_kit_trl import trackers as tracking

    return tracking.report_to(ctx, config)


def sft_args(ctx: Any, config: TrlConfig, precision: str, device: str, loss_mode: str, has_eval: bool) -> Any:
    """``SFTConfig`` for this run; resumable state goes to ``train/state/``."""
    from trl import SFTConfig

    if has_eval:
        eval_strategy, eval_steps = ("steps", config.eval_steps) if config.eval_steps else ("epoch", None)
    else:
        eval_strategy, eval_steps = "no", None
    save_strategy, save_steps = ("steps", config.save_state_steps) if config.save_state_steps else ("epoch", None)
    report_to = trackers(ctx, config)
    from cruijff_kit_trl import trainer_args

    return trainer_args.make_args(SFTConfig, dict(
        output_dir=str(ctx.state_dir),
        run_name=ctx.run.name,
        seed=ctx.seed,
        data_seed=ctx.seed,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        learning_rate=config.learning_rate,
        lr_scheduler_type=SCHEDULERS[config.lr_scheduler],
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_length=config.max_seq_length,
        packing=config.packing,
        padding_free=config.padding_free,
        assistant_only_loss=loss_mode == "assistant",
        completion_only_loss=True if loss_mode == "completion" else None,
        activation_checkpointing=config.gradient_checkpointing,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        eval_strategy=eval_strategy,
        eval_steps=eval_steps,
        save_strategy=save_strategy,
        save_steps=save_steps,
        save_total_limit=1,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a nan loss must show (and stops training: NonFiniteLossStop)
        report_to=report_to,
        disable_tqdm=True,
        dataloader_num_workers=0,
        prediction_loss_only=True,
        ddp_find_unused_parameters=False,
    ), config)


def tracker_callbacks(ctx: Any, config: TrlConfig) -> list[Any]:
    """The W&B / MLflow callbacks of this run (:func:`cruijff_kit_trl.trackers.callbacks`)."""
    from cruijff_kit_trl import trackers as tracking

    return tracking.callbacks(ctx, config)


# --------------------------------------------------------------------------- resume
def last_complete_checkpoint(state_dir: Path) -> Path | None:
    """The newest ``checkpoint-<step>`` with a ``trainer_state.json`` (written last); drops partial ones."""
    if not state_dir.is_dir():
        return None
    found = []
    for d in state_dir.glob("checkpoint-*"):
        if d.is_dir() and d.name.split("-", 1)[1].isdigit():
            found.append((int(d.name.split("-", 1)[1]), d))
    for _, d in sorted(found, reverse=True):
        if (d / "trainer_state.json").exists():
            return d
        if is_rank_zero():
            shutil.rmtree(d, ignore_errors=True)
    return None


def checkpoint_step(checkpoint: Path) -> int:
    """Global step recorded in a checkpoint's ``trainer_state.json``."""
    from cruijff_kit.files import parse_json_text

    path = checkpoint / "trainer_state.json"
    return int(parse_json_text(path.read_text(), file=str(path))["global_step"])


# --------------------------------------------------------------------------- the stage
def run_sft(ctx: Any, config: TrlConfig, chat_template: str | None) -> None:
    """Run SFT for the stage ``ctx``: adapters per saved epoch, metrics rows, resumable state."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    world = training.world_size(ctx.resources)
    # One process trains wherever torch finds a GPU; several processes without GPUs are CPU ranks (gloo).
    device = training.run_device() if (ctx.resources.gpus > 0 or world == 1) else "cpu"
    if world > 1 and device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"  # else the HF Trainer skips DDP on CPU
    precision = training.resolve_precision(config.precision, device)
    revision = ctx.spec["model"].get("revision")

    import datasets
    import transformers
    from trl import SFTTrainer

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()

    from cruijff_kit_trl.callbacks import EpochAdapters, MetricsRows

    tokenizer = load_tokenizer(ctx.model_path, chat_template, revision)
    train_ds, eval_ds, loss_mode = prepare_data(ctx.dataset(), tokenizer, config)
    model = load_model(ctx.model_path, config, precision, device, revision)
    args = sft_args(ctx, config, precision, device, loss_mode, eval_ds is not None)

    resume = resume_point(ctx)
    adapters = EpochAdapters(ctx, config, tokenizer, precision=precision)
    if resume and is_rank_zero():
        adapters.recover(resume)
    # State is saved at every epoch end (epoch adapters are made from that checkpoint).
    metrics = MetricsRows(ctx, device, force_epoch_eval=bool(config.eval_steps) and eval_ds is not None,
                          force_epoch_save=bool(config.save_state_steps))
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer, peft_config=lora_config(config),
                         callbacks=[adapters, metrics, *tracker_callbacks(ctx, config)])
    run_trainer(trainer, adapters, metrics, ctx, config, resume,
                f"{config.method} sft on {device} ({precision}), loss on {loss_mode} tokens, "
                f"{len(train_ds)} train rows, world size {world}", precision=precision)


def resume_point(ctx: Any) -> Any:
    """The last complete checkpoint to resume from (None for a fresh start); drops the metrics rows
    logged after it, so no step is reported twice."""
    resume = last_complete_checkpoint(ctx.state_dir) if ctx.resume_from() is not None else None
    start_step = checkpoint_step(resume) if resume else 0
    if is_rank_zero():
        dropped = training.truncate_metrics(ctx.layout.metrics, start_step)
        if resume:
            _say(f"resuming from {resume.name} (step {start_step}); dropped {dropped} metrics rows after it")
    return resume


def run_trainer(trainer: Any, adapters: Any, metrics: Any, ctx: Any, config: TrlConfig, resume: Any,
                message: str, *, precision: str | None = None) -> None:
    """Wire our callbacks to a TRL trainer, train (resuming when asked), then write the last adapters.

    The first nan or inf loss stops training with a StageError (:class:`NonFiniteLossStop`).
    """
    from transformers.trainer_callback import PrinterCallback

    from cruijff_kit_trl.callbacks import NonFiniteLossStop

    trainer.remove_callback(PrinterCallback)  # metrics rows are printed by MetricsRows instead
    metrics.trainer = trainer
    adapters.trainer = trainer
    NonFiniteLossStop(ctx, precision or config.precision).attach(trainer)
    _say(message)
    if trainer.is_world_process_zero():
        from cruijff_kit_trl import trackers as tracking

        for line in tracking.describe(ctx, config):
            _say(line)
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except BaseException:
        with contextlib.suppress(Exception):  # the rows logged so far, without hiding the error
            metrics.writer.close()
        with contextlib.suppress(Exception):  # tracker runs end marked failed
            from cruijff_kit_trl import trackers as tracking

            tracking.close(trainer, failed=True)
        raise
    metrics.writer.close()
    if trainer.is_world_process_zero():
        adapters.finish(trainer.model, trainer.state)
        if config.push_to_hub:
            push_adapter(ctx, config)


def push_adapter(ctx: Any, config: TrlConfig) -> None:
    """Upload the last saved adapter, base model named by its hub id, to ``config.push_to_hub``."""
    import tempfile

    epoch = config.saved_epochs()[-1]
    with tempfile.TemporaryDirectory() as tmp:
        out = training.export_adapter(ctx.adapter_dir(epoch), Path(tmp) / "adapter")
        push_folder(out, config.push_to_hub, private=config.hub_private, message=f"{ctx.run.name} epoch {epoch}",
                    kept=ctx.adapter_dir(epoch))
    _say(f"pushed the epoch {epoch} adapter to {config.push_to_hub}")


def push_folder(folder: Path, repo_id: str, *, private: bool, message: str, kept: Path) -> None:
    """Create ``repo_id`` on the hub (if needed) and upload ``folder`` to it, each call within its deadline
    (:data:`HUB_CALL_SECONDS` per try for creating the repo; the upload that plus a second per
    :data:`HUB_MIN_BYTES_PER_SECOND` bytes), :data:`HUB_ATTEMPTS` tries each. A hub that trickles or never
    answers is a :class:`StageError` naming the endpoint and ``kept`` (the adapter, which stays there)."""
    from huggingface_hub import HfApi

    api = HfApi(token=os.environ.get("HF_TOKEN"))
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    _hub_call(lambda: api.create_repo(repo_id, private=private, exist_ok=True), HUB_CALL_SECONDS,
              f"creating the hub repo {repo_id}", kept)
    _hub_call(lambda: api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=message),
              HUB_CALL_SECONDS + size / HUB_MIN_BYTES_PER_SECOND, f"the upload of the adapter to {repo_id}", kept)


def _hub_call(call: Callable[[], Any], seconds: float, what: str, kept: Path) -> Any:
    """``call()`` tried :data:`HUB_ATTEMPTS` times, each within ``seconds`` in total."""
    for attempt in range(1, HUB_ATTEMPTS + 1):
        try:
            return call_with_deadline(lambda _deadline: call(), seconds, what)
        except DeadlineExceeded as exc:
            if attempt == HUB_ATTEMPTS:
                endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
                raise StageError(f"push_to_hub: {exc} at {endpoint}; gave up after {HUB_ATTEMPTS} tries. The "
                                 f"trained adapter is kept in {kept}: upload it later (`hf upload`), or leave "
                                 "`push_to_hub` out of the spec on a machine without a working link to the hub.") \
                    from None
        time.sleep(HUB_BACKOFF * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # pragma: no cover
