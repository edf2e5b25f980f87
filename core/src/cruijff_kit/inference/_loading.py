"""Loading a base model plus an optional PEFT adapter, with its tokenizer, device and dtype.

The one loading path shared by the research API (:mod:`cruijff_kit.inference`) and evaluators.
:func:`resolve_target` turns a run folder, an epoch folder or an adapter folder into (base, adapter)
paths without importing torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cruijff_kit._base.errors import SpecError
from cruijff_kit._base.fileio import read_json
from cruijff_kit.inference._quantization import BaseQuantization, base_quantization, require_nf4_backend

#: Files that mark a folder holding a tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def resolve_dtype(dtype: str | None, device: str) -> Any:
    """The torch dtype for a ``dtype`` option (``auto``: bfloat16 on a GPU that computes in it natively,
    :func:`cruijff_kit.training.supports_bf16`, else float32)."""
    import torch

    if dtype in (None, "auto"):
        from cruijff_kit.training import supports_bf16

        if supports_bf16(device):
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype!r}: use auto, float32, bfloat16 or float16") from None


def resolve_device(device: str | None) -> str:
    """``auto`` -> cuda:0, mps or cpu, whichever is there."""
    import torch

    if device and device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda:0"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def tokenizer_dir(adapter: Path) -> Path | None:
    """The folder with the tokenizer saved next to an adapter (``adapter/`` or ``epoch_N/``), if any."""
    for cand in (adapter, adapter.parent):
        if any((cand / f).exists() for f in TOKENIZER_FILES):
            return cand
    return None


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _adapter_base(adapter: Path) -> str | None:
    """The base model an adapter folder records (local path first, then the hub id)."""
    info = adapter / "cruijff_kit.json"
    if info.is_file():
        data = _mapping(read_json(info))
        for key in ("base_model_path", "base_model"):
            if data.get(key) and (key != "base_model_path" or Path(data[key]).exists()):
                return str(data[key])
    cfg = adapter / "adapter_config.json"
    if cfg.is_file():
        return _mapping(read_json(cfg)).get("base_model_name_or_path")
    return None


def _epochs(run_dir: Path) -> list[Path]:
    found = [p for p in (run_dir / "train").glob("epoch_*") if (p / "adapter" / "adapter_config.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]) if p.name.split("_")[1].isdigit() else -1)


def resolve_target(path: str | Path, adapter: str | Path | None = None,
                   epoch: int | None = None) -> tuple[str, Path | None]:
    """(base model, adapter folder or None) for what the user named.

    ``path`` is a run folder (``spec.yaml`` inside; the adapter of ``epoch``, default the last saved
    epoch; the run's own ``model.adapter`` for eval-only runs; none for control runs), an epoch folder,
    an adapter folder (its base is read from ``cruijff_kit.json``/``adapter_config.json``), or a base
    model (a local folder or a hub id) with ``adapter`` given separately.
    """
    p = Path(path).expanduser()
    if adapter is not None:
        return str(p) if p.exists() else str(path), Path(adapter).expanduser().resolve()
    if (p / "spec.yaml").is_file():
        from cruijff_kit._base.yamlfile import read_yaml

        spec = read_yaml(p / "spec.yaml", what="run spec")
        model = spec.get("model", {}) or {}
        base = model.get("local_path") or model.get("path")
        epochs = _epochs(p)
        if epoch is not None:
            chosen = p / "train" / f"epoch_{epoch}" / "adapter"
            if not (chosen / "adapter_config.json").is_file():
                have = ", ".join(e.name for e in epochs) or "none"
                raise SpecError(f"has no adapter for epoch {epoch} (saved epochs: {have}).", file=str(p),
                                hint="Pass an epoch that was saved, or omit it for the last one.")
            return str(base), chosen
        if epochs:
            return str(base), epochs[-1] / "adapter"
        if model.get("adapter"):
            return str(base), Path(model["adapter"])
        return str(base), None
    if (p / "adapter" / "adapter_config.json").is_file():
        p = p / "adapter"
    if (p / "adapter_config.json").is_file():
        base = _adapter_base(p)
        if base is None:
            raise SpecError("is an adapter folder that does not name its base model.", file=str(p),
                            hint="Pass the base model as well: load(BASE, adapter=ADAPTER).")
        return base, p.resolve()
    return (str(p.resolve()) if p.exists() else str(path)), None


def load_model(base: str | Path, adapter: str | Path | None = None, *, device: str | None = "auto",
               dtype: str | None = "auto", merge: bool = False,
               quantization: str | BaseQuantization = "auto") -> tuple[Any, Any, str]:
    """(model in eval mode, tokenizer, device): ``base`` with the PEFT ``adapter`` applied in memory.

    The tokenizer saved beside the adapter (with the chat template used in training) wins over the
    base model's. ``merge`` folds the adapter into the weights (faster generation). ``quantization``
    (``auto``, ``nf4``, ``none``, or a decided :class:`BaseQuantization`) says how the base loads:
    ``auto`` loads it in 4-bit NF4 when the adapter was trained with qlora, as it was trained (see
    :func:`base_quantization`); ``dtype`` is then the dtype of the layers left unquantized.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    adapter_path = Path(adapter).expanduser() if adapter else None
    if adapter_path is not None and not (adapter_path / "adapter_config.json").is_file():
        raise SpecError("is not a PEFT adapter folder (no adapter_config.json).", file=str(adapter_path),
                        hint="Point at train/epoch_<N>/adapter of a finished run.")
    quant = quantization if isinstance(quantization, BaseQuantization) else base_quantization(
        adapter_path, quantization, dtype=str(torch_dtype).removeprefix("torch."))
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if quant.four_bit:
        if merge and adapter_path is not None:
            raise SpecError("cannot merge an adapter into a 4-bit NF4 base: the merged weights would be rounded "
                            f"back to 4 bits, losing most of the adapter ({quant.reason}).", path="merge",
                            hint="Keep merge off (the adapter is applied on top of the 4-bit base), or load the "
                                 "base in full precision with quantization='none' to merge.")
        require_nf4_backend(dev, quant)
        kwargs["quantization_config"] = quant.bnb_config()
        kwargs["device_map"] = {"": dev}
    tok_dir = tokenizer_dir(adapter_path) if adapter_path is not None else None
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir or base))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(base), **kwargs)
    if adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_path))
        if merge:
            model = model.merge_and_unload()
    if not quant.four_bit:  # a 4-bit model is placed by device_map and cannot be moved
        model.to(dev)
    model.eval()
    return model, tokenizer, dev
