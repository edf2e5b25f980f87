"""Models that need no model hub: tiny random-weight models for tests, SmolLM2 from PyPI for demos.

``build_tiny_model`` and ``ensure_smollm2`` are loaded on first use; importing this package imports
neither torch nor transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from cruijff_kit.models.smollm2 import ensure_smollm2
    from cruijff_kit.models.tiny import build_tiny_model

__all__ = ["build_tiny_model", "ensure_smollm2"]

_WHERE = {"build_tiny_model": "cruijff_kit.models.tiny", "ensure_smollm2": "cruijff_kit.models.smollm2"}


def __getattr__(name: str) -> Any:
    """Import the public functions lazily (PEP 562)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Public names, for tab completion."""
    return sorted([*globals(), *__all__])
