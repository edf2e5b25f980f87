"""Research on fine-tuned models: load a run folder (or a base model + adapter) in one call, then
generate, score option strings, read per-token log-probabilities and extract embeddings.

>>> from cruijff_kit.inference import load
>>> m = load("experiments/capitalize/runs/brave-otter-1a2b3c")   # latest epoch's adapter
>>> m.option_probabilities(["Is 7 prime?"], ["yes", "no"])
>>> m.quantization   # {"quantization": "nf4", ...} for a QLoRA adapter: its base loads in 4 bits, as trained

Importing this package imports neither torch nor transformers; :func:`load` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cruijff_kit._base.lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover - typing only
    from cruijff_kit.inference._loading import (
        TOKENIZER_FILES,
        load_model,
        resolve_device,
        resolve_dtype,
        resolve_target,
        tokenizer_dir,
    )
    from cruijff_kit.inference._model import InferenceModel, load
    from cruijff_kit.inference._quantization import (
        QUANTIZATIONS,
        BaseQuantization,
        base_quantization,
        require_nf4_backend,
    )

_WHERE = {
    **dict.fromkeys(["InferenceModel", "load"], "cruijff_kit.inference._model"),
    **dict.fromkeys(["TOKENIZER_FILES", "load_model", "resolve_device", "resolve_dtype", "resolve_target",
                     "tokenizer_dir"], "cruijff_kit.inference._loading"),
    **dict.fromkeys(["QUANTIZATIONS", "BaseQuantization", "base_quantization", "require_nf4_backend"],
                    "cruijff_kit.inference._quantization"),
}

__all__ = [
    "QUANTIZATIONS", "BaseQuantization", "InferenceModel", "TOKENIZER_FILES", "base_quantization", "load",
    "load_model", "require_nf4_backend", "resolve_device", "resolve_dtype", "resolve_target", "tokenizer_dir",
]

__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
