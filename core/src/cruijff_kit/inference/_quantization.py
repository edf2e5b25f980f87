"""How to load the base model under an adapter: 4-bit NF4 (as a QLoRA adapter was trained) or full precision.

A QLoRA adapter learned its weights on top of a base quantized to 4-bit NF4; evaluating it on the
full-precision base measures another model. :func:`base_quantization` reads the adapter's
``cruijff_kit.json`` (written by every trainer here, see :func:`cruijff_kit.training.method_info`) and
answers ``quantization: auto|nf4|none``:

* ``auto`` (the default everywhere): ``nf4`` when the adapter was trained with ``method: qlora``
  (or, without an adapter, when the caller says the run trains with qlora), else ``none``;
* ``nf4``: the base in 4-bit NF4, with the adapter's recorded settings (double quantization, compute
  dtype) when it has them;
* ``none``: the base in full precision (the ``dtype`` option), whatever the adapter was trained on.

:meth:`BaseQuantization.bnb_config` builds the transformers ``BitsAndBytesConfig``;
:func:`require_nf4_backend` fails clearly where bitsandbytes is missing or cannot quantize.
No torch at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cruijff_kit._base.errors import SpecError, StageError
from cruijff_kit.training import adapter_info

#: What a ``quantization`` option may say.
QUANTIZATIONS = ("auto", "nf4", "none")
#: Compute dtypes a 4-bit base may use (torch names, as ``cruijff_kit.json`` records them).
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
#: Defaults of a 4-bit base when the adapter records no settings (what the trl trainer uses).
NF4_DEFAULTS: dict[str, Any] = {"quant_type": "nf4", "double_quant": True}

Quantization = Literal["auto", "nf4", "none"]


@dataclass(frozen=True)
class BaseQuantization:
    """The decided way to load a base model: ``quantization`` is ``nf4`` or ``none``.

    ``reason`` says why, in words (shown in errors and docs); for ``nf4`` the 4-bit settings are set.
    """

    quantization: Literal["nf4", "none"]
    reason: str
    quant_type: str | None = None
    double_quant: bool | None = None
    compute_dtype: str | None = None

    @property
    def four_bit(self) -> bool:
        """True when the base loads in 4 bits."""
        return self.quantization == "nf4"

    def record(self) -> dict[str, Any]:
        """What results and metadata record: ``{"quantization": "nf4", "quant_type", "double_quant",
        "compute_dtype"}`` or ``{"quantization": "none"}``."""
        if not self.four_bit:
            return {"quantization": "none"}
        return {"quantization": "nf4", "quant_type": self.quant_type, "double_quant": self.double_quant,
                "compute_dtype": self.compute_dtype}

    def bnb_config(self) -> Any:
        """The transformers ``BitsAndBytesConfig`` of a 4-bit base (ValueError for ``none``)."""
        if not self.four_bit:
            raise ValueError("a full-precision base has no BitsAndBytesConfig")
        import torch
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.quant_type,
                                  bnb_4bit_use_double_quant=bool(self.double_quant),
                                  bnb_4bit_compute_dtype=getattr(torch, str(self.compute_dtype)))


def _recorded_settings(adapter: Path, info: dict[str, Any]) -> dict[str, Any]:
    """The 4-bit settings an adapter's ``cruijff_kit.json`` records, checked."""
    raw = info.get("quantization") or {}
    file = str(adapter / "cruijff_kit.json")
    if not isinstance(raw, dict):
        raise StageError(f"{file}: `quantization` is {raw!r}, not a mapping of 4-bit settings. Rewrite it as "
                         "{quant_type: nf4, double_quant: true, compute_dtype: bfloat16}, or remove it to use "
                         "the defaults.")
    out: dict[str, Any] = {}
    if "quant_type" in raw:
        if raw["quant_type"] not in ("nf4", "fp4"):
            raise StageError(f"{file}: quantization.quant_type is {raw['quant_type']!r}; bitsandbytes loads "
                             "nf4 or fp4. Correct the file, or set quantization: none for a full-precision base.")
        out["quant_type"] = raw["quant_type"]
    if "double_quant" in raw:
        if not isinstance(raw["double_quant"], bool):
            raise StageError(f"{file}: quantization.double_quant is {raw['double_quant']!r}, not true or false. "
                             "Correct the file.")
        out["double_quant"] = raw["double_quant"]
    if "compute_dtype" in raw:
        if raw["compute_dtype"] not in COMPUTE_DTYPES:
            raise StageError(f"{file}: quantization.compute_dtype is {raw['compute_dtype']!r}; use one of "
                             f"{', '.join(COMPUTE_DTYPES)}.")
        out["compute_dtype"] = raw["compute_dtype"]
    return out


def base_quantization(adapter: str | Path | None = None, quantization: str = "auto", *,
                      method: str | None = None, dtype: str = "float32",
                      option: str = "quantization") -> BaseQuantization:
    """How to load the base under ``adapter`` for a ``quantization`` choice (``auto``, ``nf4``, ``none``).

    ``auto`` is ``nf4`` when the adapter's ``cruijff_kit.json`` records ``method: qlora`` (or, when
    there is no adapter or it records no method, when ``method`` is ``qlora``: e.g. the base target of
    a qlora run), else ``none``. A 4-bit base uses the adapter's recorded ``quant_type``,
    ``double_quant`` and ``compute_dtype``; unrecorded ones default to nf4, double quantization and
    ``dtype`` (the torch name of the dtype the rest of the model loads in). ``option`` names the
    setting in error messages. Nothing heavy is imported.
    """
    if quantization not in QUANTIZATIONS:
        raise SpecError(f"is {quantization!r}.", path=option,
                        hint="Use auto (4-bit NF4 for a QLoRA adapter, else full precision), nf4 or none.")
    adapter_path = Path(adapter).expanduser() if adapter is not None else None
    info = adapter_info(adapter_path) if adapter_path is not None else {}
    trained = info.get("method") or method
    if quantization == "none":
        return BaseQuantization("none", f"{option}: none asks for a full-precision base")
    if quantization == "auto" and trained != "qlora":
        why = ("the adapter was trained with lora" if info.get("method") == "lora"
               else "nothing says the base was trained in 4 bits")
        return BaseQuantization("none", f"{option}: auto and {why}")
    settings = {**NF4_DEFAULTS, "compute_dtype": dtype}
    if adapter_path is not None:
        settings.update(_recorded_settings(adapter_path, info))
    if settings["compute_dtype"] not in COMPUTE_DTYPES:
        raise SpecError(f"the 4-bit compute dtype {settings['compute_dtype']!r} is unknown.", path=option,
                        hint=f"Use one of {', '.join(COMPUTE_DTYPES)}.")
    reason = (f"{option}: nf4 asks for a 4-bit base" if quantization == "nf4"
              else f"{option}: auto and " + ("the adapter was trained with qlora" if info.get("method") == "qlora"
                                             else "the run trains with qlora"))
    return BaseQuantization("nf4", reason, quant_type=str(settings["quant_type"]),
                            double_quant=bool(settings["double_quant"]), compute_dtype=str(settings["compute_dtype"]))


def require_nf4_backend(device: str, why: BaseQuantization | str, option: str = "quantization",
                        off: str = "none") -> None:
    """Raise a :class:`StageError` unless bitsandbytes imports and quantizes a tensor to NF4 on ``device``.

    ``why`` (a :class:`BaseQuantization` or its reason) goes into the message, which says how to fix
    it: install bitsandbytes, or set ``<option>: <off>`` (default ``quantization: none``) for a
    full-precision base.
    """
    reason = why.reason if isinstance(why, BaseQuantization) else why
    fix = (f"Install bitsandbytes (`pip install bitsandbytes`; 0.50 or later quantizes on CPU and CUDA GPUs), "
           f"or set {option}: {off} to load the base in full precision (then the results say quantization: none).")
    try:
        import bitsandbytes.functional as bnbf
    except Exception as exc:  # missing, or a build that fails to load
        raise StageError(f"the base model must load in 4-bit NF4 ({reason}), but bitsandbytes cannot be "
                         f"imported here ({type(exc).__name__}: {exc}). {fix}") from None
    try:
        import torch

        bnbf.quantize_4bit(torch.ones(64, device=device), quant_type="nf4")
    except Exception as exc:
        raise StageError(f"the base model must load in 4-bit NF4 ({reason}), but the installed bitsandbytes "
                         f"cannot quantize on {device} ({type(exc).__name__}: {exc}). {fix}") from None
