"""The inspect evaluator's scorers through real inspect evals with inspect's `mockllm` model, the
results.json entry built from the real .eval logs, and the evaluator's option checks."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from inspect_fixtures import mock_eval, mock_output, scorer_metrics

from cruijff_kit import scoring

pytest.importorskip("inspect_ai")


def _output(text: str, top: list[tuple[str, float]] | None = None) -> Any:
    """A mockllm output answering ``text``, optionally with the first token's top probabilities."""
    return mock_output(text, None if top is None else [(top[0][0], [(t, math.log(p)) for t, p in top])])


def test_risk_sums_token_variants_and_reports_coverage(tmp_path: Path) -> None:
    from cruijff_kit_inspect.results import results_from_log
    from cruijff_kit_inspect.scorers import risk

    rows = [
        ("q1", "1", _output("1", [("1", 0.5), (" 1", 0.2), ("0", 0.1), ("\u01200", 0.1)])),
        ("q2", "0", _output("0", [("0", 0.6), ("1", 0.3)])),
        ("q3", "1", _output("0", [("0", 0.8), ("\n", 0.1)])),  # no "1" variant: not scored
        ("q4", "0", _output("1", [("1", 0.9), ("0", 0.05)])),
    ]
    log = mock_eval(rows, [risk()], tmp_path, logprobs=True, read_back=True)
    got = scorer_metrics(log, "risk")
    risks, outcomes = [0.7 / 0.9, 0.3 / 0.9, 0.9 / 0.95], [1, 0, 0]
    assert got["accuracy"] == pytest.approx(2 / 4)  # the unscored sample counts as wrong
    assert got["coverage"] == pytest.approx(3 / 4)
    assert got["n_unscored"] == 1
    assert got["mean_risk"] == pytest.approx(sum(risks) / 3)
    assert got["brier"] == pytest.approx(scoring.brier_score(risks, outcomes)[0])
    assert got["auc"] == pytest.approx(0.5)
    assert got["ece"] == pytest.approx(scoring.expected_calibration_error(
        [max(p, 1 - p) for p in risks], [True, True, False]))
    assert got["risk_calibration_error"] == pytest.approx(scoring.risk_calibration_error(risks, outcomes))
    q3 = next(s for s in log.samples if s.id == 3).scores["risk"]
    assert q3.value == "N" and q3.metadata["missing_options"] == ["1"]

    entry = results_from_log(log, tmp_path)
    assert entry["risk/coverage"] == {"value": got["coverage"], "stderr": None}
    assert entry["risk/accuracy"]["stderr"] == pytest.approx(got["stderr"])
    assert entry["risk/mean_risk"]["stderr"] == pytest.approx(got["mean_risk_stderr"])
    assert "risk/stderr" not in entry and "risk/mean_risk_stderr" not in entry
    assert entry["headline"] == "risk/accuracy"
    bins = entry["calibration"]["risk"]  # reliability diagram of the scored samples
    assert len(bins) == 10 and sum(b["count"] for b in bins) == 3
    assert bins[9]["mean_predicted"] == pytest.approx(0.9 / 0.95) and bins[9]["observed"] == 0.0
    from cruijff_kit._summaries.summarize import flatten_metrics

    assert set(flatten_metrics(entry)) == {k for k, v in entry.items() if isinstance(v, dict) and "value" in v}
    assert entry["samples"] == 4 and not Path(entry["log"]).is_absolute()


def test_numeric_risk_continuous_and_classification(tmp_path: Path) -> None:
    from cruijff_kit_inspect.results import results_from_log
    from cruijff_kit_inspect.scorers import classification, continuous, numeric_risk

    rows = [("a", "1", _output("0.8")), ("b", "0", _output("30%")), ("c", "1", _output("I think 0.25")),
            ("d", "0", _output("no idea"))]
    got = scorer_metrics(mock_eval(rows, [numeric_risk()], tmp_path / "nr"), "numeric_risk")
    assert got["coverage"] == pytest.approx(0.75)
    assert got["accuracy"] == pytest.approx(2 / 4)
    assert got["brier"] == pytest.approx(scoring.brier_score([0.8, 0.3, 0.25], [1, 0, 1])[0])

    rows = [("a", "40", _output("42")), ("b", "10", _output("about 10.5 units")), ("c", "3", _output("n/a"))]
    got = scorer_metrics(mock_eval(rows, [continuous()], tmp_path / "c"), "continuous")
    assert got["parse_rate"] == pytest.approx(2 / 3)
    assert got["mae"] == pytest.approx(1.25)
    assert got["rmse"] == pytest.approx(math.sqrt((4 + 0.25) / 2))
    assert got["r2"] == pytest.approx(1 - 4.25 / 450)

    rows = [("a", "yes", _output("Yes.")), ("b", "yes", _output("no")), ("c", "no", _output("maybe")),
            ("d", "no", _output("YES"))]
    log = mock_eval(rows, [classification(labels=["yes", "no"])], tmp_path / "cl", epochs=2)
    got = scorer_metrics(log, "classification")
    assert got["accuracy"] == pytest.approx(0.25)
    assert got["balanced_accuracy"] == pytest.approx((0.5 + 0) / 2)
    assert got["confusion/no/yes"] == 1 and got["confusion/no/other"] == 1 and got["confusion/yes/no"] == 1
    entry = results_from_log(log, tmp_path)
    assert entry["confusion_matrix"]["classification"] == {"labels": ["yes", "no", "other"],  # "maybe" is off-label
                                                           "matrix": [[1, 1, 0], [1, 0, 1], [0, 0, 0]]}
    assert entry["samples"] == 8  # two epochs; the metrics count each sample once


def test_every_configured_scorer_is_reported_and_logprobs_turn_on(tmp_path: Path) -> None:
    from cruijff_kit_inspect.config import InspectConfig
    from cruijff_kit_inspect.evaluator import generate_args
    from cruijff_kit_inspect.results import metric_values, results_from_log
    from cruijff_kit_inspect.tasks import build_scorers

    cfg = InspectConfig.model_validate({
        "task": "exact-match",
        "scorers": [{"name": "match", "ignore_case": True}, {"name": "match", "location": "begin"}, "includes",
                    "risk"],
    })
    args = generate_args(cfg, seed=7, local=False)
    assert args["logprobs"] is True and args["top_logprobs"] == 20
    assert args["temperature"] == 0.0 and args["seed"] == 7  # greedy by default
    rows = [("q1", "Paris", _output("paris is it", [("paris", 0.9)])),
            ("q2", "Rome", _output("rome", [("rome", 0.9)]))]
    seen: list[Any] = []
    log = mock_eval(rows, build_scorers(cfg), tmp_path, seen=seen, **args)
    assert all(c.logprobs is True for c in seen)
    entry = results_from_log(log, tmp_path)
    assert entry["scorers"] == ["match", "match1", "includes", "risk"]
    m = metric_values(entry)
    assert m["match/accuracy"] == 0.5  # exact, ignoring case: "rome" only
    assert m["match1/accuracy"] == 0.0  # begins with, case-sensitive (the default): neither
    assert m["includes/accuracy"] == 1.0
    assert m["risk/coverage"] == 0.0  # targets are not the options 0/1: reported, not dropped


def test_model_api_is_registered_with_inspect() -> None:
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="inspect_ai") if ep.value == "cruijff_kit_inspect._registry"]
    assert eps, "the inspect_ai entry point is not installed"
    from inspect_ai._util.registry import registry_find, registry_unqualified_name

    eps[0].load()
    found = registry_find(lambda info: info.type == "modelapi" and registry_unqualified_name(info) == "ck")
    assert found


# --------------------------------------------------------------------------- option checks
@pytest.mark.parametrize(("options", "message"), [
    ({"task": "exact-match", "scorers": ["risk"], "generation": {"logprobs": False}}, "reads log-probabilities"),
    ({"task": "exact-match", "generation": {"sample": True}}, "needs a temperature"),
    ({"task": "exact-match", "generation": {"temperature": 0.5}}, "only when sampling"),
    ({"task": "exact-macth"}, "Did you mean `exact-match`"),
    ({"task": "tasks.py"}, "unknown task"),
    ({"task": "exact-match", "scorers": ["risky"]}, "Did you mean `risk`"),
    ({"task": "exact-match", "scorers": ["choice"]}, "needs task: choice"),
    ({"task": "model-graded"}, "needs a grader"),
    ({"task": "includes", "task_args": {"x": 1}}, "user task files only"),
    ({"task": "includes", "model": "gpt4"}, "not an inspect model string"),
    ({"task": "includes", "model_args": {"x": 1}}, "apply to `model`"),
    ({"task": "includes", "model": "openai/gpt-4o", "model_args": {"api_key": "sk-1"}}, "environment"),
    ({"task": "includes", "scorers": [{"name": "risk", "options": ["1"]}]}, "at least 2"),
    ({"task": "includes", "bogus": 1}, "Extra inputs"),
])
def test_bad_options(options: dict[str, Any], message: str) -> None:
    from cruijff_kit_inspect.config import InspectConfig
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        InspectConfig.model_validate(options)


def test_model_for_each_backend() -> None:
    from cruijff_kit_inspect.config import InspectConfig
    from cruijff_kit_inspect.evaluator import model_for

    cfg: Callable[..., InspectConfig] = lambda **kw: InspectConfig.model_validate({"task": "includes", **kw})  # noqa: E731
    name, args = model_for(cfg(batch_size=4, dtype="float32"), "/m", Path("/a"))
    assert name == "ck//m" and args == {"device": "auto", "dtype": "float32", "batch_size": 4,
                                        "do_sample": False, "adapter": "/a"}
    assert model_for(cfg(backend="vllm"), "/m", Path("/a")) == ("vllm//m:/a", {})
    assert model_for(cfg(model="openai/gpt-4o-mini", model_args={"responses_api": False}), "/m", None) == (
        "openai/gpt-4o-mini", {"responses_api": False})
