"""Turn an inspect ``EvalLog`` into the entry stored in ``eval/results.json[task][target]``."""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cruijff_kit import scoring

#: How the base model was loaded, as the evaluator records it in the eval log's metadata
#: (``quantization`` nf4 or none, ``dtype``, and for nf4 the 4-bit settings).
LOADING_KEYS = ("quantization", "dtype", "quant_type", "double_quant", "compute_dtype")
STDERR_OF = ("accuracy", "mean")
"""The metric inspect's plain ``stderr`` metric belongs to (the first of these a scorer has)."""


def _num(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) or math.isinf(f) else f


def _pair_stderr(metrics: dict[str, float | None]) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """Split one scorer's metrics into values and standard errors keyed by the metric they belong to.

    inspect's ``stderr`` belongs to ``accuracy`` (or ``mean``); ``X_stderr`` belongs to ``X``.
    """
    values: dict[str, float | None] = {}
    errors: dict[str, float | None] = {}
    plain = [k for k in metrics if k != "stderr" and not k.endswith("_stderr")]
    for key, value in metrics.items():
        if key == "stderr":
            owner = next((k for k in STDERR_OF if k in metrics), plain[0] if plain else None)
            if owner is not None:
                errors[owner] = value
        elif key.endswith("_stderr") and key[: -len("_stderr")] in metrics:
            errors[key[: -len("_stderr")]] = value
        else:
            values[key] = value
    return values, errors


def _relative(path: str, root: Path | None) -> str:
    p = path.removeprefix("file://")
    if root is not None:
        try:
            return os.path.relpath(p, root) if Path(p).resolve().is_relative_to(root.resolve()) else p
        except ValueError:  # different drives
            return p
    return p


def scored_risk(meta: dict[str, Any]) -> tuple[float, int] | None:
    """(risk, outcome) of a risk score's metadata, or None when the sample is not scored.

    A risk that is missing, not a number (NaN) or outside [0, 1], or an outcome other than 0/1, makes
    the sample unscored: it is counted in ``n_unscored``, never averaged into the metrics.
    """
    risk, outcome = meta.get("risk"), meta.get("outcome")
    if isinstance(risk, bool) or not isinstance(risk, int | float) or not 0.0 <= risk <= 1.0:
        return None  # NaN fails the range test too
    if isinstance(outcome, bool) or outcome not in (0, 1):
        return None
    return float(risk), int(outcome)


def _first_epoch_scores(log: Any) -> list[tuple[str, Any]]:
    """(scorer name, Score) of every sample's first epoch (the metadata the metrics use)."""
    return [(name, score) for sample in (log.samples or []) if getattr(sample, "epoch", 1) == 1
            for name, score in (sample.scores or {}).items()]


def _risks(log: Any) -> dict[str, tuple[list[float], list[int], int]]:
    data: dict[str, tuple[list[float], list[int], int]] = {}
    for name, score in _first_epoch_scores(log):
        meta = score.metadata or {}
        pair = scored_risk(meta)
        if pair is not None:
            risks, outcomes, _ = data.setdefault(name, ([], [], int(meta.get("n_bins", 10))))
            risks.append(pair[0])
            outcomes.append(pair[1])
    return data


def calibration(log: Any) -> dict[str, list[dict[str, Any]]]:
    """Reliability-diagram bins of the risk scorers (scored samples' risk and outcome)."""
    return {name: [asdict(b) for b in scoring.calibration_bins(r, o, n)] for name, (r, o, n) in _risks(log).items()}


def roc_points(log: Any) -> dict[str, list[tuple[float, float]]]:
    """ROC curve points of the risk scorers (empty for a scorer whose samples have one class only)."""
    return {name: scoring.roc_curve(r, o) for name, (r, o, _) in _risks(log).items()}


def confusion_matrices(log: Any) -> dict[str, dict[str, Any]]:
    """Confusion matrices of the classification scorers, recomputed from the log's samples."""
    out: dict[str, dict[str, Any]] = {}
    for name, score in _first_epoch_scores(log):
        meta = score.metadata or {}
        if "actual" in meta and "predicted" in meta and "labels" in meta:
            entry = out.setdefault(name, {"actual": [], "predicted": [], "labels": meta.get("labels"),
                                          "positive": meta.get("positive")})
            entry["actual"].append(meta["actual"])
            entry["predicted"].append(meta["predicted"])
    result = {}
    for name, e in out.items():
        m = scoring.classification_metrics(e["actual"], e["predicted"], labels=e["labels"], positive=e["positive"])
        result[name] = {"labels": m["labels"], "matrix": m["confusion"]}
    return result


def results_from_log(log: Any, root: Path | None = None, **extra: Any) -> dict[str, Any]:
    """The results entry of one eval log.

    One key per metric, ``"<scorer>/<metric>": {"value": v, "stderr": se}`` (``stderr`` None where the
    metric has none), plus ``samples`` (scored samples, epochs included), ``log`` (the ``.eval`` file,
    relative to ``root``, the run folder, when inside it), ``status``, ``task``, ``model``,
    ``scorers`` (names in the log), ``headline`` (the first metric), ``confusion_matrix`` per
    classification scorer, ``calibration`` (reliability-diagram bins) and ``roc`` (curve points) per
    risk scorer, how the base model was loaded (:data:`LOADING_KEYS`: ``quantization`` ``"nf4"`` or
    ``"none"``, ``dtype``, and for nf4 ``quant_type``, ``double_quant``, ``compute_dtype``; read from the
    log's metadata unless ``extra`` gives them) and ``extra`` (e.g. ``target``, ``finetuned``).
    """
    meta = getattr(log.eval, "metadata", None) or {}
    loading = {k: meta[k] for k in LOADING_KEYS if k in meta}
    entry: dict[str, Any] = {
        "log": _relative(log.location, root),
        "samples": log.results.total_samples if log.results else 0,
        "status": log.status,
        "task": log.eval.task,
        "model": log.eval.model,
        **loading,
        **extra,
        "scorers": [],
        "headline": None,
    }
    for score in (log.results.scores if log.results else []) or []:
        entry["scorers"].append(score.name)
        values, ses = _pair_stderr({key: _num(m.value) for key, m in score.metrics.items()})
        for key, value in values.items():
            name = f"{score.name}/{key}"
            entry[name] = {"value": value, "stderr": ses.get(key)}
            if entry["headline"] is None:
                entry["headline"] = name
    confusion = confusion_matrices(log)
    if confusion:
        entry["confusion_matrix"] = confusion
    bins = calibration(log)
    if bins:
        entry["calibration"] = bins
        entry["roc"] = roc_points(log)
    return entry


def metric_values(entry: dict[str, Any]) -> dict[str, float | None]:
    """``{"<scorer>/<metric>": value}`` of a results entry."""
    return {k: v["value"] for k, v in entry.items() if isinstance(v, dict) and "value" in v}
