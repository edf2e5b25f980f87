"""Scoring maths, independent of any evaluation library: calibration, discrimination, regression and
classification metrics, plus parsing of numbers and stated probabilities from model answers.

Pure Python (no numpy), so evaluators, ``ck summarize`` and plotting code share one definition of
every metric. Conventions:

* Binary outcomes are ``1`` (positive) and ``0``; a *risk* is the predicted probability of ``1``.
* Calibration bins are ``n_bins`` equal-width intervals ``(lo, hi]`` of [0, 1], the first one closed
  (``[0, 1/n]``): a probability exactly on an edge belongs to the lower bin (``0.3`` to ``(0.2, 0.3]``
  with 10 bins). This is the assignment of scikit-learn's ``calibration_curve`` (edges ``i * (1 / n)``,
  as ``numpy.linspace`` computes them, searched from the left) and of Guo et al. (2017).
* A standard error is the sample standard deviation (``n - 1``) over ``sqrt(n)``, 0 when ``n < 2``
  (inspect-ai's convention).
* A metric that is undefined for the input (no samples, one class only for AUC, constant truth for R²)
  is ``None``.
* NaN is refused (``ValueError``) wherever a number is averaged, ranked or used as a label: a caller
  leaves a sample it could not score out and counts it, it never averages it. A probability must lie
  in [0, 1]; regression values must be finite.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CalibrationBin",
    "brier_score",
    "calibration_bins",
    "classification_metrics",
    "expected_calibration_error",
    "mean_stderr",
    "normalize_token",
    "parse_number",
    "parse_probability",
    "regression_metrics",
    "risk_calibration_error",
    "roc_auc",
    "roc_curve",
]


# --------------------------------------------------------------------------- basics
def _check_no_nan(values: Sequence[Any], what: str) -> None:
    """Refuse NaN: it has no rank, no bin and no mean (see the module's conventions)."""
    if any(v != v for v in values):  # NaN is the one value not equal to itself
        raise ValueError(f"{what}: got NaN; leave samples without a value out (and count them) instead.")


def mean_stderr(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and standard error of the mean; ``(None, None)`` for no values."""
    _check_no_nan(values, "mean_stderr")
    n = len(values)
    if n == 0:
        return None, None
    mean = math.fsum(values) / n
    if n < 2:
        return mean, 0.0
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def _bin_edges(n_bins: int) -> list[float]:
    """The inner edges ``1/n .. (n-1)/n``, computed as ``numpy.linspace(0, 1, n + 1)`` does."""
    step = 1.0 / n_bins
    return [i * step for i in range(1, n_bins)]


def _bin_index(p: float, edges: list[float]) -> int:
    """The bin ``(lo, hi]`` holding ``p`` (0 in the first): the first inner edge ``>= p``."""
    return bisect.bisect_left(edges, p)


def _check_probs(probs: Sequence[float], other: Sequence[Any], what: str) -> None:
    if len(probs) != len(other):
        raise ValueError(f"{what}: got {len(probs)} probabilities and {len(other)} outcomes.")
    bad = [p for p in probs if not (0.0 <= p <= 1.0) or math.isnan(p)]
    if bad:
        raise ValueError(f"{what}: probabilities must lie in [0, 1], got {bad[0]!r}.")


# --------------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class CalibrationBin:
    """One bin of a reliability diagram."""

    lower: float
    upper: float
    count: int
    mean_predicted: float | None
    observed: float | None


def calibration_bins(probs: Sequence[float], outcomes: Sequence[float], n_bins: int = 10) -> list[CalibrationBin]:
    """Equal-width bins of predicted probability with the observed frequency (or accuracy) in each.

    ``outcomes`` are 0/1 (positive outcome for risks, correctness for confidences). Empty bins have
    ``count`` 0 and ``None`` means. This is what a reliability diagram plots.
    """
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1.")
    _check_probs(probs, outcomes, "calibration_bins")
    sums = [[0.0, 0.0, 0] for _ in range(n_bins)]
    edges = _bin_edges(n_bins)
    for p, y in zip(probs, outcomes, strict=True):
        b = sums[_bin_index(p, edges)]
        b[0] += p
        b[1] += float(y)
        b[2] += 1
    out = []
    for i, (sp, sy, n) in enumerate(sums):
        n = int(n)
        out.append(CalibrationBin(i / n_bins, (i + 1) / n_bins, n,
                                  sp / n if n else None, sy / n if n else None))
    return out


def _binned_gap(probs: Sequence[float], outcomes: Sequence[float], n_bins: int) -> float | None:
    if not probs:
        return None
    total = len(probs)
    return math.fsum(b.count / total * abs(b.mean_predicted - b.observed)  # type: ignore[operator]
                     for b in calibration_bins(probs, outcomes, n_bins) if b.count)


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool | int],
                               n_bins: int = 10) -> float | None:
    """ECE: sum over bins of (bin share) x |mean confidence - accuracy| in the bin.

    ``confidences`` are the probabilities of the predicted answers (for a binary risk ``p``, the
    confidence is ``max(p, 1 - p)``), ``correct`` whether each prediction was right.
    """
    return _binned_gap(confidences, [1.0 if c else 0.0 for c in correct], n_bins)


def risk_calibration_error(risks: Sequence[float], outcomes: Sequence[int], n_bins: int = 10) -> float | None:
    """Risk calibration error: sum over bins of (bin share) x |mean risk - positive rate| in the bin.

    Like ECE, but binned on the predicted probability of the positive class and compared with how
    often the positive class occurred, so it measures calibration of the risk itself.
    """
    return _binned_gap(risks, [float(y) for y in outcomes], n_bins)


def brier_score(risks: Sequence[float], outcomes: Sequence[int]) -> tuple[float | None, float | None]:
    """Brier score ``mean((risk - outcome)^2)`` and its standard error."""
    _check_probs(risks, outcomes, "brier_score")
    return mean_stderr([(p - float(y)) ** 2 for p, y in zip(risks, outcomes, strict=True)])


def roc_auc(scores: Sequence[float], outcomes: Sequence[int]) -> float | None:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative, ties counting one half (Mann-Whitney U). ``None`` unless both classes occur."""
    if len(scores) != len(outcomes):
        raise ValueError(f"roc_auc: got {len(scores)} scores and {len(outcomes)} outcomes.")
    _check_no_nan(scores, "roc_auc")
    pos = [s for s, y in zip(scores, outcomes, strict=True) if y]
    neg = [s for s, y in zip(scores, outcomes, strict=True) if not y]
    if not pos or not neg:
        return None
    # ranks with ties averaged
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        avg = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = avg
        i = j + 1
    rank_sum = math.fsum(r for r, y in zip(ranks, outcomes, strict=True) if y)
    n_pos, n_neg = len(pos), len(neg)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def roc_curve(scores: Sequence[float], outcomes: Sequence[int]) -> list[tuple[float, float]]:
    """ROC points ``(false positive rate, true positive rate)`` from (0, 0) to (1, 1), one per
    distinct score threshold (ties move diagonally). Empty unless both classes occur."""
    if len(scores) != len(outcomes):
        raise ValueError(f"roc_curve: got {len(scores)} scores and {len(outcomes)} outcomes.")
    _check_no_nan(scores, "roc_curve")
    n_pos = sum(1 for y in outcomes if y)
    n_neg = len(outcomes) - n_pos
    if not n_pos or not n_neg:
        return []
    pairs = sorted(zip(scores, outcomes, strict=True), key=lambda p: -p[0])
    points = [(0.0, 0.0)]
    tp = fp = 0
    i = 0
    while i < len(pairs):
        threshold = pairs[i][0]
        while i < len(pairs) and pairs[i][0] == threshold:
            tp += 1 if pairs[i][1] else 0
            fp += 0 if pairs[i][1] else 1
            i += 1
        points.append((fp / n_neg, tp / n_pos))
    return points


# --------------------------------------------------------------------------- regression
def regression_metrics(predicted: Sequence[float], actual: Sequence[float]) -> dict[str, float | None]:
    """MAE (with standard error), RMSE and R² of numeric predictions.

    R² is ``1 - SS_res / SS_tot`` with ``SS_tot`` around the mean of ``actual``; ``None`` when
    ``actual`` is constant or there are no values.
    """
    if len(predicted) != len(actual):
        raise ValueError(f"regression_metrics: got {len(predicted)} predictions and {len(actual)} values.")
    bad = [v for v in (*predicted, *actual) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"regression_metrics: values must be finite numbers, got {bad[0]!r}; "
                         "leave unparsed answers out (and count them) instead.")
    n = len(actual)
    if n == 0:
        return {"mae": None, "mae_stderr": None, "rmse": None, "r2": None}
    abs_err = [abs(p - a) for p, a in zip(predicted, actual, strict=True)]
    mae, mae_se = mean_stderr(abs_err)
    ss_res = math.fsum(e * e for e in abs_err)
    mean_a = math.fsum(actual) / n
    ss_tot = math.fsum((a - mean_a) ** 2 for a in actual)
    return {"mae": mae, "mae_stderr": mae_se, "rmse": math.sqrt(ss_res / n),
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else None}


# --------------------------------------------------------------------------- classification
def classification_metrics(actual: Sequence[Hashable], predicted: Sequence[Hashable],
                           labels: Sequence[Hashable] | None = None,
                           positive: Hashable | None = None) -> dict[str, Any]:
    """Accuracy, balanced accuracy, F1 and the confusion matrix of label predictions.

    ``labels`` orders the matrix (default: every label seen, true labels first, sorted as text);
    predictions outside ``labels`` get their own columns so nothing is dropped. Balanced accuracy is
    the mean recall over the true labels that occur. ``f1`` is the F1 of ``positive`` when given,
    else the macro F1 over the true labels that occur (a label never predicted has F1 0).
    Returns ``accuracy``, ``balanced_accuracy``, ``f1``, ``labels`` (row order = true, column
    order = predicted) and ``confusion`` (``confusion[i][j]``: true ``labels[i]`` predicted
    ``labels[j]``).
    """
    if len(actual) != len(predicted):
        raise ValueError(f"classification_metrics: got {len(actual)} labels and {len(predicted)} predictions.")
    _check_no_nan([*actual, *predicted], "classification_metrics")
    if labels is None:
        labels = sorted(set(actual), key=str)
    order = list(labels)
    for p in sorted(set(predicted) | set(actual), key=str):
        if p not in order:
            order.append(p)
    index = {lab: i for i, lab in enumerate(order)}
    cm = [[0] * len(order) for _ in order]
    for a, p in zip(actual, predicted, strict=True):
        cm[index[a]][index[p]] += 1
    n = len(actual)
    if n == 0:
        return {"accuracy": None, "balanced_accuracy": None, "f1": None, "labels": order, "confusion": cm}
    correct = sum(cm[i][i] for i in range(len(order)))
    present = [i for i, row in enumerate(cm) if sum(row)]
    recalls = [cm[i][i] / sum(cm[i]) for i in present]

    def f1_of(i: int) -> float:
        tp = cm[i][i]
        pred_n = sum(row[i] for row in cm)
        true_n = sum(cm[i])
        return 2 * tp / (pred_n + true_n) if (pred_n + true_n) else 0.0

    if positive is not None:
        f1 = f1_of(index[positive]) if positive in index else 0.0
    else:
        f1 = math.fsum(f1_of(i) for i in present) / len(present)
    return {"accuracy": correct / n, "balanced_accuracy": math.fsum(recalls) / len(recalls), "f1": f1,
            "labels": order, "confusion": cm}


# --------------------------------------------------------------------------- parsing answers
_NUMBER = re.compile(r"(?P<sign>[-+\u2212]?)(?:[$\u20ac\u00a3\u00a5]\s?(?P<sign2>[-+\u2212]?))?"
                     r"(?P<digits>(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?)")


def _number_value(m: re.Match[str]) -> float:
    """The value of a ``_NUMBER`` match: a sign before or after a currency symbol counts (``-$5`` and
    ``$-5`` are -5), as does the minus sign U+2212."""
    negative = "-" in (m.group("sign") + (m.group("sign2") or "")).replace("\u2212", "-")
    value = float(m.group("digits").replace(",", ""))
    return -value if negative else value


def parse_number(text: str | None) -> float | None:
    """The first number in ``text`` (``-1.5``, ``1,234``, ``3e-2``, ``.5``, ``-$5``), or None (also when it
    is past the floats, as ``1e999``)."""
    if not text:
        return None
    m = _NUMBER.search(text)
    if m is None:
        return None
    value = _number_value(m)
    return value if math.isfinite(value) else None


_PERCENT = re.compile(r"^\s*%")


def parse_probability(text: str | None) -> float | None:
    """A stated probability: the first number in ``text``, read as a percentage when followed by
    ``%`` (``"73%"`` -> 0.73); None when there is none or it lies outside [0, 1]."""
    if not text:
        return None
    m = _NUMBER.search(text)
    if m is None:
        return None
    value = _number_value(m)
    if not math.isfinite(value):
        return None
    if _PERCENT.match(text[m.end():]):
        value /= 100.0
    return value if 0.0 <= value <= 1.0 else None


# --------------------------------------------------------------------------- option tokens
#: Space and newline markers of byte-level BPE (``Ġ``, ``Ċ``) and sentencepiece (``▁``) tokens.
TOKEN_MARKERS = ("\u0120", "\u2581", "\u010a")


def normalize_token(token: str, ignore_case: bool = False) -> str:
    """A token's text without surrounding whitespace or tokenizer space markers (``Ġ1`` -> ``1``).

    Two tokens are variants of one answer option when their normalised texts are equal (``"1"``,
    ``" 1"``, ``"Ġ1"``); option scorers sum the probability of all variants.
    """
    t = token
    for marker in TOKEN_MARKERS:
        t = t.replace(marker, " ")
    t = t.strip()
    return t.lower() if ignore_case else t
