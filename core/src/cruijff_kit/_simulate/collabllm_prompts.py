"""The official CollabLLM extraction prompt: moved to :mod:`cruijff_kit.collab`; re-exported here."""

from cruijff_kit.collab import EXTRACT_PROMPT

__all__ = ["EXTRACT_PROMPT"]
