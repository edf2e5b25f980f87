"""``TrainerCallback`` s of the ``trl`` trainer: epoch adapters, ``metrics.jsonl`` rows, and the stop at
the first nan or inf loss."""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from cruijff_kit import training
from cruijff_kit_trl.config import TrlConfig


def epoch_index(progress: float) -> int:
    """0-based epoch a step belongs to, from the Trainer's fractional epoch (1.0 = end of epoch 0)."""
    return max(math.ceil(round(progress, 6)) - 1, 0)


class EpochAdapters(TrainerCallback):
    """Writes ``train/epoch_<N>/adapter/`` for every epoch in ``save_epochs`` (rank 0 only).

    Resumable state is saved at every epoch end, and that checkpoint already holds the adapter
    weights and config, so the epoch's adapter is made from them (hard links where the filesystem
    allows) rather than serialised a second time.
    """

    #: Adapter files taken from a Trainer checkpoint.
    FILES = ("adapter_model.safetensors", "adapter_config.json")

    def __init__(self, ctx: Any, config: TrlConfig, tokenizer: Any, *, precision: str | None = None) -> None:
        self.ctx, self.config, self.tokenizer = ctx, config, tokenizer
        # the resolved training precision, recorded in cruijff_kit.json (a merged copy keeps it; for qlora the
        # compute dtype of the 4-bit layers)
        self.precision = precision
        self.saved = set(config.saved_epochs())
        self.trainer: Any = None

    def save(self, model: Any, epoch: int, step: int, checkpoint: Path | None = None) -> None:
        """Write one epoch's adapter (atomic) with tokenizer files and provenance."""
        import torch.distributed as dist

        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        model_spec = self.ctx.spec["model"]

        def write(tmp: Path) -> None:
            if checkpoint is not None and all((checkpoint / f).exists() for f in self.FILES):
                for name in self.FILES:
                    _link_or_copy(checkpoint / name, tmp / name)
            else:
                model.save_pretrained(str(tmp), safe_serialization=True)

        training.write_adapter_dir(
            self.ctx.adapter_dir(epoch), write, self.tokenizer,
            base_model=model_spec["path"], base_model_path=model_spec.get("local_path"),
            extra={"epoch": epoch, "step": step, "trainer": "trl",
                   **training.method_info(self.config.method, self.precision),
                   "run": self.ctx.run.name, "world_size": world})
        print(f"[trl] saved adapter of epoch {epoch} (step {step})", file=sys.stderr, flush=True)

    def on_save(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        progress = round(float(state.epoch or 0.0), 6)
        if not state.is_world_process_zero or not progress or progress != int(progress):
            return  # only the save at an epoch's end
        epoch = epoch_index(progress)
        if epoch in self.saved:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self.save(model, epoch, state.global_step, checkpoint)

    def recover(self, checkpoint: Path) -> None:
        """Before resuming from an epoch-end ``checkpoint``: write that epoch's adapter if the kill came first."""
        from cruijff_kit.files import parse_json_text

        path = checkpoint / "trainer_state.json"
        state = parse_json_text(path.read_text(), file=str(path))
        progress = round(float(state.get("epoch") or 0.0), 6)
        if progress and progress == int(progress):
            epoch = epoch_index(progress)
            if epoch in self.saved and not (self.ctx.adapter_dir(epoch) / "adapter_config.json").exists():
                self.save(None, epoch, int(state["global_step"]), checkpoint)

    def finish(self, model: Any, state: Any) -> None:
        """After training: save the epoch ``max_steps`` stopped in; fail clearly if saved epochs were never reached."""
        progress = round(float(state.epoch or 0.0), 6)
        if progress and progress != int(progress):
            epoch = epoch_index(progress)
            if epoch in self.saved and not (self.ctx.adapter_dir(epoch) / "adapter_config.json").exists():
                self.save(model, epoch, state.global_step)
        training.require_saved_epochs(self.ctx, sorted(self.saved), step=state.global_step,
                                      epoch=epoch_index(progress), max_steps=self.config.max_steps)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (the checkpoint never rewrites its files), else copy it."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class MetricsRows(TrainerCallback):
    """Turns the Trainer's logs into ``metrics.jsonl`` rows; forces epoch-end eval/save when steps are set."""

    def __init__(self, ctx: Any, device: str, *, force_epoch_eval: bool = False,
                 force_epoch_save: bool = False) -> None:
        self.ctx, self.device = ctx, device
        #: Rows are written off the training thread; flushed before every save and at the end.
        self.writer = training.MetricsWriter(ctx)
        self.force_epoch_eval, self.force_epoch_save = force_epoch_eval, force_epoch_save
        self.trainer: Any = None
        self._since = time.perf_counter()
        self._tokens = 0.0
        self._announced = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._since = time.perf_counter()
        self._tokens = 0.0

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not self._announced:
            self._announced = True
            self._announce()
        if control.should_save:  # a save without a log at its step: earlier rows first
            self.writer.flush()

    def _announce(self) -> None:
        """One line per rank saying how it trains (the evidence that DDP really runs)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            wrapped = type(getattr(self.trainer, "model_wrapped", None)).__name__
            print(f"[trl] rank {dist.get_rank()}/{dist.get_world_size()} backend={dist.get_backend()} "
                  f"wrapper={wrapped} pid={os.getpid()}", file=sys.stderr, flush=True)

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.writer.flush()

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.writer.flush()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.force_epoch_eval:
            control.should_evaluate = True
        if self.force_epoch_save:
            control.should_save = True
        if control.should_save:
            self.writer.flush()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if not state.is_world_process_zero or not logs or "train_runtime" in logs:
            return
        now = time.perf_counter()
        row = training.MetricsRow(step=state.global_step, epoch=epoch_index(state.epoch or 0.0),
                                  peak_memory_mb=training.peak_memory_mb(self.device))
        if "loss" in logs:
            row.train_loss = float(logs["loss"])
            row.learning_rate = float(logs["learning_rate"]) if "learning_rate" in logs else None
            tokens = logs.get("num_tokens")
            if tokens is not None and now > self._since and float(tokens) >= self._tokens:
                row.tokens_per_second = (float(tokens) - self._tokens) / (now - self._since)
                self._tokens = float(tokens)
            self._since = now
        elif "eval_loss" in logs:
            row.val_loss = float(logs["eval_loss"])
            self._since = now  # evaluation time does not count against training throughput
        else:
            return
        self.writer.log(row)
        if control.should_save:  # the rows up to a checkpoint are on disk before the checkpoint
            self.writer.flush()
        d = row.as_dict()
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in d.items() if v is not None)
        print(f"[trl] {shown}", file=sys.stderr, flush=True)


class NonFiniteLossStop(TrainerCallback):
    """Stops training at the first nan or inf loss, through the core's :class:`~cruijff_kit.training.LossWatch`.

    :meth:`attach` makes the trainer hand every micro-batch's loss to the watch; the check runs in
    ``on_pre_optimizer_step``, on every rank, before the optimizer applies the step, so the weights
    never take a broken step. A validation loss of nan or inf stops training too, in ``on_log``,
    which runs before the save of the same step, so that epoch's adapter is not written either.
    """

    def __init__(self, ctx: Any, precision: str) -> None:
        self.watch = training.LossWatch(ctx, precision=precision)
        self.epoch = 0

    def attach(self, trainer: Any) -> None:
        """Observe the loss ``trainer.training_step`` returns for every micro-batch."""
        inner = trainer.training_step

        def training_step(*args: Any, **kwargs: Any) -> Any:
            loss = inner(*args, **kwargs)
            self.watch.observe(loss)
            return loss

        trainer.training_step = training_step
        trainer.add_callback(self)

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.epoch = math.floor(round(float(state.epoch or 0.0), 6))  # the epoch the next steps belong to

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.watch.check(step=state.global_step + 1, epoch=self.epoch)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if logs and "eval_loss" in logs:
            self.watch.check_value(logs["eval_loss"], step=state.global_step, epoch=epoch_index(state.epoch or 0.0))
