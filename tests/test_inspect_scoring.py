"""The scoring maths (cruijff_kit.scoring) against values computed by hand."""

from __future__ import annotations

import math

import pytest

from cruijff_kit import scoring


def test_mean_stderr() -> None:
    assert scoring.mean_stderr([]) == (None, None)
    assert scoring.mean_stderr([3.0]) == (3.0, 0.0)
    mean, se = scoring.mean_stderr([1.0, 2.0, 3.0, 6.0])
    # mean 3; deviations -2,-1,0,3 -> sum of squares 14; var 14/3; se sqrt(14/3/4)
    assert mean == 3.0
    assert se == pytest.approx(math.sqrt(14 / 3 / 4))


def test_expected_calibration_error_by_hand() -> None:
    conf = [0.95, 0.85, 0.62, 0.55]
    correct = [True, False, True, True]
    # ten bins: one sample per bin -> mean of |conf - acc| = (0.05 + 0.85 + 0.38 + 0.45) / 4
    assert scoring.expected_calibration_error(conf, correct) == pytest.approx(1.73 / 4)
    # two bins: all in [0.5, 1]: mean conf 2.97/4 = 0.7425, accuracy 0.75
    assert scoring.expected_calibration_error(conf, correct, n_bins=2) == pytest.approx(0.0075)
    assert scoring.expected_calibration_error([], []) is None


def test_risk_calibration_brier_auc_by_hand() -> None:
    risks = [0.1, 0.2, 0.8, 0.9, 0.75]
    outcomes = [0, 1, 1, 1, 0]
    # bin [0, .5): risks .1 .2 (mean .15), positives 1/2 -> gap .35, weight 2/5
    # bin [.5, 1]: risks .8 .9 .75 (mean 2.45/3), positives 2/3 -> gap .15, weight 3/5
    assert scoring.risk_calibration_error(risks, outcomes, n_bins=2) == pytest.approx(0.4 * 0.35 + 0.6 * 0.15)
    brier, se = scoring.brier_score(risks, outcomes)
    sq = [0.01, 0.64, 0.04, 0.01, 0.5625]
    assert brier == pytest.approx(sum(sq) / 5) == pytest.approx(0.2525)
    m = 0.2525
    assert se == pytest.approx(math.sqrt(sum((x - m) ** 2 for x in sq) / 4 / 5))
    # positives .2 .8 .9 vs negatives .1 .75: .2 beats .1; .8 and .9 beat both -> 5 of 6 pairs
    assert scoring.roc_auc(risks, outcomes) == pytest.approx(5 / 6)


def test_auc_ties_and_one_class() -> None:
    assert scoring.roc_auc([0.5, 0.5], [1, 0]) == 0.5
    assert scoring.roc_auc([0.3, 0.5, 0.5, 0.9], [0, 1, 0, 1]) == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    assert scoring.roc_auc([0.2, 0.4], [1, 1]) is None


def test_calibration_bins_edges() -> None:
    # bins (lo, hi], 0 in the first: 0.5 lies on an edge and belongs to (0.25, 0.5]
    bins = scoring.calibration_bins([0.0, 0.05, 1.0, 0.5], [0, 1, 1, 0], n_bins=4)
    assert [b.count for b in bins] == [2, 1, 0, 1]
    assert bins[0].mean_predicted == pytest.approx(0.025) and bins[0].observed == 0.5
    assert bins[1].mean_predicted == 0.5 and bins[1].observed == 0.0
    assert bins[2].mean_predicted is None and bins[2].observed is None
    assert bins[3].lower == 0.75 and bins[3].upper == 1.0 and bins[3].observed == 1.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        scoring.calibration_bins([1.2], [1])
    with pytest.raises(ValueError, match="2 probabilities and 1 outcomes"):
        scoring.brier_score([0.1, 0.2], [1])


def test_regression_metrics_by_hand() -> None:
    res = scoring.regression_metrics([2.0, 4.0, 7.0], [1.0, 5.0, 7.0])
    assert res["mae"] == pytest.approx(2 / 3)
    assert res["rmse"] == pytest.approx(math.sqrt(2 / 3))
    # SS_res = 2; mean actual 13/3; SS_tot = 56/3 -> R2 = 1 - 6/56
    assert res["r2"] == pytest.approx(1 - 6 / 56)
    assert res["mae_stderr"] == pytest.approx(math.sqrt(((1 / 3) ** 2 * 2 + (2 / 3) ** 2) / 2 / 3))
    assert scoring.regression_metrics([1.0, 2.0], [3.0, 3.0])["r2"] is None
    assert scoring.regression_metrics([], [])["mae"] is None


def test_classification_metrics_by_hand() -> None:
    actual = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", "c", "c"]
    res = scoring.classification_metrics(actual, pred)
    assert res["labels"] == ["a", "b", "c"]
    assert res["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert res["accuracy"] == pytest.approx(4 / 6)
    assert res["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # F1: a = 2*2/(2+3) = .8, b = 2*1/(2+2) = .5, c = 2*1/(2+1) = 2/3
    assert res["f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert scoring.classification_metrics(actual, pred, positive="a")["f1"] == pytest.approx(0.8)


def test_classification_keeps_unknown_predictions() -> None:
    res = scoring.classification_metrics(["yes", "no"], ["yes", "maybe"], labels=["yes", "no"])
    assert res["labels"] == ["yes", "no", "maybe"]
    assert res["confusion"] == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]
    assert res["accuracy"] == 0.5 and res["balanced_accuracy"] == 0.5


@pytest.mark.parametrize(("text", "number", "probability"), [
    ("0.73", 0.73, 0.73),
    ("73%", 73.0, 0.73),
    ("I'd say 25 %", 25.0, 0.25),
    ("about 1,234.5 units", 1234.5, None),
    ("-3e2", -300.0, None),
    (".5", 0.5, 0.5),
    ("no idea", None, None),
    ("", None, None),
])
def test_parsing(text: str, number: float | None, probability: float | None) -> None:
    assert scoring.parse_number(text) == number
    assert scoring.parse_probability(text) == probability
