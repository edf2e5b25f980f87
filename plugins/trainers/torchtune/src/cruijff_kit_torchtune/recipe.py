"""Our LoRA recipe: torchtune's stock LoRA recipes plus what a cruijff-kit run needs.

:class:`CkRecipeMixin` is mixed into torchtune's own ``LoRAFinetuneRecipeSingleDevice`` and
``LoRAFinetuneRecipeDistributed`` (loaded from the installed torchtune, not copied). The stock
training loop runs unchanged; the mixin overrides only the recipe's seams:

* ``load_checkpoint``: resume from ``train/state/`` (adapter, optimizer, epoch, step) when an earlier
  attempt left it, instead of torchtune's own output-folder scan;
* ``_setup_lr_scheduler``: a correct ``last_epoch`` on resume, and a hook after every optimizer step
  (on every rank) for ``eval_steps`` validation and the global ``max_steps`` limit;
* ``setup``: a validation loader over the validation split, and metrics rows in the shared schema;
* ``save_checkpoint``: validation loss for the epoch, then an adapter-only PEFT checkpoint for the
  epochs in ``save_epochs`` and resume state for later epochs; never merged weights;
* the loss function and the optimizer (``setup``): every training loss goes to the run's
  :class:`~cruijff_kit.training.LossWatch`, checked before each optimizer step, so the first nan or
  inf loss (or validation loss) stops training before any later weights or adapters exist.

The distributed variant also keeps torchtune's CUDA-only memory helpers away from CPU runs (gloo).
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from cruijff_kit_torchtune.compat import import_torchtune, stock_recipe_module

import_torchtune()

import torch  # noqa: E402
from torchtune import config as tt_config  # noqa: E402
from torchtune import training, utils  # noqa: E402
from torchtune.data import padded_collate_sft  # noqa: E402
from torchtune.modules.peft import get_adapter_params  # noqa: E402
from torchtune.training.metric_logging import StdoutLogger  # noqa: E402

from cruijff_kit.training import MetricsRow, peak_memory_mb  # noqa: E402

STATE_FILE = "torchtune_state.pt"
#: Name parts added by activation checkpointing and torch.compile wrappers (not in state dicts).
_WRAPPER_PARTS = ("_checkpoint_wrapped_module.", "_orig_mod.")


def clean_name(name: str) -> str:
    """A parameter name as it appears in the model's state dict (wrapper parts removed)."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def full_tensor(param: Any, device: Any) -> Any:
    """One parameter whole: a sharded one (DTensor) gathered from every rank (a collective), on ``device``."""
    if param.is_cpu and device is not None:
        param = param.to(device)
    return param.full_tensor() if hasattr(param, "_local_tensor") else param


def gather_adapter_state(model: Any, is_rank_zero: bool, device: Any) -> dict[str, Any]:
    """The LoRA weights of a sharded model, whole and on CPU on rank 0 (empty elsewhere), in state-dict
    names. Only the adapter's parameters are gathered (every rank in the same order): torchtune's
    ``gather_cpu_state_dict(adapter_weights_only=True)`` gathers the whole base model parameter by
    parameter and drops it afterwards, at every saved epoch."""
    wanted = {clean_name(k) for k in get_adapter_params(model)}
    out: dict[str, Any] = {}
    for name, param in model.state_dict().items():
        key = clean_name(name)
        if key not in wanted:
            continue
        whole = full_tensor(param, device)
        if is_rank_zero:
            out[key] = whole.detach().to("cpu", copy=True)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return out


class ConsoleLogger(StdoutLogger):
    """torchtune's stdout logger, minus its copy of the config (the run keeps ``train/torchtune.yaml``)."""

    def log_config(self, config: Any) -> None:
        """The config is already in the run folder."""


class StopTraining(Exception):
    """Raised after the checkpoint of the step that reached ``max_steps``."""


@dataclass
class RecipeHooks:
    """How the recipe reports to the run (all optional: a bare recipe just trains)."""

    #: Receives every metrics row (called on rank 0 only).
    log: Callable[[MetricsRow], None] | None = None
    #: Waits until every row given to ``log`` is written (rank 0, before resume state is saved).
    flush: Callable[[], None] | None = None
    #: Called once after training (also after an error): every row given to ``log`` is written.
    close: Callable[[], None] | None = None
    #: ``(epoch, torchtune adapter state dict, step)``: write the epoch's PEFT adapter (rank 0 only).
    save_adapter: Callable[[int, dict[str, Any], int], None] | None = None
    #: Folder for resume state; None disables resume.
    state_dir: Path | None = None
    #: Called with the step training resumes after (rank 0 only), before anything is logged.
    resumed: Callable[[int], None] | None = None
    #: A :class:`cruijff_kit.training.LossWatch` (every rank): the first nan/inf loss stops training.
    watch: Any = None


class _AfterStep:
    """An LR scheduler whose ``step()`` also calls ``hook`` (the stock loop steps it once per update)."""

    def __init__(self, scheduler: Any, hook: Callable[[], None]) -> None:
        self._scheduler = scheduler
        self._hook = hook

    def step(self, *args: Any, **kwargs: Any) -> Any:
        out = self._scheduler.step(*args, **kwargs)
        self._hook()
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scheduler, name)


class _MetricsBridge:
    """Wraps the recipe's metric logger: each logged training step also becomes a metrics row."""

    def __init__(self, inner: Any, recipe: CkRecipeMixin) -> None:
        self._inner = inner
        self._recipe = recipe

    def log_dict(self, payload: dict[str, Any], step: int) -> None:
        self._inner.log_dict(payload, step)
        r = self._recipe
        tps = payload.get("tokens_per_second_per_gpu")
        r._ck_log(MetricsRow(
            step=int(step), epoch=int(r.epochs_run), train_loss=_num(payload.get("loss")),
            learning_rate=_num(payload.get("lr")),
            tokens_per_second=None if tps is None else _num(tps) * r._ck_world,  # type: ignore[operator]
            peak_memory_mb=peak_memory_mb(r._device.type)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _WatchedLoss:
    """Wraps the recipe's loss function: every training loss it computes goes to the run's LossWatch."""

    def __init__(self, inner: Any, watch: Any) -> None:
        self._inner = inner
        self._watch = watch

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        loss = self._inner(*args, **kwargs)
        if torch.is_grad_enabled():  # training, not our validation pass
            self._watch.observe(loss)
        return loss

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _num(value: Any) -> float | None:
    if value is None:
        return None
    return float(value.item() if hasattr(value, "item") else value)


class CkRecipeMixin:
    """The additions to a stock torchtune LoRA recipe (see the module docstring)."""

    ck_hooks: RecipeHooks = RecipeHooks()
    _ck_val_loader: Any = None
    _ck_last_val_step: int = -1
    _ck_stop: bool = False
    _ck_keep_state: bool = False
    _ck_resumed_step: int | None = None
    _ck_rng: Any = None
    #: ``(step, epoch)`` when ``max_steps`` ended training early, else None.
    ck_stopped_at: tuple[int, int] | None = None

    # ----------------------------------------------------------------- small helpers
    @property
    def _ck_world(self) -> int:
        return int(getattr(self, "world_size", 1))

    @property
    def _ck_rank0(self) -> bool:
        return int(getattr(self, "rank", 0)) == 0

    @property
    def _ck_distributed(self) -> bool:
        return self._ck_world > 1

    def _ck_log(self, row: MetricsRow) -> None:
        if self._ck_rank0 and self.ck_hooks.log is not None:
            self.ck_hooks.log(row)

    def _ck_barrier(self) -> None:
        if self._ck_distributed:
            torch.distributed.barrier()

    # ----------------------------------------------------------------- resume
    def load_checkpoint(self, cfg_checkpointer: Any) -> dict[str, Any]:
        ckpt = super().load_checkpoint(cfg_checkpointer)  # type: ignore[misc]
        state_dir = self.ck_hooks.state_dir
        path = state_dir / STATE_FILE if state_dir is not None else None
        if path is not None and path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            self._ck_resumed_step = int(state.pop("ck_global_step"))
            self._ck_rng = state.pop("ck_rng", None)
            ckpt.update(state)
            self._resume_from_checkpoint = True
            self._update_recipe_state(ckpt)  # type: ignore[attr-defined]
            if self._ck_rank0:
                print(f"[ck torchtune] resuming after epoch {self.epochs_run - 1} "  # type: ignore[attr-defined]
                      f"(step {self._ck_resumed_step}) from {path}", flush=True)
        return ckpt

    def _setup_lr_scheduler(self, cfg_lr_scheduler: Any, num_training_steps: int, last_epoch: int) -> Any:
        # torchtune's single-device recipe forgets the step count on resume; it is epochs_run full epochs.
        self.global_step = self.epochs_run * self._steps_per_epoch  # type: ignore[attr-defined]
        if self._ck_resumed_step is not None:
            self.global_step = self._ck_resumed_step
        scheduler = super()._setup_lr_scheduler(  # type: ignore[misc]
            cfg_lr_scheduler, num_training_steps=num_training_steps, last_epoch=self.global_step - 1)
        return _AfterStep(scheduler, self._ck_after_optimizer_step)

    # ----------------------------------------------------------------- setup
    def setup(self, cfg: Any) -> None:
        super().setup(cfg)  # type: ignore[misc]
        if self._steps_per_epoch == 0:
            from cruijff_kit import StageError

            per_step = int(cfg.batch_size) * self._ck_world * int(cfg.gradient_accumulation_steps)
            raise StageError(f"the train split has {len(self._dataloader.dataset)} usable rows, fewer than one "
                             f"optimizer step takes ({per_step} = batch_size x processes x gradient_accumulation). "
                             "Lower train.batch_size or train.gradient_accumulation, or add rows.")
        ck = cfg.get("cruijff_kit") or {}
        self._ck_save_epochs = {int(e) for e in (ck.get("save_epochs") or range(self.total_epochs))}
        self._ck_eval_steps = ck.get("eval_steps")
        self._ck_max_steps = ck.get("max_steps")
        self._ck_keep_state = bool(ck.get("keep_state"))
        if self._ck_rank0 and hasattr(self, "_metric_logger"):
            self._metric_logger = _MetricsBridge(self._metric_logger, self)
        if self.ck_hooks.watch is not None:
            # every micro-batch's loss is watched; the verdict comes before each optimizer step
            self._loss_fn = _WatchedLoss(self._loss_fn, self.ck_hooks.watch)
            self._optimizer.register_step_pre_hook(self._ck_before_optimizer_step)
        if ck.get("validation_dataset"):
            self._ck_val_loader = self._ck_build_val_loader(ck["validation_dataset"], int(cfg.batch_size))
        if self._ck_rng is not None and not self._ck_distributed:
            torch.set_rng_state(self._ck_rng)
        if self._ck_resumed_step is not None and self._ck_rank0 and self.ck_hooks.resumed is not None:
            self.ck_hooks.resumed(self._ck_resumed_step)

    def _ck_build_val_loader(self, cfg_dataset: Any, batch_size: int) -> Any:
        from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

        ds = tt_config.instantiate(cfg_dataset, self._tokenizer)
        if len(ds) == 0:
            return None
        sampler: Any = (DistributedSampler(ds, num_replicas=self._ck_world, rank=int(self.rank), shuffle=False)
                        if self._ck_distributed else SequentialSampler(ds))
        # Every rank runs the same number of batches (the sampler pads), as sharded forwards require.
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, collate_fn=partial(
            padded_collate_sft, padding_idx=self._tokenizer.pad_id, ignore_idx=self._loss_fn.ignore_index))

    # ----------------------------------------------------------------- validation
    def _ck_validation_loss(self) -> float | None:
        """Mean token loss over the validation split (all ranks together)."""
        if self._ck_val_loader is None:
            return None
        ignore = self._loss_fn.ignore_index
        total = torch.zeros((), dtype=torch.float64, device=self._device)
        count = torch.zeros((), dtype=torch.float64, device=self._device)
        self._model.eval()
        try:
            with torch.no_grad():
                for batch in self._ck_val_loader:
                    utils.batch_to_device(batch, self._device)
                    labels = batch.pop("labels")
                    logits = self._model(**batch)
                    pad = torch.full((labels.shape[0], 1), ignore, dtype=labels.dtype, device=labels.device)
                    labels = torch.hstack((labels[..., 1:], pad))
                    if not isinstance(logits, list):
                        labels = labels.reshape(-1)
                        logits = logits.reshape(-1, logits.size(-1))
                    n = (labels != ignore).sum()
                    if n > 0:
                        total += self._loss_fn(logits, labels).double() * n
                        count += n
        finally:
            self._model.train()
        if self._ck_distributed:
            torch.distributed.all_reduce(total)
            torch.distributed.all_reduce(count)
        return float(total / count) if count > 0 else None

    def _ck_validate(self, step: int, epoch: int) -> None:
        if self._ck_val_loader is None or step == self._ck_last_val_step:
            return
        loss = self._ck_validation_loss()
        self._ck_last_val_step = step
        self._ck_log(MetricsRow(step=step, epoch=epoch, val_loss=loss))
        log_eval = getattr(getattr(self, "_metric_logger", None), "log_eval", None)  # trackers (rank 0)
        if self._ck_rank0 and log_eval is not None and loss is not None:
            log_eval(loss, step)
        if self.ck_hooks.watch is not None:  # the same value on every rank (all-reduced): all stop together
            self.ck_hooks.watch.check_value(loss, step=step, epoch=epoch)

    def _ck_before_optimizer_step(self, *_args: Any) -> None:
        """Runs on every rank before each optimizer step: a nan/inf loss stops training before the update."""
        self.ck_hooks.watch.check(step=self.global_step + 1, epoch=int(self.epochs_run))

    def _ck_after_optimizer_step(self) -> None:
        """Runs on every rank right after each optimizer step (before the loop counts it)."""
        step = self.global_step + 1
        if self._ck_eval_steps and step % int(self._ck_eval_steps) == 0:
            self._ck_validate(step, int(self.epochs_run))
        if self._ck_max_steps and step >= int(self._ck_max_steps) and not self._ck_stop:
            # End this epoch after the current batch; save_checkpoint then ends training.
            self._ck_stop = True
            self.max_steps_per_epoch = step - self.epochs_run * self._steps_per_epoch

    # ----------------------------------------------------------------- checkpoints
    def _ck_adapter_state(self) -> dict[str, Any]:
        """Full LoRA weights on CPU in torchtune names (rank 0; a collective in distributed runs)."""
        if self._ck_distributed:
            return gather_adapter_state(self._model, self._ck_rank0, self._device)
        return {clean_name(k): v.detach().to("cpu", copy=True) for k, v in get_adapter_params(self._model).items()}

    def _ck_optimizer_state(self) -> dict[str, Any]:
        if self._ck_distributed:
            return training.get_full_optimizer_state_dict(self._model, self._optimizer, self._ck_rank0,
                                                          device=self._device)
        return self._optimizer.state_dict()

    def save_checkpoint(self, epoch: int) -> None:
        step = self.global_step
        self._ck_validate(step, epoch)
        final = self._ck_stop or epoch + 1 >= self.total_epochs
        want_adapter = epoch in self._ck_save_epochs
        want_state = (not final or self._ck_keep_state) and self.ck_hooks.state_dir is not None
        adapter = self._ck_adapter_state() if (want_adapter or want_state) else {}
        optimizer = self._ck_optimizer_state() if want_state else None
        if self._ck_rank0:
            if self.ck_hooks.flush is not None:  # the rows up to this step are on disk before its state
                self.ck_hooks.flush()
            if want_adapter and self.ck_hooks.save_adapter is not None:
                self.ck_hooks.save_adapter(epoch, adapter, step)
            if want_state:
                self._ck_write_state(adapter, optimizer, step)
        self._ck_barrier()
        if self._ck_stop:
            self.ck_stopped_at = (step, epoch)
            raise StopTraining

    def _ck_write_state(self, adapter: dict[str, Any], optimizer: Any, step: int) -> None:
        state_dir = self.ck_hooks.state_dir
        assert state_dir is not None
        state_dir.mkdir(parents=True, exist_ok=True)
        state = {
            training.ADAPTER_KEY: adapter,
            training.OPT_KEY: optimizer,
            training.SEED_KEY: self.seed,
            training.EPOCHS_KEY: self.epochs_run,
            training.TOTAL_EPOCHS_KEY: self.total_epochs,
            training.MAX_STEPS_KEY: self.max_steps_per_epoch,
            training.DATALOADER_KEY: self._dataloader.state_dict(),
            "ck_global_step": step,
            "ck_rng": torch.get_rng_state(),
        }
        tmp = state_dir / f".{STATE_FILE}.tmp-{os.getpid()}"
        torch.save(state, tmp)
        os.replace(tmp, state_dir / STATE_FILE)

    # ----------------------------------------------------------------- training
    def train(self) -> None:
        try:
            super().train()  # type: ignore[misc]
        except StopTraining:
            pass


@contextlib.contextmanager
def _cpu_safe(device: Any) -> Iterator[None]:
    """No-op torchtune's CUDA-only memory helpers, which its distributed recipe calls unconditionally."""
    names = ("get_memory_stats", "log_memory_stats", "cleanup_before_training")
    saved = {n: getattr(training, n) for n in names}
    if device.type == "cpu":
        training.get_memory_stats = lambda *a, **k: {}
        training.log_memory_stats = lambda *a, **k: None
        training.cleanup_before_training = gc.collect
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(training, n, f)


def single_device_class() -> type:
    """Our recipe on top of ``LoRAFinetuneRecipeSingleDevice``."""
    stock = stock_recipe_module("lora_finetune_single_device").LoRAFinetuneRecipeSingleDevice
    return type("CkLoRARecipeSingleDevice", (CkRecipeMixin, stock), {"__doc__": __doc__})


def distributed_class() -> type:
    """Our recipe on top of ``LoRAFinetuneRecipeDistributed`` (CPU-safe for gloo)."""
    stock = stock_recipe_module("lora_finetune_distributed").LoRAFinetuneRecipeDistributed

    class CkLoRARecipeDistributed(CkRecipeMixin, stock):  # type: ignore[valid-type, misc]
        __doc__ = __doc__

        def _setup_model(self, *args: Any, **kwargs: Any) -> Any:
            with _cpu_safe(self._device):
                return super()._setup_model(*args, **kwargs)

        def train(self) -> None:
            with _cpu_safe(self._device):
                super().train()

    return CkLoRARecipeDistributed
