"""``cruijff_kit.scoring`` against scikit-learn (and scipy), on seeded random inputs with ties, exact 0
and 1 probabilities and probabilities on bin edges; plus NaN, empty and single-class inputs.

Every expected number comes from scikit-learn or scipy, never from the module under test. Where the
two differ on purpose, the difference is the one docs/evaluation.md states ("Where numbers differ
from scikit-learn"), and the test checks it explicitly.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
from scipy import stats  # comes with scikit-learn
from sklearn import metrics  # a dev dependency (requirements-dev.txt): missing, the tests fail, not skip
from sklearn.calibration import calibration_curve
from sklearn.exceptions import UndefinedMetricWarning

from cruijff_kit import scoring

SEEDS = [0, 1, 2, 3]
NAN = float("nan")


# --------------------------------------------------------------------------- inputs
def random_risks(seed: int, n: int = 300) -> tuple[list[float], list[int]]:
    """Risks and 0/1 outcomes: half drawn from a grid of 21 values (ties, exact 0 and 1, bin edges of
    4, 5, 10 and 20 bins), half uniform; outcomes drawn from the risk, 15 % flipped (so a risk of 0 or
    1 is sometimes wrong)."""
    rng = np.random.default_rng(seed)
    grid = np.round(np.linspace(0.0, 1.0, 21), 2)
    probs = np.where(rng.random(n) < 0.5, rng.choice(grid, n), rng.random(n))
    outcomes = (rng.random(n) < probs).astype(int)
    flip = rng.random(n) < 0.15
    outcomes = np.where(flip, 1 - outcomes, outcomes)
    assert {0.0, 1.0} <= set(probs.tolist()) and len(set(probs.tolist())) < n  # exact 0/1 and ties
    return probs.tolist(), outcomes.tolist()


def random_labels(seed: int, n: int = 200) -> tuple[list[str], list[str]]:
    """True labels from a, b, c, d (d rare) and predictions that are right 60 % of the time, else any of
    a, b, c, d or ``zz`` (a label no sample has)."""
    rng = np.random.default_rng(100 + seed)
    actual = rng.choice(["a", "b", "c", "d"], n, p=[0.4, 0.3, 0.25, 0.05]).tolist()
    wrong = rng.choice(["a", "b", "c", "d", "zz"], n).tolist()
    predicted = [a if rng.random() < 0.6 else w for a, w in zip(actual, wrong, strict=True)]
    return actual, predicted


def flat(rows: list[tuple[Any, ...]]) -> list[Any]:
    """``[(a, b), (c, d)]`` -> ``[a, b, c, d]`` (``pytest.approx`` compares flat lists only)."""
    return [x for row in rows for x in row]


# --------------------------------------------------------------------------- scikit-learn's bins
def sklearn_bin_counts(probs: list[float], n_bins: int) -> list[int]:
    """How many probabilities ``calibration_curve(strategy="uniform")`` puts in each bin.

    ``calibration_curve`` returns fractions, not counts; a count comes from its own assignment: add one
    positive sample at the middle of bin ``b`` to all-negative ones, and the fraction of positives in
    that bin (the only non-zero one) is ``1 / (count + 1)``."""
    counts = []
    for b in range(n_bins):
        y = [0] * len(probs) + [1]
        frac, _ = calibration_curve(y, [*probs, (b + 0.5) / n_bins], n_bins=n_bins, strategy="uniform")
        counts.append(round(1.0 / frac.max()) - 1)
    return counts


def sklearn_bins(probs: list[float], outcomes: list[int], n_bins: int) -> list[tuple[int, float, float]]:
    """(count, mean predicted, observed frequency) of each non-empty bin, by ``calibration_curve``."""
    prob_true, prob_pred = calibration_curve(outcomes, probs, n_bins=n_bins, strategy="uniform")
    counts = [c for c in sklearn_bin_counts(probs, n_bins) if c]
    assert len(counts) == len(prob_true)
    return list(zip(counts, prob_pred.tolist(), prob_true.tolist(), strict=True))


def sklearn_ece(probs: list[float], outcomes: list[int], n_bins: int) -> float:
    """Sum over ``calibration_curve``'s bins of (bin share) x |mean predicted - observed|."""
    return sum(c / len(probs) * abs(pred - true) for c, pred, true in sklearn_bins(probs, outcomes, n_bins))


# --------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_bins", [1, 3, 4, 5, 7, 10, 20])
def test_calibration_bins_equal_calibration_curve(seed: int, n_bins: int) -> None:
    probs, outcomes = random_risks(seed)
    ours = [(b.count, b.mean_predicted, b.observed) for b in scoring.calibration_bins(probs, outcomes, n_bins)]
    assert sum(c for c, _, _ in ours) == len(probs)
    expected = sklearn_bins(probs, outcomes, n_bins)
    nonempty = [b for b in ours if b[0]]
    assert [c for c, _, _ in nonempty] == [c for c, _, _ in expected]
    assert flat([(p, o) for _, p, o in nonempty]) == pytest.approx(flat([(p, o) for _, p, o in expected]),
                                                                   rel=1e-12, abs=1e-15)
    for c, p, o in ours:  # an empty bin has no means (calibration_curve leaves it out)
        assert c or (p is None and o is None)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_risk_and_expected_calibration_errors_from_calibration_curve(seed: int, n_bins: int) -> None:
    risks, outcomes = random_risks(seed)
    assert scoring.risk_calibration_error(risks, outcomes, n_bins) == pytest.approx(
        sklearn_ece(risks, outcomes, n_bins), rel=1e-12, abs=1e-15)
    # ECE: binned on the confidence of the predicted answer, against whether it was right
    confidences = [max(p, 1 - p) for p in risks]
    correct = [int((p >= 0.5) == bool(y)) for p, y in zip(risks, outcomes, strict=True)]
    assert scoring.expected_calibration_error(confidences, [bool(c) for c in correct], n_bins) == pytest.approx(
        sklearn_ece(confidences, correct, n_bins), rel=1e-12, abs=1e-15)


# --------------------------------------------------------------------------- Brier, mean and standard error
@pytest.mark.parametrize("seed", SEEDS)
def test_brier_score_and_its_stderr(seed: int) -> None:
    risks, outcomes = random_risks(seed)
    brier, se = scoring.brier_score(risks, outcomes)
    assert brier == pytest.approx(metrics.brier_score_loss(outcomes, risks), rel=1e-12)
    squared = (np.asarray(risks) - np.asarray(outcomes)) ** 2
    assert se == pytest.approx(stats.sem(squared, ddof=1), rel=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_mean_stderr_is_scipys_sem(seed: int) -> None:
    values = np.random.default_rng(seed).normal(3.0, 2.0, 50).round(1).tolist()  # rounded: ties
    mean, se = scoring.mean_stderr(values)
    assert mean == pytest.approx(float(np.mean(values)), rel=1e-12)
    assert se == pytest.approx(stats.sem(values, ddof=1), rel=1e-12)
    # documented difference: one value has a standard error of 0 (inspect-ai's convention), scipy's is NaN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(stats.sem([2.5], ddof=1))
    assert scoring.mean_stderr([2.5]) == (2.5, 0.0)


# --------------------------------------------------------------------------- ROC
@pytest.mark.parametrize("seed", SEEDS)
def test_roc_auc_and_curve_equal_sklearn(seed: int) -> None:
    risks, outcomes = random_risks(seed)
    assert scoring.roc_auc(risks, outcomes) == pytest.approx(metrics.roc_auc_score(outcomes, risks), rel=1e-12)
    fpr, tpr, _ = metrics.roc_curve(outcomes, risks, drop_intermediate=False)  # one point per distinct score
    ours = scoring.roc_curve(risks, outcomes)
    assert len(ours) == len(fpr)
    assert flat(ours) == pytest.approx(flat(list(zip(fpr.tolist(), tpr.tolist(), strict=True))), rel=1e-12, abs=1e-15)
    # scores that are not probabilities (logits, with ties) rank the same way
    logits = [round(math.log(p / (1 - p)), 1) if 0 < p < 1 else (-9.0 if p == 0 else 9.0) for p in risks]
    assert scoring.roc_auc(logits, outcomes) == pytest.approx(metrics.roc_auc_score(outcomes, logits), rel=1e-12)


# --------------------------------------------------------------------------- regression
@pytest.mark.parametrize("seed", SEEDS)
def test_regression_metrics_equal_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    actual = rng.integers(-5, 20, 80).astype(float)  # integers: tied values
    predicted = np.where(rng.random(80) < 0.3, actual, actual + rng.normal(0, 3, 80).round(1))  # some exact
    got = scoring.regression_metrics(predicted.tolist(), actual.tolist())
    assert got["mae"] == pytest.approx(metrics.mean_absolute_error(actual, predicted), rel=1e-12)
    assert got["mae_stderr"] == pytest.approx(stats.sem(np.abs(predicted - actual), ddof=1), rel=1e-12)
    assert got["rmse"] == pytest.approx(metrics.root_mean_squared_error(actual, predicted), rel=1e-12)
    assert got["r2"] == pytest.approx(metrics.r2_score(actual, predicted), rel=1e-12)


def test_r2_of_a_constant_truth_is_none_where_sklearn_forces_0_or_1() -> None:
    # documented difference: R² is undefined when the truth does not vary; r2_score returns 1.0 for a
    # perfect prediction and 0.0 otherwise (force_finite=True)
    assert metrics.r2_score([3.0, 3.0], [1.0, 2.0]) == 0.0 and metrics.r2_score([3.0, 3.0], [3.0, 3.0]) == 1.0
    assert scoring.regression_metrics([1.0, 2.0], [3.0, 3.0])["r2"] is None
    assert scoring.regression_metrics([3.0, 3.0], [3.0, 3.0])["r2"] is None
    one = scoring.regression_metrics([1.0], [3.0])  # one value: MAE and RMSE defined, R² not
    assert (one["mae"], one["mae_stderr"], one["rmse"], one["r2"]) == (2.0, 0.0, 2.0, None)


# --------------------------------------------------------------------------- classification
@pytest.mark.parametrize("seed", SEEDS)
def test_classification_metrics_equal_sklearn(seed: int) -> None:
    actual, predicted = random_labels(seed)
    got = scoring.classification_metrics(actual, predicted)
    present = sorted(set(actual))
    assert "zz" in predicted and "zz" not in actual
    assert got["labels"] == [*present, "zz"]
    assert got["confusion"] == metrics.confusion_matrix(actual, predicted, labels=got["labels"]).tolist()
    assert got["accuracy"] == pytest.approx(metrics.accuracy_score(actual, predicted), rel=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true": the recall of zz is left out
        assert got["balanced_accuracy"] == pytest.approx(metrics.balanced_accuracy_score(actual, predicted), rel=1e-12)
    # macro F1 over the true labels that occur; sklearn's default also averages zz (F1 0): documented difference
    assert got["f1"] == pytest.approx(metrics.f1_score(actual, predicted, labels=present, average="macro"), rel=1e-12)
    sk_default = metrics.f1_score(actual, predicted, average="macro", zero_division=0)
    assert sk_default == pytest.approx(got["f1"] * len(present) / (len(present) + 1), rel=1e-12)
    for positive in ("a", "d", "zz", "never"):  # the F1 of one label; 0 for a label nothing has
        ours = scoring.classification_metrics(actual, predicted, positive=positive)["f1"]
        assert ours == pytest.approx(metrics.f1_score(actual, predicted, labels=[positive], average="macro",
                                                      zero_division=0.0), rel=1e-12, abs=0.0), positive
    ordered = scoring.classification_metrics(actual, predicted, labels=["d", "c", "b", "a"])
    assert ordered["labels"] == ["d", "c", "b", "a", "zz"]
    assert ordered["confusion"] == metrics.confusion_matrix(actual, predicted, labels=ordered["labels"]).tolist()


# --------------------------------------------------------------------------- one class only
def test_one_class_only() -> None:
    risks = [0.0, 0.2, 0.2, 0.7, 1.0]
    for y in (0, 1):
        outcomes = [y] * len(risks)
        # defined: Brier and calibration, the same numbers as sklearn's
        assert scoring.brier_score(risks, outcomes)[0] == pytest.approx(metrics.brier_score_loss(outcomes, risks))
        assert scoring.risk_calibration_error(risks, outcomes, 5) == pytest.approx(sklearn_ece(risks, outcomes, 5))
        ours = [(b.count, b.mean_predicted, b.observed) for b in scoring.calibration_bins(risks, outcomes, 5) if b.count]
        assert flat(ours) == pytest.approx(flat(sklearn_bins(risks, outcomes, 5)))
        # undefined: AUC and the ROC curve. sklearn warns and returns NaN (curve: NaN rates); ours: None, []
        with pytest.warns(UndefinedMetricWarning):
            assert math.isnan(metrics.roc_auc_score(outcomes, risks))
        with pytest.warns(UndefinedMetricWarning):
            fpr, tpr, _ = metrics.roc_curve(outcomes, risks)
        assert np.isnan(fpr).all() or np.isnan(tpr).all()
        assert scoring.roc_auc(risks, outcomes) is None
        assert scoring.roc_curve(risks, outcomes) == []
    # one true label: balanced accuracy is its recall, as sklearn's (which warns of the other predicted labels)
    actual, predicted = ["x"] * 4, ["x", "x", "y", "x"]
    got = scoring.classification_metrics(actual, predicted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert got["balanced_accuracy"] == pytest.approx(metrics.balanced_accuracy_score(actual, predicted)) == 0.75
    assert got["f1"] == pytest.approx(metrics.f1_score(actual, predicted, labels=["x"], average="macro"))


# --------------------------------------------------------------------------- no samples
def test_no_samples_give_none_where_sklearn_raises() -> None:
    for fn in (lambda: metrics.roc_auc_score([], []), lambda: metrics.brier_score_loss([], []),
               lambda: metrics.mean_absolute_error([], []), lambda: metrics.accuracy_score([], [])):
        with pytest.raises(ValueError):
            fn()
    assert scoring.mean_stderr([]) == (None, None)
    assert scoring.brier_score([], []) == (None, None)
    assert scoring.expected_calibration_error([], []) is None
    assert scoring.risk_calibration_error([], []) is None
    assert scoring.roc_auc([], []) is None and scoring.roc_curve([], []) == []
    assert [(b.count, b.mean_predicted, b.observed) for b in scoring.calibration_bins([], [], 4)] == [(0, None, None)] * 4
    assert scoring.regression_metrics([], []) == {"mae": None, "mae_stderr": None, "rmse": None, "r2": None}
    assert scoring.classification_metrics([], []) == {"accuracy": None, "balanced_accuracy": None, "f1": None,
                                                      "labels": [], "confusion": []}


# --------------------------------------------------------------------------- NaN
@pytest.mark.timeout(10)  # roc_curve once looped forever on NaN
@pytest.mark.parametrize(("name", "call"), [
    ("mean_stderr", lambda: scoring.mean_stderr([1.0, NAN, 2.0])),
    ("brier_score", lambda: scoring.brier_score([0.2, NAN], [0, 1])),
    ("calibration_bins", lambda: scoring.calibration_bins([0.2, NAN], [0, 1])),
    ("calibration_bins", lambda: scoring.expected_calibration_error([0.6, NAN], [True, False])),
    ("calibration_bins", lambda: scoring.risk_calibration_error([NAN, 0.3], [0, 1])),
    ("roc_auc", lambda: scoring.roc_auc([0.1, NAN, 0.3, 0.9], [0, 1, 0, 1])),
    ("roc_curve", lambda: scoring.roc_curve([0.1, NAN, 0.3, 0.9], [0, 1, 0, 1])),
    ("regression_metrics", lambda: scoring.regression_metrics([1.0, NAN], [1.0, 2.0])),
    ("regression_metrics", lambda: scoring.regression_metrics([1.0, 2.0], [NAN, 2.0])),
    ("regression_metrics", lambda: scoring.regression_metrics([float("inf"), 2.0], [1.0, 2.0])),  # inf - inf is NaN
    ("classification_metrics", lambda: scoring.classification_metrics([NAN, "a"], ["a", float("nan")])),
])
def test_nan_is_refused_never_averaged_or_ranked(name: str, call: Any) -> None:
    """sklearn raises "Input contains NaN" for these (its calibration_curve alone returns a NaN bin
    mean); ours raises a ValueError naming the function (the calibration errors: the bins they are
    computed from), never returning a number."""
    with pytest.raises(ValueError, match=name):
        call()


def test_sklearn_refuses_nan_too() -> None:
    with pytest.raises(ValueError, match="NaN"):
        metrics.roc_auc_score([0, 1, 0, 1], [0.1, NAN, 0.3, 0.9])
    with pytest.raises(ValueError, match="NaN"):
        metrics.mean_absolute_error([1.0, 2.0], [1.0, NAN])


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_risk_summary_leaves_nan_risks_out_and_equals_sklearn_on_the_rest(seed: int) -> None:
    """The documented rule one level up: ``risk_summary`` counts a NaN risk unscored, and its metrics
    are scikit-learn's on the scored samples only."""
    pytest.importorskip("inspect_ai")
    from cruijff_kit_inspect.scorers import _risk_metrics
    from inspect_ai.scorer import SampleScore, Score

    risks, outcomes = random_risks(seed, 120)
    nan_at = set(range(0, 120, 7))
    scores = [SampleScore(score=Score(value=1, metadata={"risk": NAN if i in nan_at else r, "outcome": y}), sample_id=i)
              for i, (r, y) in enumerate(zip(risks, outcomes, strict=True))]
    got = _risk_metrics(scores)
    kept = [i for i in range(120) if i not in nan_at]
    r = [risks[i] for i in kept]
    y = [outcomes[i] for i in kept]
    assert (got["n_scored"], got["n_unscored"]) == (len(kept), len(nan_at))
    assert got["brier"] == pytest.approx(metrics.brier_score_loss(y, r), rel=1e-12)
    assert got["auc"] == pytest.approx(metrics.roc_auc_score(y, r), rel=1e-12)
    assert got["mean_risk"] == pytest.approx(float(np.mean(r)), rel=1e-12)
    assert got["risk_calibration_error"] == pytest.approx(sklearn_ece(r, y, 10), rel=1e-12)
