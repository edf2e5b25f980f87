"""Scorers never hide a bad input, and an OpenAI-compatible endpoint is evaluated as documented.

Real inspect evals (inspect's ``mockllm`` answering with prepared outputs and log-probabilities, read
back from the real ``.eval`` logs) with metrics computed by hand; and the real ``ck eval`` against a
real HTTP server on 127.0.0.1 speaking the OpenAI API (``tests/fake_openai.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from inspect_fixtures import mock_eval, mock_output, scorer_metrics

pytest.importorskip("inspect_ai")


# --------------------------------------------------------------------------- helpers
def _score(log: Any, sample_id: int, scorer: str) -> Any:
    return next(s for s in log.samples if s.id == sample_id).scores[scorer]


LN = math.log


# --------------------------------------------------------------------------- NaN / invalid probabilities
def test_nan_and_above_one_probabilities_are_unscored_never_averaged(tmp_path: Path) -> None:
    """A NaN log-probability, or one above 0 (a probability of e^0.3 = 1.35), makes the sample unscored
    with its reason; the metrics average the two valid samples only."""
    from cruijff_kit_inspect.results import results_from_log
    from cruijff_kit_inspect.scorers import risk

    rows = [
        ("q1", "1", mock_output(tokens=[("1", [("1", LN(0.6)), ("0", LN(0.2))])])),            # risk 0.75
        ("q2", "1", mock_output(tokens=[("1", [("1", float("nan")), ("0", LN(0.2))])])),       # NaN
        ("q3", "0", mock_output(tokens=[("0", [("0", LN(0.5)), ("1", 0.3)])])),                # P("1") = 1.35
        ("q4", "0", mock_output(tokens=[("0", [("0", LN(0.9)), ("1", LN(0.1))])])),            # risk 0.1
    ]
    log = mock_eval(rows, [risk()], tmp_path, logprobs=True, read_back=True)
    got = scorer_metrics(log, "risk")
    assert got["n_unscored"] == 2 and got["n_scored"] == 2 and got["coverage"] == pytest.approx(0.5)
    assert got["accuracy"] == pytest.approx(2 / 4)                      # unscored samples count as wrong
    assert got["mean_risk"] == pytest.approx((0.75 + 0.1) / 2)
    assert got["brier"] == pytest.approx((0.25 ** 2 + 0.1 ** 2) / 2)      # (0.75-1)^2, (0.1-0)^2
    assert got["auc"] == pytest.approx(1.0)
    for sid in (2, 3):
        score = _score(log, sid, "risk")
        assert score.value == "N" and score.metadata["risk"] is None
        assert "not a number or above 0" in score.metadata["reason"]
    entry = results_from_log(log, tmp_path)
    assert entry["risk/n_unscored"]["value"] == 2
    assert sum(b["count"] for b in entry["calibration"]["risk"]) == 2


def test_nan_or_missing_risk_in_metadata_is_counted_unscored(tmp_path: Path) -> None:
    """``risk_summary`` in a user's scorer: a NaN or missing risk is counted unscored, not averaged
    (nor does it break the metrics); so do the calibration bins of the results entry."""
    from cruijff_kit_inspect.results import results_from_log
    from cruijff_kit_inspect.scorers import risk_summary
    from inspect_ai.scorer import CORRECT, Score, scorer

    stated = {"a": (0.8, 1), "b": (float("nan"), 0), "c": (None, 1), "d": (0.3, 0)}

    @scorer(metrics=[risk_summary()])
    def my_risk() -> Any:
        async def score(state: Any, target: Any) -> Any:
            r, y = stated[state.input_text]
            return Score(value=CORRECT, metadata={"risk": r, "outcome": y, "correct": r is not None and (r >= 0.5) == y})

        return score

    rows = [(p, "x", mock_output("ok")) for p in stated]
    log = mock_eval(rows, [my_risk()], tmp_path, read_back=True)
    got = scorer_metrics(log, "my_risk")
    assert got["n_scored"] == 2 and got["n_unscored"] == 2
    assert got["mean_risk"] == pytest.approx((0.8 + 0.3) / 2)
    assert got["brier"] == pytest.approx((0.2 ** 2 + 0.3 ** 2) / 2)
    entry = results_from_log(log, tmp_path)
    assert sum(b["count"] for b in entry["calibration"]["my_risk"]) == 2


# --------------------------------------------------------------------------- off-label answers
def test_off_label_answers_go_to_one_other_column(tmp_path: Path) -> None:
    """With labels [yes, no]: "maybe" and "I don't know" are both counted in `other`; a target that
    is no label is not scored."""
    from cruijff_kit_inspect.results import results_from_log
    from cruijff_kit_inspect.scorers import classification

    rows = [("a", "yes", mock_output("Yes.")), ("b", "yes", mock_output("maybe")),
            ("c", "no", mock_output("No")), ("d", "no", mock_output("I don't know")),
            ("e", "unsure", mock_output("yes"))]
    log = mock_eval(rows, [classification(labels=["yes", "no"])], tmp_path, read_back=True)
    got = scorer_metrics(log, "classification")
    # scored: (yes, yes), (yes, other), (no, no), (no, other)
    assert got["n_unscored"] == 1
    assert got["accuracy"] == pytest.approx(2 / 4)
    assert got["balanced_accuracy"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert got["f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)     # each label: 2*1 / (1 predicted + 2 true)
    assert got["confusion/yes/other"] == 1 and got["confusion/no/other"] == 1
    assert not [k for k in got if k.startswith("confusion/") and k.split("/")[2] not in ("yes", "no", "other")]
    assert _score(log, 5, "classification").value == "N"
    assert _score(log, 2, "classification").metadata["answer"] == "maybe"   # the raw answer is kept
    entry = results_from_log(log, tmp_path)
    assert entry["confusion_matrix"]["classification"] == {"labels": ["yes", "no", "other"],
                                                           "matrix": [[1, 0, 1], [0, 1, 1], [0, 0, 0]]}


# --------------------------------------------------------------------------- reasoning models
def test_answers_are_read_after_the_thinking_block(tmp_path: Path) -> None:
    """A `<think>` first token is not the answer: risk reads the first token after `</think>`, the
    text scorers the text after it; a thinking block that never closes is unscored."""
    from cruijff_kit_inspect.scorers import continuous, risk

    think = [("<think>", [("<think>", LN(0.98)), ("0", LN(0.01)), ("1", LN(0.01))]),
             ("\n", [("\n", LN(0.9))]),
             ("0", [("0", LN(0.9)), ("1", LN(0.1))]),                 # a "0" inside the thinking
             (" is wrong", [(" is wrong", LN(0.9))]),
             ("</think>", [("</think>", LN(0.9))]),
             ("\n\n", [("\n\n", LN(0.9))]),
             ("1", [("1", LN(0.8)), ("0", LN(0.2))])]                 # the answer: P(1) = 0.8
    unclosed = [("<think>", [("<think>", LN(0.9)), ("0", LN(0.05)), ("1", LN(0.05))]), ("hmm", [("hmm", LN(0.9))])]
    plain = [("0", [("0", LN(0.7)), ("1", LN(0.3))])]                 # P(1) = 0.3
    rows = [("a", "1", mock_output(tokens=think)), ("b", "0", mock_output(tokens=unclosed)),
            ("c", "0", mock_output(tokens=plain))]
    log = mock_eval(rows, [risk(), continuous()], tmp_path, logprobs=True, read_back=True)

    got = scorer_metrics(log, "risk")
    assert got["n_unscored"] == 1 and got["coverage"] == pytest.approx(2 / 3)
    assert got["mean_risk"] == pytest.approx((0.8 + 0.3) / 2)
    assert got["brier"] == pytest.approx((0.2 ** 2 + 0.3 ** 2) / 2)
    assert got["accuracy"] == pytest.approx(2 / 3)
    a = _score(log, 1, "risk")
    assert a.metadata["answer_token_index"] == 6 and a.metadata["risk"] == pytest.approx(0.8)
    assert "thinking block" in _score(log, 2, "risk").metadata["reason"]

    cont = scorer_metrics(log, "continuous")   # answers "1" (after thinking) and "0"; b has no answer
    assert cont["parse_rate"] == pytest.approx(2 / 3) and cont["mae"] == pytest.approx(0.0)
    assert "thinking block" in _score(log, 2, "continuous").metadata["reason"]


# --------------------------------------------------------------------------- OpenAI-compatible endpoints
ROWS = [{"input": "What is 2+3?", "output": "5"}, {"input": "What is 10+4?", "output": "14"},
        {"input": "What is 1+1?", "output": "3"}]


@pytest.mark.parametrize(("how", "route"), [
    ("env", "POST /v1/chat/completions"),          # OPENAI_BASE_URL, default API
    ("option", "POST /v1/chat/completions"),       # --set base_url=..., default API
    ("responses", "POST /v1/responses"),           # --set base_url=... model_args.responses_api=true
])
def test_openai_compatible_endpoint_speaks_chat_completions_unless_asked(
        tmp_path: Path, ck: Callable[..., Any], how: str, route: str) -> None:
    """`ck eval openai/<name>` at a non-OpenAI base URL sends chat completions (inspect would choose
    the responses API from the name alone); the responses API only with responses_api: true."""
    from fake_openai import FakeOpenAI

    (tmp_path / "sums.json").write_text(json.dumps({"train": ROWS, "test": ROWS}))
    with FakeOpenAI() as server:
        env = {"OPENAI_API_KEY": "sk-test-not-secret", "OPENAI_BASE_URL": server.url if how == "env" else ""}
        sets = [] if how == "env" else ["--set", f"base_url={server.url}"]
        if how == "responses":
            sets += ["--set", "model_args.responses_api=true"]
        res = ck("eval", "openai/local-llama", "--task", "includes", "--dataset", "sums.json", *sets,
                 env=env, timeout=300)
        routes = dict(server.stats.routes)
    assert res.returncode == 0, res.stdout + res.stderr
    posts = {k: v for k, v in routes.items() if k.startswith("POST")}
    assert set(posts) == {route} and posts[route] >= 3   # one per sample (+ inspect's probe of the responses API)
    results = json.loads(next((tmp_path / "ck-eval").rglob("results.json")).read_text())
    (entry,) = results["includes"].values()
    # seed 42 (and no seed for responses) -> "The answer is 5." / "14." / "2." against 5, 14, 3
    assert entry["includes/accuracy"]["value"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(("options", "message"), [
    ({"task": "includes", "model": "openai/x", "model_args": {"base_url": "http://127.0.0.1:1/v1"}},
     "set the eval's `base_url:`"),
    ({"task": "includes", "base_url": "http://127.0.0.1:1/v1"}, "base_url applies to `model`"),
])
def test_base_url_options_are_checked(options: dict[str, Any], message: str) -> None:
    from cruijff_kit_inspect.config import InspectConfig
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        InspectConfig.model_validate(options)
