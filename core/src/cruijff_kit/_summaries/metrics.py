"""The metrics of an eval results entry, and which way each one is better."""

from __future__ import annotations

import math
from typing import Any

#: Metric names where lower is better (matched as substrings of the metric name): losses, errors and
#: costs (``token_amount``, the collaboration reward's token count: fewer tokens is better). The one rule
#: of ``ck summarize``'s bold best values, its plots' axis labels and ``ck report``'s starred best values.
LOWER_IS_BETTER = ("loss", "mae", "rmse", "ece", "brier", "error", "rce", "perplexity", "token_amount")
SKIP_KEYS = {"confusion_matrix", "calibration", "roc"}


def flatten_metrics(results: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The metrics of a results entry: every ``{"value": number, ...}`` mapping, nested names dotted.

    ``{"match/accuracy": {"value": 0.5, "stderr": 0.1}, "risk": {"auc": {"value": 0.7}}, "samples": 30}``
    -> ``{"match/accuracy": 0.5, "risk.auc": 0.7}``. Plain numbers are metadata (sample counts,
    epochs), not metrics.
    """
    out: dict[str, float] = {}
    for key, value in results.items():
        if key in SKIP_KEYS or not isinstance(value, dict):
            continue
        name = f"{prefix}{key}"
        if "value" in value:
            v = value["value"]
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v)):
                out[name] = float(v)
        else:
            out.update(flatten_metrics(value, prefix=f"{name}."))
    return out


def lower_is_better(metric: str) -> bool:
    """True for losses, errors and costs (:data:`LOWER_IS_BETTER`)."""
    return any(k in metric.lower() for k in LOWER_IS_BETTER)
