"""inspect-ai scorers and metrics of the ``inspect`` evaluator.

Every scorer keeps what its metrics need in ``Score.metadata``, so the metrics (and ``ck summarize``)
recompute everything from the ``.eval`` log. The maths lives in :mod:`cruijff_kit.scoring`.

Usable in your own task files too: ``from cruijff_kit_inspect.scorers import risk``.

Samples a scorer cannot score (option tokens absent from the log-probabilities, an option's
log-probability that is not a number or above 0, no number in the answer, a target outside the options
or labels, an answer that ends inside its thinking block) get the value ``N`` (no answer, which counts
as wrong in ``accuracy``) with the reason in ``Score.metadata["reason"]``, and are counted in
``coverage``/``n_unscored``/``parse_rate``; the calibration and error metrics use the scored samples
only, and a risk in the metadata that is not a probability in [0, 1] is never averaged (it counts as
unscored). With ``epochs > 1`` the metadata of a sample's first epoch is used.

Reasoning models: every scorer reads the answer after the thinking block (the text after the first
``</think>``); the ``risk`` scorer reads the log-probabilities of the first answer token after it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from inspect_ai.scorer import (
    CORRECT,
    INCORRECT,
    NOANSWER,
    Metric,
    SampleScore,
    Score,
    Scorer,
    Target,
    accuracy,
    metric,
    scorer,
    stderr,
)
from inspect_ai.solver import TaskState

from cruijff_kit import scoring
from cruijff_kit_inspect.results import scored_risk

__all__ = ["OTHER", "THINK_END", "THINK_START", "answer_after_thinking", "answer_token_index", "classification",
           "classification_summary", "continuous", "continuous_summary", "invalid_option_tokens",
           "normalize_token", "numeric_risk", "option_probabilities", "other_label", "risk", "risk_summary"]

normalize_token = scoring.normalize_token  # one rule for token variants, shared with cruijff_kit.inference

THINK_START, THINK_END = "<think>", "</think>"
"""The tags of a reasoning model's thinking block; the answer is what follows ``THINK_END``."""

OTHER = "other"
"""The confusion-matrix column of classification answers outside the configured labels."""

MAX_LOGPROB = 1e-6
"""The largest log-probability read as valid: 0 (probability 1) plus rounding of a log-softmax."""

UNCLOSED_THINKING = ("the answer ended inside its thinking block (no </think>); raise generation.max_tokens "
                     "so the model can finish thinking and answer")


def answer_after_thinking(text: str) -> str | None:
    """A reasoning model's answer: the text after the first ``</think>``.

    The whole text when it has no thinking block; None when it opens ``<think>`` and never closes it
    (generation stopped while the model was thinking: there is no answer to read).
    """
    end = text.find(THINK_END)
    if end >= 0:
        return text[end + len(THINK_END):]
    if text.lstrip().startswith(THINK_START):
        return None
    return text


def answer_token_index(tokens: Sequence[str]) -> int | None:
    """The position of the first answer token among generated ``tokens`` (their texts).

    0 when the text has no thinking block; else the first token that starts after the first
    ``</think>`` and is not whitespace; None when the thinking block never closes or nothing follows it.
    """
    full = "".join(tokens)
    end = full.find(THINK_END)
    if end < 0:
        return None if full.lstrip().startswith(THINK_START) else 0
    cut, start = end + len(THINK_END), 0
    for i, token in enumerate(tokens):
        if start >= cut and normalize_token(token):
            return i
        start += len(token)
    return None


def _valid_logprob(logprob: float) -> bool:
    return not math.isnan(logprob) and logprob <= MAX_LOGPROB


def option_probabilities(top: Sequence[tuple[str, float]], options: Sequence[str],
                         ignore_case: bool = False) -> tuple[dict[str, float], dict[str, float]]:
    """Probability mass of each option among a position's top tokens, summed over variants.

    ``top`` holds (token, logprob) pairs; every token whose text equals an option after
    :func:`normalize_token` (``"1"``, ``" 1"``, ``"Ġ1"``) adds its probability to that option.
    Returns (mass per option, probabilities renormalised over the options with mass); an option with
    no variant in ``top`` has mass 0 and no probability. Invalid log-probabilities (see
    :func:`invalid_option_tokens`) add nothing.
    """
    keys = {normalize_token(o, ignore_case): o for o in options}
    mass = {o: 0.0 for o in options}
    for token, logprob in top:
        opt = keys.get(normalize_token(token, ignore_case))
        if opt is not None and _valid_logprob(logprob):
            mass[opt] += min(1.0, math.exp(logprob))
    total = sum(mass.values())
    probs = {o: m / total for o, m in mass.items() if m > 0} if total > 0 else {}
    return mass, probs


def invalid_option_tokens(top: Sequence[tuple[str, float]], options: Sequence[str],
                          ignore_case: bool = False) -> list[str]:
    """Option tokens in ``top`` whose log-probability is not a number or is above 0 (a probability
    above 1): the model's output is broken there, so the sample is not scored."""
    keys = {normalize_token(o, ignore_case) for o in options}
    return [token for token, logprob in top
            if normalize_token(token, ignore_case) in keys and not _valid_logprob(logprob)]


def _meta(s: SampleScore) -> dict[str, Any]:
    return s.score.metadata or {}


# --------------------------------------------------------------------------- binary risk
def _risk_metrics(scores: list[SampleScore]) -> dict[str, float]:
    """Metrics of binary risk predictions kept in metadata (``risk``, ``outcome``, ``correct``)."""
    total = len(scores)
    covered = [_meta(s) for s in scores if scored_risk(_meta(s)) is not None]
    n_bins = int(covered[0].get("n_bins", 10)) if covered else 10
    out: dict[str, float] = {"coverage": len(covered) / total if total else 0.0,
                             "n_scored": float(len(covered)), "n_unscored": float(total - len(covered))}
    if not covered:
        return out
    pairs = [scored_risk(m) for m in covered]
    risks = [p[0] for p in pairs if p is not None]
    outcomes = [p[1] for p in pairs if p is not None]
    correct = [bool(m.get("correct", (r >= 0.5) == bool(y))) for m, r, y in zip(covered, risks, outcomes, strict=True)]
    mean, se = scoring.mean_stderr(risks)
    brier, brier_se = scoring.brier_score(risks, outcomes)
    values: dict[str, float | None] = {
        "mean_risk": mean, "mean_risk_stderr": se,
        "ece": scoring.expected_calibration_error([max(p, 1 - p) for p in risks],
                                                  correct, n_bins),
        "risk_calibration_error": scoring.risk_calibration_error(risks, outcomes, n_bins),
        "brier": brier, "brier_stderr": brier_se,
        "auc": scoring.roc_auc(risks, outcomes),
        "positive_rate": sum(outcomes) / len(outcomes),
    }
    out.update({k: float(v) for k, v in values.items() if v is not None})
    return out


@metric
def risk_summary() -> Metric:
    """Mean risk, ECE, risk calibration error, Brier score, ROC AUC and coverage."""

    def compute(scores: list[SampleScore]) -> dict[str, float]:
        return _risk_metrics(scores)

    return compute


def _binary_score(risk_value: float | None, target: str, options: Sequence[str], answer: str,
                  extra: dict[str, Any], n_bins: int, why: str | None, ignore_case: bool = False) -> Score:
    neg, pos = options[0], options[1]
    t = normalize_token(target, ignore_case)
    labels = {normalize_token(neg, ignore_case): 0, normalize_token(pos, ignore_case): 1}
    meta: dict[str, Any] = {"target": target, "options": list(options), "n_bins": n_bins, **extra}
    if t not in labels:
        why = f"target {target!r} is not one of the options {list(options)}"
    if why is not None or risk_value is None:
        meta.update(risk=None, reason=why)
        return Score(value=NOANSWER, answer=answer, explanation=why, metadata=meta)
    outcome = labels[t]
    predicted = 1 if risk_value >= 0.5 else 0
    meta.update(risk=risk_value, outcome=outcome, predicted=options[predicted], correct=predicted == outcome)
    return Score(value=CORRECT if predicted == outcome else INCORRECT, answer=options[predicted],
                 explanation=f"P({pos}) = {risk_value:.4f}", metadata=meta)


@scorer(metrics=[accuracy(), stderr(), risk_summary()])
def risk(options: Sequence[str] = ("0", "1"), ignore_case: bool = False, n_bins: int = 10) -> Scorer:
    """Binary risk from the log-probabilities of the first generated token.

    ``options`` = [negative, positive]; the risk is P(positive) renormalised over the two options,
    each option's mass summed over its token variants (``1``, `` 1``...). Needs logprobs (the
    ``inspect`` evaluator turns them on). A sample where an option has no variant among the top
    log-probabilities is not scored and lowers ``coverage``.
    """
    opts = [str(o) for o in options]

    async def score(state: TaskState, target: Target) -> Score:
        choice = state.output.choices[0] if state.output.choices else None
        content = choice.logprobs.content if choice is not None and choice.logprobs else None
        answer = (answer_after_thinking(state.output.completion) or "").strip()
        if not content:
            return _binary_score(None, target.text, opts, answer, {}, n_bins,
                                 "no log-probabilities in the model output (does the provider support them?)")
        index = answer_token_index([lp.token for lp in content])
        if index is None:
            return _binary_score(None, target.text, opts, answer, {"first_token": content[0].token}, n_bins,
                                 UNCLOSED_THINKING if THINK_END not in "".join(lp.token for lp in content)
                                 else "no answer token after the thinking block")
        first = content[index]
        top = [(t.token, t.logprob) for t in (first.top_logprobs or [])] or [(first.token, first.logprob)]
        mass, probs = option_probabilities(top, opts, ignore_case)
        invalid = invalid_option_tokens(top, opts, ignore_case)
        missing = [o for o in opts if mass[o] == 0.0]
        extra = {"option_probs": {} if invalid else probs, "option_mass": sum(mass.values()), "first_token": first.token,
                 "answer_token_index": index, "missing_options": missing, "invalid_tokens": invalid}
        why = (f"option token(s) {invalid} have a log-probability that is not a number or above 0 "
               "(a probability above 1): the model's output is broken" if invalid
               else f"option token(s) {missing} not among the top log-probabilities" if missing else None)
        risk_value = probs.get(opts[1]) if why is None else None
        return _binary_score(risk_value, target.text, opts, answer, extra, n_bins, why, ignore_case)

    return score


@scorer(metrics=[accuracy(), stderr(), risk_summary()], name="numeric_risk")
def numeric_risk(options: Sequence[str] = ("0", "1"), n_bins: int = 10) -> Scorer:
    """Binary risk stated in the answer as a probability (``0.73`` or ``73%``) of ``options[1]``.

    An answer without a number in [0, 1] is not scored and lowers ``coverage``.
    """
    opts = [str(o) for o in options]

    async def score(state: TaskState, target: Target) -> Score:
        text = answer_after_thinking(state.output.completion)
        p = scoring.parse_probability(text)
        why = (UNCLOSED_THINKING if text is None else None if p is not None
               else "no probability in [0, 1] in the answer")
        return _binary_score(p, target.text, opts, (text or "").strip(), {"stated": p}, n_bins, why)

    return score


# --------------------------------------------------------------------------- continuous
@metric
def continuous_summary() -> Metric:
    """MAE (with standard error), RMSE, R² over parsed answers, and the parse rate."""

    def compute(scores: list[SampleScore]) -> dict[str, float]:
        total = len(scores)
        parsed = [_meta(s) for s in scores if _meta(s).get("predicted") is not None]
        out: dict[str, float] = {"parse_rate": len(parsed) / total if total else 0.0,
                                 "n_parsed": float(len(parsed))}
        if parsed:
            values = scoring.regression_metrics([float(m["predicted"]) for m in parsed],
                                                [float(m["actual"]) for m in parsed])
            out.update({k: float(v) for k, v in values.items() if v is not None})
        return out

    return compute


@scorer(metrics=[continuous_summary()])
def continuous() -> Scorer:
    """Numeric answers: the first number in the answer against the first number of the target.

    The sample's value is the absolute error (``N`` when the answer holds no number).
    """

    async def score(state: TaskState, target: Target) -> Score:
        answer = answer_after_thinking(state.output.completion)
        text = answer or ""
        actual = scoring.parse_number(target.text)
        predicted = scoring.parse_number(answer)
        meta = {"predicted": predicted if actual is not None else None, "actual": actual}
        if actual is None:
            why = f"target {target.text!r} holds no number"
            return Score(value=NOANSWER, answer=text.strip(), explanation=why, metadata={**meta, "reason": why})
        if predicted is None:
            why = UNCLOSED_THINKING if answer is None else "no number in the answer"
            return Score(value=NOANSWER, answer=text.strip(), explanation=why, metadata={**meta, "reason": why})
        return Score(value=abs(predicted - actual), answer=str(predicted), metadata=meta)

    return score


# --------------------------------------------------------------------------- classification
def _clean_label(text: str) -> str:
    return text.strip().strip("\"'`").rstrip(".!").strip()


def other_label(labels: Sequence[str]) -> str:
    """The column of off-label answers: ``other``, or ``(other)`` when a label is named ``other``."""
    taken = {lab.lower() for lab in labels}
    return OTHER if OTHER not in taken else f"({OTHER})"


def confusion_from_scores(scores: list[SampleScore]) -> dict[str, Any]:
    """Classification metrics of the scored samples (``actual``/``predicted`` in metadata)."""
    metas = [_meta(s) for s in scores if "actual" in _meta(s) and "predicted" in _meta(s)]
    labels = metas[0].get("labels") if metas else None
    positive = metas[0].get("positive") if metas else None
    return scoring.classification_metrics([m["actual"] for m in metas], [m["predicted"] for m in metas],
                                          labels=labels, positive=positive)


@metric
def classification_summary() -> Metric:
    """Accuracy, balanced accuracy, F1, confusion counts ``confusion/<true>/<predicted>`` and ``n_unscored``.

    With labels, answers outside them are counted in the column ``other`` (see :func:`other_label`);
    samples whose target is not a label are not scored (``n_unscored``).
    """

    def compute(scores: list[SampleScore]) -> dict[str, float]:
        res = confusion_from_scores(scores)
        n_scored = sum(1 for s in scores if "actual" in _meta(s) and "predicted" in _meta(s))
        out: dict[str, float] = {k: float(res[k]) for k in ("accuracy", "balanced_accuracy", "f1")
                                 if res[k] is not None}
        out["n_unscored"] = float(len(scores) - n_scored)
        others = {_meta(s).get("other") for s in scores} - {None}
        for i, true in enumerate(res["labels"]):
            if true in others:  # never a target: its row is all zeros
                continue
            for j, pred in enumerate(res["labels"]):
                out[f"confusion/{true}/{pred}"] = float(res["confusion"][i][j])
        return out

    return compute


@scorer(metrics=[classification_summary(), stderr()])
def classification(labels: Sequence[str] | None = None, positive: str | None = None,
                   ignore_case: bool = True) -> Scorer:
    """Label answers compared with the target label.

    The answer (after a thinking block) is trimmed (whitespace, quotes, a final ``.``/``!``); with
    ``labels`` it is mapped to the label it equals (case-insensitively when ``ignore_case``), and an
    answer equal to no label is predicted as one column, ``other`` (:func:`other_label`); a target
    that is no label is not scored (``N``, counted in ``n_unscored``). Without ``labels`` the answer
    is kept as text.
    """
    canon = {(lab.lower() if ignore_case else lab): lab for lab in (labels or [])}
    other = other_label(labels) if labels else None
    columns = [*labels, other] if labels else None

    def norm(text: str) -> str:
        t = _clean_label(text)
        key = t.lower() if ignore_case else t
        if key in canon:
            return canon[key]
        return key

    async def score(state: TaskState, target: Target) -> Score:
        answer = answer_after_thinking(state.output.completion)
        text = norm(answer or "")
        actual = norm(target.text)
        meta: dict[str, Any] = {"labels": columns, "positive": positive, "other": other, "answer": text}
        if labels and actual not in labels:
            why = f"target {target.text!r} is not one of the labels {list(labels)}"
            return Score(value=NOANSWER, answer=text, explanation=why,
                         metadata={**meta, "target": target.text, "reason": why})
        predicted = other if labels and (answer is None or text not in labels) else text
        meta.update(predicted=predicted, actual=actual)
        if answer is None:
            meta["reason"] = UNCLOSED_THINKING
        return Score(value=CORRECT if predicted == actual else INCORRECT, answer=predicted, metadata=meta)

    return score
