"""Metrics of one simulated future, the terms of the multiturn-aware reward: moved to the public
:mod:`cruijff_kit.collab` (shared with the multi-turn eval task); re-exported here."""

from __future__ import annotations

from cruijff_kit.collab import (
    MalformedReply,
    Metric,
    Outcome,
    contains,
    count_tokens,
    exact_match,
    extract_answer,
    final_answer,
    normalize,
    numeric_match,
    parse_json_object,
    pass_rate,
)
from cruijff_kit.collab._metrics import _score_of

__all__ = ["MalformedReply", "Metric", "Outcome", "_score_of", "contains", "count_tokens", "exact_match", "extract_answer",
           "final_answer", "normalize", "numeric_match", "parse_json_object", "pass_rate"]
