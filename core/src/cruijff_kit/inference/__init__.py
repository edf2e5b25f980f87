"""Research on fine-tuned models: load a run folder (or a base model + adapter) in one call, then
generate, score option strings, read per-token log-probabilities and extract embeddings.

>>> from cruijff_kit.inference import load
>>> m = load("experiments/capitalize/runs/brave-otter-1a2b3c")   # latest epoch's adapter
>>> m.option_probabilities(["Is 7 prime?"], ["yes", "no"])

Importing this package imports neither torch nor transformers; :func:`load` does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from cruijff_kit.inference.loading import load_model, resolve_target
    from cruijff_kit.inference.model import InferenceModel, load

__all__ = ["InferenceModel", "load", "load_model", "resolve_target"]

_WHERE = {"InferenceModel": "cruijff_kit.inference.model", "load": "cruijff_kit.inference.model",
          "load_model": "cruijff_kit.inference.loading", "resolve_target": "cruijff_kit.inference.loading"}


def __getattr__(name: str) -> Any:
    """Import the public names lazily (PEP 562)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Public names, for tab completion."""
    return sorted([*globals(), *__all__])
