"""Models that need no model hub: tiny random-weight models for tests, SmolLM2 from PyPI for demos.

``build_tiny_model`` and ``ensure_smollm2`` are loaded on first use; importing this package imports
neither torch nor transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cruijff_kit._base.lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover - typing only
    from cruijff_kit._models.smollm2 import ensure_smollm2
    from cruijff_kit._models.tiny import build_tiny_model

__all__ = ["build_tiny_model", "ensure_smollm2"]

_WHERE = {"build_tiny_model": "cruijff_kit._models.tiny", "ensure_smollm2": "cruijff_kit._models.smollm2"}

__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
