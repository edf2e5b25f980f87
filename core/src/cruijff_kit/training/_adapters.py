"""Helpers every trainer shares: precision, the metrics row schema, and writing an epoch's adapter.

* :func:`resolve_precision` turns ``precision: auto`` into ``bf16`` or ``fp32`` for the machine the
  stage runs on (imports torch, so call it inside ``train``); :func:`plan_device` is its cheap
  plan-time counterpart.
* :class:`MetricsRow` is the one schema of ``train/metrics.jsonl`` rows:
  ``{step, epoch, train_loss, val_loss, learning_rate, tokens_per_second, peak_memory_mb}``.
* :func:`save_adapter` writes ``train/epoch_<N>/adapter/`` atomically: PEFT adapter files plus the
  tokenizer (with the chat template used in training), never the base weights.
  ``adapter_config.json`` names the base model by the local folder it was trained from, so it loads
  offline on that machine; ``cruijff_kit.json`` beside it records the name the user gave (hub id),
  which :func:`export_adapter` writes back for sharing, and how the adapter was trained
  (:func:`method_info`: ``method`` lora or qlora, and for qlora the 4-bit settings of the base), which
  evaluators read to load the base the adapter was trained on.
"""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cruijff_kit._base.errors import StageError
from cruijff_kit._base.fileio import atomic_write_json, atomic_write_text, read_json
from cruijff_kit.training._finite import nonfinite_tensors, nonfinite_weights_error

#: Keys of every row in ``train/metrics.jsonl``, in order.
METRIC_KEYS = ("step", "epoch", "train_loss", "val_loss", "learning_rate", "tokens_per_second",
               "peak_memory_mb")
#: File in an adapter folder recording where the adapter came from.
ADAPTER_INFO = "cruijff_kit.json"
#: Files of a PEFT adapter folder that :func:`save_adapter` requires.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
#: Torch dtype names of the resolved training precisions (as recorded in ``cruijff_kit.json``).
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


# --------------------------------------------------------------------------- precision
def plan_device(gpus: int) -> str:
    """``cuda`` when the planned resources have GPUs, else ``cpu`` (no torch: for plan-time checks)."""
    return "cuda" if gpus > 0 else "cpu"


def run_device() -> str:
    """The device this process trains on: ``cuda`` when torch sees a GPU, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def supports_bf16(device: str = "cuda") -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU of compute capability 8.0 or newer
    (Ampere and later; on ROCm what torch reports). Older GPUs only emulate bf16, slowly, and the CPU is
    not counted: both are False, so ``auto`` picks float32 there."""
    import torch

    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return False
    if getattr(torch.version, "hip", None):
        return bool(torch.cuda.is_bf16_supported())
    index = torch.device(device).index
    major, _minor = torch.cuda.get_device_capability(torch.cuda.current_device() if index is None else index)
    return major >= 8


def resolve_precision(precision: str, device: str | None = None) -> str:
    """``auto`` -> ``bf16`` on a GPU that supports it, else ``fp32``; explicit values are checked.

    Raises :class:`StageError` for ``fp16``/``bf16`` where the device cannot train in it.
    """

    device = device or run_device()
    bf16_ok = supports_bf16(device)
    if precision == "auto":
        return "bf16" if bf16_ok else "fp32"
    if precision == "fp16" and device != "cuda":
        raise StageError("train.precision is fp16, but this machine has no GPU: mixed fp16 training needs "
                         "CUDA. Use precision: auto (fp32 on CPU).")
    if precision == "bf16" and device.startswith("cuda") and not bf16_ok:
        raise StageError("train.precision is bf16, but this GPU does not compute in bf16 natively (compute "
                         "capability below 8.0: it would only emulate it, slowly). Use precision: auto (fp32 "
                         "here) or fp16.")
    return precision


def torch_dtype(precision: str) -> Any:
    """The torch dtype of a resolved precision (``fp32``, ``bf16``, ``fp16``)."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def peak_memory_mb(device: str | None = None) -> float | None:
    """Peak memory of this process so far in MiB: CUDA max allocated on a GPU, max RSS on CPU."""
    try:
        import torch

        if (device or run_device()) == "cuda":
            return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    except Exception:  # pragma: no cover - torch always importable where trainers run
        pass
    try:
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(rss / (2**20 if sys.platform == "darwin" else 1024), 1)
    except Exception:  # pragma: no cover - no resource module
        return None


def method_info(method: str, precision: str | None = None, *, library: str = "bitsandbytes") -> dict[str, Any]:
    """The ``method`` and, for qlora, ``quantization`` keys a trainer records in ``cruijff_kit.json``.

    ``method`` is ``lora`` or ``qlora``; ``precision`` is the resolved training precision (``fp32``,
    ``bf16``, ``fp16``). For qlora it is the compute dtype of the 4-bit layers, and ``library`` what
    quantized the base (``bitsandbytes`` or ``torchao``). Every qlora trainer here stores the base in
    4-bit NF4 with double quantization (the quantization constants quantized again), so the record is
    ``{"method": "qlora", "quantization": {"quant_type": "nf4", "double_quant": true, "compute_dtype":
    "bfloat16", "library": "bitsandbytes"}}``; a lora adapter records ``{"method": "lora", "precision":
    "bf16"}`` (the dtype a merged copy keeps wherever it is evaluated), or ``{"method": "lora"}`` when
    no precision is given.
    """
    if method == "lora":
        if precision is None:
            return {"method": "lora"}
        if precision not in DTYPE_NAMES:
            raise ValueError(f"precision {precision!r}: pass the resolved training precision ({', '.join(DTYPE_NAMES)})")
        return {"method": "lora", "precision": precision}
    if method != "qlora":
        raise ValueError(f"method {method!r}: use lora or qlora")
    if precision not in DTYPE_NAMES:
        raise ValueError(f"a qlora adapter records its compute dtype: pass the resolved precision "
                         f"({', '.join(DTYPE_NAMES)}), not {precision!r}")
    return {"method": "qlora", "quantization": {"quant_type": "nf4", "double_quant": True,
                                                "compute_dtype": DTYPE_NAMES[precision], "library": library}}


# --------------------------------------------------------------------------- metrics
@dataclass
class MetricsRow:
    """One row of ``train/metrics.jsonl``; fields not measured at a step stay None."""

    step: int
    epoch: float | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    peak_memory_mb: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """All :data:`METRIC_KEYS`, floats rounded, NaN and inf as None."""
        out: dict[str, Any] = {}
        for k, v in asdict(self).items():
            if isinstance(v, float):
                v = None if not math.isfinite(v) else round(v, 8 if k == "learning_rate" else 6)
            out[k] = v
        out["step"] = int(self.step)
        return out

    def log(self, ctx: Any) -> None:
        """Append this row through ``ctx.log_metrics`` (file and trackers)."""
        d = self.as_dict()
        step = d.pop("step")
        ctx.log_metrics(step, **d)


class MetricsWriter:
    """Logs :class:`MetricsRow` s through ``ctx.log_metrics`` on a background thread, in order.

    The training loop only queues a row (:meth:`log`); the append to ``metrics.jsonl`` (with its
    fsync), the ``metrics_logged`` hook (trackers) and the live display run on the writer's thread,
    so a slow disk or tracker never stalls a training step. :meth:`flush` waits until every queued
    row is logged: call it before saving resumable state, so the rows up to a saved step are on disk
    before the state that resumes from it. :meth:`close` flushes and ends the thread. An error while
    logging a row is raised again in the caller's thread by the next :meth:`log`, :meth:`flush` or
    :meth:`close`, and later rows are dropped.
    """

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self._queue: queue.Queue[MetricsRow | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def log(self, row: MetricsRow) -> None:
        """Queue ``row`` (returns at once; the writer's thread starts with the first row)."""
        self._raise()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ck-metrics", daemon=True)
            self._thread.start()
        self._queue.put(row)

    def flush(self) -> None:
        """Wait until every queued row is logged; raise the error of one that failed."""
        if self._thread is not None:
            self._queue.join()
        self._raise()

    def close(self) -> None:
        """Flush and end the writer's thread (a later :meth:`log` starts a new one)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while True:
            row = self._queue.get()
            try:
                if row is None:
                    return
                if self._error is None:
                    row.log(self.ctx)
            except BaseException as exc:  # noqa: BLE001 - raised again in the training thread
                self._error = exc
            finally:
                self._queue.task_done()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (skipping a torn last line)."""
    from cruijff_kit._base.fileio import read_jsonl

    return read_jsonl(path)


def truncate_metrics(path: Path, last_step: int) -> int:
    """Drop rows after ``last_step`` (a resume restarts from there); returns how many were dropped.

    Call it before a resumed training logs again, so no step appears twice.
    """
    rows = read_metrics(path)
    keep = [r for r in rows if int(r.get("step", 0)) <= last_step]
    if len(keep) != len(rows) or (path.exists() and not path.read_text(encoding="utf-8").endswith("\n")):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
    return len(rows) - len(keep)


# --------------------------------------------------------------------------- adapters
def _replace_dir(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``, replacing an existing folder with as short a gap as renames allow."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def write_adapter_dir(adapter_dir: Path, write: Callable[[Path], None], tokenizer: Any, *, base_model: str,
                      base_model_path: str | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write an adapter folder atomically: ``write(tmp)`` fills a temporary sibling, then it is renamed in.

    After ``write`` the tokenizer is saved beside the adapter files, the folder is checked (PEFT
    files present, no base weights, no nan or inf weight: then a StageError and nothing is written),
    ``adapter_config.json`` is pointed at ``base_model_path`` (else
    ``base_model``), and ``cruijff_kit.json`` records both plus ``extra``. Temporary folders left by
    a killed process are removed first, so a reader never sees half an adapter.
    """
    adapter_dir = Path(adapter_dir)
    adapter_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in adapter_dir.parent.glob(f".{adapter_dir.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = adapter_dir.with_name(f".{adapter_dir.name}.tmp-{os.getpid()}")
    try:
        tmp.mkdir()
        write(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        missing = [f for f in ADAPTER_FILES if not (tmp / f).exists()]
        if missing:
            raise StageError(f"saving the adapter wrote no {missing} in {tmp}; is the model a PEFT model?")
        stray = [p.name for p in tmp.iterdir() if p.name.startswith("model") and p.suffix == ".safetensors"]
        if stray:
            raise StageError(f"the adapter folder would hold base weights ({stray}); only adapters are saved.")
        broken = nonfinite_tensors(tmp / "adapter_model.safetensors")
        if broken:  # diverged weights never become an adapter, whichever trainer wrote them
            raise nonfinite_weights_error(adapter_dir, broken, extra)
        # tmp is private until it is renamed in, so its files are written in place (no temp file each)
        config_path = tmp / "adapter_config.json"
        config = read_json(config_path)
        config["base_model_name_or_path"] = base_model_path or base_model
        _write_json(config_path, config)
        _write_json(tmp / ADAPTER_INFO, {"base_model": base_model, "base_model_path": base_model_path, **(extra or {})})
        _replace_dir(tmp, adapter_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return adapter_dir


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON straight to ``path`` (a file in a folder no reader sees yet)."""
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")


def save_adapter(model: Any, tokenizer: Any, adapter_dir: Path, *, base_model: str,
                 base_model_path: str | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write a PEFT model's adapter plus tokenizer files to ``adapter_dir`` atomically.

    ``model`` is a ``peft.PeftModel`` (only adapter weights are saved), ``tokenizer`` a HF tokenizer
    or None. ``adapter_config.json`` names ``base_model_path`` when given (the local folder the base
    was loaded from), else ``base_model``; ``cruijff_kit.json`` records both, plus ``extra`` (epoch,
    step, trainer...). See :func:`write_adapter_dir`.
    """
    return write_adapter_dir(adapter_dir, lambda tmp: model.save_pretrained(str(tmp), safe_serialization=True),
                             tokenizer, base_model=base_model, base_model_path=base_model_path, extra=extra)


def name_base_model(adapter_dir: Path, base: str) -> None:
    """Set ``base_model_name_or_path`` in ``adapter_dir/adapter_config.json`` (atomic)."""
    path = Path(adapter_dir) / "adapter_config.json"
    cfg = read_json(path)
    cfg["base_model_name_or_path"] = base
    atomic_write_json(path, cfg)


def adapter_info(adapter_dir: Path) -> dict[str, Any]:
    """``cruijff_kit.json`` of an adapter folder (empty when the adapter was not written here)."""
    return read_json(Path(adapter_dir) / ADAPTER_INFO, default={})


def export_adapter(adapter_dir: Path, dest: Path, base_model: str | None = None, *, overwrite: bool = False) -> Path:
    """Copy an adapter folder to ``dest`` with ``adapter_config.json`` naming the base by its hub id.

    ``base_model`` defaults to the name recorded at training time (``cruijff_kit.json``). The copy
    holds no local paths, so it can be shared or pushed to a hub. ``dest`` must be absent, an empty
    folder or an earlier export (it holds ``.written-by-cruijff-kit``); anything else is replaced only
    with ``overwrite``. ``dest`` never lies inside the adapter folder nor holds it.
    """
    from cruijff_kit._base.ownership import OWNER_FILE, check_apart, check_writable, remove_path

    adapter_dir, dest = Path(adapter_dir), Path(dest)
    if not (adapter_dir / "adapter_config.json").exists():
        raise StageError(f"{adapter_dir} is not an adapter folder (no adapter_config.json).")
    base = base_model or adapter_info(adapter_dir).get("base_model")
    if not base:
        raise StageError(f"{adapter_dir} does not record its base model's name; pass it explicitly.")
    check_apart(adapter_dir, dest, command="ck export")
    check_writable(dest, command="ck export", overwrite=overwrite)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(adapter_dir, tmp, ignore=shutil.ignore_patterns(ADAPTER_INFO, OWNER_FILE))
    name_base_model(tmp, base)
    (tmp / OWNER_FILE).write_text("Written by `ck export`; it may write here again.\n", encoding="utf-8")
    remove_path(dest)
    os.replace(tmp, dest)
    return dest


def save_adapter_weights(weights: dict[str, Any], adapter_config: dict[str, Any], tokenizer: Any,
                         adapter_dir: Path, *, base_model: str, base_model_path: str | None = None,
                         extra: dict[str, Any] | None = None) -> Path:
    """Like :func:`save_adapter`, for trainers that hold LoRA weights as a plain state dict.

    ``weights`` are CPU tensors under PEFT's saved names (``base_model.model.<module>.lora_A.weight``),
    ``adapter_config`` the content of ``adapter_config.json``. The folder is written next to its final
    place and renamed in, with the tokenizer and ``cruijff_kit.json``, exactly as :func:`save_adapter`.
    """
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file(weights, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        _write_json(tmp / "adapter_config.json", adapter_config)

    return write_adapter_dir(adapter_dir, write, tokenizer, base_model=base_model,
                             base_model_path=base_model_path, extra=extra)


def require_saved_epochs(ctx: Any, saved: list[int], *, step: int, epoch: int, max_steps: int | None) -> None:
    """After ``max_steps`` ended training in ``epoch``: StageError when an epoch of ``saved`` has no adapter."""
    missing = [e for e in sorted(saved) if not (ctx.adapter_dir(e) / "adapter_config.json").exists()]
    if missing:
        raise StageError(
            f"training stopped at step {step} in epoch {epoch} (max_steps {max_steps}), so epochs {missing} of "
            "save_epochs were never reached. Lower train.epochs, raise train.max_steps, or list only reached "
            "epochs in train.save_epochs.")


def chat_template_text(value: str | None, resolve: Callable[[str], Path]) -> str | None:
    """``train.chat_template`` as Jinja text: inline text as is, or the content of the ``.jinja``/``.j2``
    file it names (``resolve`` turns the spec's path into a file path, e.g. ``Plugin.path``)."""
    if value and value.rstrip().endswith((".jinja", ".j2")) and "\n" not in value.strip():
        path = resolve(value.strip())
        try:
            return Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise StageError(f"train.chat_template names {path}, which cannot be read ({exc}).") from None
    return value
