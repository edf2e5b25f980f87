"""Training that diverges: the first non-finite loss (nan, inf) stops the stage at that step.

* :class:`LossWatch` is what a trainer wires into its loop: :meth:`LossWatch.observe` with every
  micro-batch's training loss (a tensor stays on its device, so nothing waits),
  :meth:`LossWatch.check` once per optimizer step *before* the optimizer applies it, on every
  process alike (in a distributed run the verdict is all-reduced, so every rank stops at the same
  step), and :meth:`LossWatch.check_value` with a validation loss before the epoch's adapter is saved.
* :func:`nonfinite_loss_error` is the one message: the step, the epoch, the likely causes (learning
  rate, fp16 overflow, bad rows) and the epochs whose adapters were saved before, which stay valid.
* :func:`nonfinite_tensors` names the tensors of a ``.safetensors`` file that hold nan or inf (read
  without torch); :func:`~cruijff_kit.training.write_adapter_dir` refuses such an adapter, so no
  trainer ever writes an adapter whose weights broke.

Nothing here imports torch at import time.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from cruijff_kit._base.errors import StageError
from cruijff_kit._base.layout import RunLayout

#: safetensors dtype -> (bytes per value, the exponent bits; all of them set means nan or inf).
_EXPONENT = {"F16": (2, 0x7C00), "BF16": (2, 0x7F80), "F32": (4, 0x7F800000), "F64": (8, 0x7FF0000000000000)}


def _shown(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "nan"
    return "inf" if value > 0 else "-inf"


def saved_epochs(train_dir: Path, before: int | None = None) -> list[int]:
    """0-based epochs with a complete adapter (``adapter_config.json`` in :meth:`RunLayout.adapter_dir
    <cruijff_kit.RunLayout.adapter_dir>`) in the run whose ``train/`` folder is ``train_dir``; with
    ``before``: only earlier ones. The run layout names the folders; this only reads which exist."""
    layout = _layout(train_dir)
    if layout.train_dir != Path(train_dir) or not layout.train_dir.is_dir():  # not a run's train/ folder
        return []
    numbers = {int(n) for n in (d.name.rpartition("_")[2] for d in layout.train_dir.iterdir()) if n.isdigit()}
    return sorted(e for e in numbers if (before is None or e < before)
                  and (layout.adapter_dir(e) / "adapter_config.json").exists())


def _layout(train_dir: Path) -> RunLayout:
    """The run whose ``train/`` folder (:attr:`RunLayout.train_dir`) is ``train_dir``."""
    return RunLayout(Path(train_dir).parent)


def likely_causes(learning_rate: float | None = None, precision: str | None = None) -> list[str]:
    """Why a loss leaves the finite numbers, the likeliest for this run first."""
    lr = ("a learning rate too high (train.learning_rate is "
          f"{learning_rate:g}; try one 10x lower)" if learning_rate is not None else
          "a learning rate too high (lower train.learning_rate)")
    if precision == "fp16":
        fp16 = "fp16 overflow (train.precision is fp16: use bf16 or fp32)"
    elif precision:
        fp16 = f"fp16 overflow (only with train.precision fp16; this run trains in {precision})"
    else:
        fp16 = "fp16 overflow (with train.precision fp16)"
    data = "bad data rows (empty answers, very long or garbled rows)"
    return [fp16, lr, data] if precision == "fp16" else [lr, fp16, data]


def nonfinite_loss_error(value: float | None, *, step: int, epoch: int, train_dir: Path,
                         learning_rate: float | None = None, precision: str | None = None,
                         what: str = "training loss") -> StageError:
    """The StageError of a ``what`` (training loss, validation loss) that became nan or inf.

    ``step`` is the 1-based optimizer step, ``epoch`` the 0-based epoch it belongs to; ``value``
    None means another process saw it. The message names the step, the likely causes and the epochs
    whose adapters under ``train_dir`` were saved before the loss broke: those stay valid.
    """
    at = f"at step {step}" if what == "training loss" else f"after step {step}"
    became = f"became {_shown(value)}" if value is not None else "became nan or inf (on another process)"
    msg = (f"the {what} {became} {at} (epoch {epoch}), so training stopped there and no adapter was written "
           f"from then on. Likely causes: {'; '.join(likely_causes(learning_rate, precision))}.")
    saved = saved_epochs(train_dir, before=epoch)
    if saved:
        folders = ", ".join(str(_layout(train_dir).adapter_dir(e)) for e in saved)
        msg += f" The adapters of epochs {saved} were saved before the loss broke and stay valid: {folders}."
    else:
        msg += " No epoch had finished with a saved adapter before it."
    return StageError(msg)


class LossWatch:
    """Stops a training at its first non-finite loss, before that step changes the weights.

    ``ctx`` is the stage's :class:`~cruijff_kit.StageContext`: its train folder, learning rate and
    precision go into the message (``precision`` overrides the config's, e.g. ``auto`` resolved).
    Call :meth:`observe` with every micro-batch's loss and :meth:`check` once per optimizer step,
    before the optimizer steps, on every process alike.
    """

    def __init__(self, ctx: Any, *, precision: str | None = None) -> None:
        config = getattr(ctx, "config", None)
        self.train_dir = Path(ctx.layout.train_dir)
        self.learning_rate: float | None = getattr(config, "learning_rate", None)
        self.precision: str | None = precision or getattr(config, "precision", None)
        self._pending: list[Any] = []
        self._device: Any = None

    def observe(self, loss: Any) -> None:
        """Keep one micro-batch's loss until :meth:`check` (a tensor stays on its device: no sync here)."""
        if hasattr(loss, "detach"):
            loss = loss.detach()
            self._device = loss.device
        self._pending.append(loss)

    def error(self, value: float | None, *, step: int, epoch: int, what: str = "training loss") -> StageError:
        """The StageError for ``value`` (see :func:`nonfinite_loss_error`)."""
        return nonfinite_loss_error(value, step=step, epoch=epoch, train_dir=self.train_dir,
                                    learning_rate=self.learning_rate, precision=self.precision, what=what)

    def check(self, *, step: int, epoch: int) -> None:
        """Raise the StageError when a loss observed since the last check (on any process) was nan or inf."""
        pending, self._pending = self._pending, []
        value, anywhere = _first_nonfinite(pending, self._device)
        if anywhere:
            raise self.error(value, step=step, epoch=epoch)

    def check_value(self, value: Any, *, step: int, epoch: int, what: str = "validation loss") -> None:
        """Raise the StageError when ``value`` (a float, a 0-d tensor, or None for none) is nan or inf."""
        if value is None:
            return
        number = float(value.item() if hasattr(value, "item") else value)
        if not math.isfinite(number):
            raise self.error(number, step=step, epoch=epoch, what=what)


def _first_nonfinite(values: list[Any], device: Any) -> tuple[float | None, bool]:
    """(the first nan/inf among ``values``, whether any process saw one): all-reduced when distributed."""
    local = next((float(v) for v in values if not hasattr(v, "detach") and not math.isfinite(float(v))), None)
    tensors = [v for v in values if hasattr(v, "detach")]
    if not tensors and device is None:
        return local, local is not None
    import torch
    import torch.distributed as dist

    if tensors and local is None:
        flat = tensors[0].reshape(-1) if len(tensors) == 1 else torch.cat([t.float().reshape(-1) for t in tensors])
        finite = torch.isfinite(flat)
        if not bool(finite.all()):  # reading the verdict is the one synchronisation per optimizer step
            local = float(flat[~finite][0].item())
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flag = torch.tensor([0.0 if local is None else 1.0], device=device if device is not None else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return local, bool(flag.item())
    return local, local is not None


def nonfinite_tensors(path: Path) -> list[str]:
    """Names of the tensors in a ``.safetensors`` file that hold nan or inf (read with numpy, not torch).

    Empty when every value is finite, and when the file is not a readable safetensors file (or numpy
    is missing): a guard against saving diverged weights, not a file checker.
    """
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with every trainer
        return []
    widths = {2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}
    bad: list[str] = []
    try:
        with Path(path).open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > 100_000_000:
                return []
            header = json.loads(fh.read(size))
        if not isinstance(header, dict):
            return []
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + size)
        for name, info in header.items():
            if name == "__metadata__" or not isinstance(info, dict) or info.get("dtype") not in _EXPONENT:
                continue
            width, mask = _EXPONENT[info["dtype"]]
            start, end = info["data_offsets"]
            raw = np.frombuffer(data[start:end], dtype=widths[width])
            if raw.size and bool(np.any((raw & mask) == mask)):
                bad.append(name)
    except (OSError, ValueError, TypeError, KeyError, struct.error):
        return []
    return bad


def nonfinite_weights_error(adapter_dir: Path, tensors: list[str], extra: dict[str, Any] | None) -> StageError:
    """The StageError of an adapter whose weights hold nan or inf (it is not written)."""
    extra = extra or {}
    epoch, step = extra.get("epoch"), extra.get("step")
    train_dir = Path(adapter_dir).parent.parent
    which = f"of epoch {epoch}" if epoch is not None else f"for {adapter_dir}"
    when = f" at step {step}" if step is not None else ""
    shown = ", ".join(tensors[:3]) + (f" and {len(tensors) - 3} more" if len(tensors) > 3 else "")
    msg = (f"the adapter {which}{when} holds nan or inf weights ({shown}): the training diverged, so it was "
           f"not written and training stopped. Likely causes: {'; '.join(likely_causes())}.")
    saved = saved_epochs(train_dir, before=epoch if isinstance(epoch, int) else None)
    if saved:
        msg += f" The adapters of epochs {saved} were saved before and stay valid."
    return StageError(msg)
