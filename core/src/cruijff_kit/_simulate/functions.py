"""User functions named in a ``simulate`` section: moved to :mod:`cruijff_kit.collab`; re-exported here."""

from __future__ import annotations

from cruijff_kit.collab import load_function

__all__ = ["load_function"]
