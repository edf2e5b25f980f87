"""Scoring conventions that change numbers: calibration bin edges and signs of parsed numbers.

Expected bins come from scikit-learn's own ``calibration_curve`` and by hand (tests/test_trust_scoring_sklearn.py
cross-checks every metric of the module against scikit-learn).
"""

from __future__ import annotations

import random

import pytest
from sklearn.calibration import calibration_curve  # a dev dependency (requirements-dev.txt): no skip

from cruijff_kit import scoring


def sklearn_bins(probs: list[float], n_bins: int) -> list[int]:
    """Bin counts as scikit-learn's ``calibration_curve(strategy="uniform")`` assigns them.

    It returns fractions, not counts: with one positive sample added at the middle of bin ``b`` and every
    other sample negative, the fraction of positives in that bin (the only non-zero one) is
    ``1 / (count + 1)``."""
    counts = []
    for b in range(n_bins):
        frac, _ = calibration_curve([0] * len(probs) + [1], [*probs, (b + 0.5) / n_bins], n_bins=n_bins,
                                    strategy="uniform")
        counts.append(round(1.0 / frac.max()) - 1)
    return counts


@pytest.mark.parametrize("n_bins", [1, 3, 4, 5, 7, 10, 15, 20])
def test_calibration_bins_agree_with_sklearns_assignment(n_bins: int) -> None:
    rng = random.Random(n_bins)
    edges = [i / n_bins for i in range(n_bins + 1)] + [k / 100 for k in range(101)]
    probs = edges + [rng.random() for _ in range(300)]
    ours = [b.count for b in scoring.calibration_bins(probs, [1] * len(probs), n_bins)]
    assert ours == sklearn_bins(probs, n_bins)


def test_a_probability_on_an_edge_goes_to_the_lower_bin() -> None:
    # by hand, 10 bins (lo, hi]: 0.3 -> (0.2, 0.3], 0.5 -> (0.4, 0.5], 0.7 -> (0.6, 0.7], 0 -> first, 1 -> last
    bins = scoring.calibration_bins([0.0, 0.3, 0.5, 0.7, 1.0], [0, 1, 1, 0, 1], 10)
    assert [i for i, b in enumerate(bins) if b.count] == [0, 2, 4, 6, 9]


def test_ece_of_stated_probabilities_uses_the_lower_bins() -> None:
    # 0.3 answered right, 0.3 wrong, 0.7 right twice: with (lo, hi] bins 0.3 and 0.7 sit in two bins:
    # |0.3 - 0.5| * 2/4 + |0.7 - 1.0| * 2/4 = 0.1 + 0.15 = 0.25
    ece = scoring.expected_calibration_error([0.3, 0.3, 0.7, 0.7], [True, False, True, True], 10)
    assert ece == pytest.approx(0.25)
    # five bins: 0.3 -> (0.2, 0.4], 0.4 -> (0.2, 0.4] too (on its edge); [0.2] alone in [0, 0.2]
    ece5 = scoring.expected_calibration_error([0.2, 0.3, 0.4], [True, True, False], 5)
    # bin 0: {0.2} gap |0.2 - 1| = 0.8; bin 1: {0.3, 0.4} mean 0.35, accuracy 0.5, gap 0.15
    assert ece5 == pytest.approx(0.8 / 3 + 0.15 * 2 / 3)


@pytest.mark.parametrize(("text", "number"), [
    ("-$5", -5.0),
    ("$-5", -5.0),
    ("a loss of -€1,200.50", -1200.5),
    ("\u22123", -3.0),
    ("$5", 5.0),
    ("+£7", 7.0),
    ("costs $ 12", 12.0),
])
def test_parsed_numbers_keep_their_sign(text: str, number: float) -> None:
    assert scoring.parse_number(text) == number
