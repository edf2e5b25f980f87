"""Metrics of one simulated future, the terms of the multiturn-aware reward.

Each metric maps a :class:`Outcome` (the conversation up to the end of a simulated future, the task,
and the final answer reached) to a number. Built in:

* ``exact_match`` / ``contains``: the final answer equals / contains the reference (normalised;
  ``\\boxed{...}`` and "the answer is ..." are unwrapped); ``numeric``: the last number of the
  (unwrapped) final answer equals the reference's number;
* ``pass_rate``: the share of the task's tests (``metadata.tests``, Python statements) that pass
  against the last Python code block of the final answer, each in a fresh interpreter;
* ``python``: your function ``f(final_answer: str, task: dict, conversation: list[dict]) -> float``;
* ``grader`` / ``interactivity``: a model over a simulator plugin answers ``{"score": 0..1}``;
* ``tokens``: assistant tokens of the candidate and its future, divided by ``per`` (give it a
  negative weight to penalise length);
* ``bleu`` (and ``pass_rate`` under preset collabllm): a model extracts the final document (code) from
  the conversation, scored against the reference (the tests) as CollabLLM does (:class:`ExtractedMetric`).

:func:`build_metric` picks the class of a configured metric.
"""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cruijff_kit._api.retry import Caller, CallFailed
from cruijff_kit._base.errors import DataError
from cruijff_kit.collab import _collabllm as collabllm
from cruijff_kit.collab import _prompts as prompts
from cruijff_kit.collab._config import MetricSpec
from cruijff_kit.collab._functions import load_function
from cruijff_kit.collab._tasks import Task
from cruijff_kit.collab._user import MalformedReply, parse_json_object

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def count_tokens(text: str) -> int:
    """A tokenizer-free token count (words and punctuation marks); stable across backends."""
    return len(_TOKEN.findall(text))


@dataclass
class Outcome:
    """One simulated future: the whole conversation, the assistant texts scored, the final answer."""

    task: Task
    conversation: list[dict[str, Any]]
    assistant_texts: list[str]
    final_answer: str
    session: list[dict[str, Any]] | None = None
    """The whole conversation through the end of the future (set under ``preset: collabllm``)."""

    def chat(self) -> list[dict[str, str]]:
        """The conversation as plain role/content messages."""
        return [{"role": m["role"], "content": m["content"]} for m in self.conversation]


def final_answer(conversation: list[dict[str, Any]], start: int = 0) -> str:
    """The user's last non-empty ``current_answer`` from ``start`` on, else the last assistant message."""
    for m in reversed(conversation[start:]):
        if m["role"] == "user" and str(m.get("current_answer") or "").strip():
            return str(m["current_answer"])
    for m in reversed(conversation):
        if m["role"] == "assistant":
            return str(m["content"])
    return ""


# --------------------------------------------------------------------------- reference comparisons
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_ANSWER_IS = re.compile(r"(?:final answer|answer)\s*(?:is|:)\s*(.+)", re.IGNORECASE)


def extract_answer(text: str) -> str:
    """Unwrap ``\\boxed{X}`` or "the answer is X" when present; else the text itself."""
    boxed = _BOXED.findall(text)
    if boxed:
        return boxed[-1]
    found = _ANSWER_IS.findall(text)
    if found:
        return found[-1].strip().splitlines()[0]
    return text


def normalize(text: str) -> str:
    """Lowercase, collapse spaces, drop surrounding punctuation, quotes and ``$``."""
    t = " ".join(str(text).strip().lower().split())
    t = t.strip(" .,;:!?\"'`$")
    return t


def exact_match(answer: str, reference: str) -> float:
    """1.0 when the (unwrapped, normalised) answer equals the reference."""
    return float(normalize(extract_answer(answer)) == normalize(extract_answer(reference)))


def contains(answer: str, reference: str) -> float:
    """1.0 when the normalised reference occurs in the normalised answer."""
    ref = normalize(extract_answer(reference))
    return float(bool(ref) and ref in normalize(answer))


_NUMBER = re.compile(
    r"(?:(?<![^\s(])[-+])?"  # a sign only at the start, after whitespace or "(": "10-20" is 10 and 20
    r"(?<![\w.])"  # not the tail of a word or of another number ("e5", "x2")
    r"(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"  # digits (thousands commas allowed), decimals
    r"(?:[eE][-+]?\d+)?"  # an exponent only after digits
)


def last_number(text: str) -> float | None:
    """The last number in ``text``, or None.

    ``1,234``, ``-3.5``, ``1e3`` and ``-3.5e2`` read as numbers; a hyphen between numbers ("pages 10-20")
    is not a minus sign (a sign counts at the start, after whitespace or after "("); letters followed by
    digits ("e5", "x2") are not a number.
    """
    for match in reversed(list(_NUMBER.finditer(text))):
        try:
            return float(match.group(0).replace(",", ""))
        except ValueError:
            continue
    return None


def numeric_match(answer: str, reference: str, tolerance: float = 1e-9) -> float:
    """1.0 when the last number of the (unwrapped) answer equals the reference's last number."""
    got, want = last_number(extract_answer(answer)), last_number(extract_answer(reference))
    if got is None or want is None:
        return 0.0
    return float(abs(got - want) <= tolerance * max(1.0, abs(want)))


_CODE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def pass_rate(answer: str, tests: list[str], timeout: float = 30.0) -> float:
    """Share of ``tests`` (Python statements) passing after the answer's last code block."""
    blocks = _CODE.findall(answer)
    code = blocks[-1] if blocks else answer
    if not tests:
        return 0.0
    passed = 0
    for test in tests:
        try:
            proc = subprocess.run([sys.executable, "-I", "-c", code + "\n\n" + test], capture_output=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            continue
        passed += proc.returncode == 0
    return passed / len(tests)


def _score_of(text: str) -> float:
    obj = parse_json_object(text)
    try:
        score = float(obj["score"])
    except (KeyError, TypeError, ValueError):
        raise MalformedReply(f"no numeric `score` in {text[:200]!r}") from None
    if not math.isfinite(score):
        raise MalformedReply(f"the `score` in {text[:200]!r} is {score}, not a finite number")
    return min(1.0, max(0.0, score))


class Metric:
    """One configured metric, ready to score outcomes."""

    def __init__(self, name: str, spec: MetricSpec, base_dir: Path, *, caller: Caller | None = None,
                 prompt: str | None = None, json_retries: int = 3, preset: str = "ck") -> None:
        self.name, self.spec, self.caller, self.prompt, self.json_retries = name, spec, caller, prompt, json_retries
        self.preset = preset
        self._fn = load_function(str(spec.function), base_dir) if spec.type == "python" else None

    async def __call__(self, outcome: Outcome) -> float:
        """The metric's value for one outcome."""
        kind = self.spec.type
        task = outcome.task
        if self.preset == "collabllm" and kind in ("tokens", "grader", "interactivity"):
            return await self._collabllm(outcome)
        if kind == "tokens":
            return sum(count_tokens(t) for t in outcome.assistant_texts) / self.spec.per
        if kind in ("exact_match", "contains", "numeric"):
            fn = {"exact_match": exact_match, "contains": contains, "numeric": numeric_match}[kind]
            return fn(outcome.final_answer, task.answer or "") if task.answer is not None else 0.0
        if kind == "pass_rate":
            tests = task.metadata.get("tests")
            if isinstance(tests, str):
                tests = [tests]
            if not isinstance(tests, list) or not tests:
                raise DataError(f"task {task.id} has no `tests` (a list of Python statements), which the "
                                f"pass_rate metric `{self.name}` needs.")
            return await asyncio.to_thread(pass_rate, outcome.final_answer, [str(t) for t in tests],
                                           self.spec.timeout)
        if kind == "python":
            assert self._fn is not None
            try:
                value = await asyncio.to_thread(self._fn, final_answer=outcome.final_answer, task=task.as_dict(),
                                                conversation=outcome.chat())
                number = float(value)
            except Exception as exc:  # the user's code: fail this conversation, say where
                raise CallFailed(f"metric `{self.name}` ({self.spec.function}) raised {type(exc).__name__}: "
                                 f"{exc}") from exc
            if not math.isfinite(number):
                raise CallFailed(f"metric `{self.name}` ({self.spec.function}) returned {number}; a metric "
                                 "must return a finite number.")
            return number
        return await self._judge(outcome)

    async def _collabllm(self, outcome: Outcome) -> float:
        """CollabLLM's token_amount / accuracy / interactivity over the whole conversation."""
        session = outcome.session if outcome.session is not None else outcome.conversation
        if self.spec.type == "tokens":
            text = " ".join(m["content"] for m in collabllm.strip_system(session) if m["role"] == "assistant")
            return await asyncio.to_thread(collabllm.count_cl100k, text) / self.spec.per
        assert self.caller is not None
        if self.spec.type == "grader":
            key, text = "accuracy", collabllm.accuracy_prompt(outcome.task.prompt, outcome.task.answer or "", session)
        else:
            key, text = "interactivity", collabllm.interactivity_prompt(session)
        messages = [{"role": "user", "content": text}]
        last: Exception | None = None
        for attempt in range(self.json_retries):
            reply = await self.caller(messages, temperature=0.0 if attempt == 0 else 0.7)
            try:
                return collabllm.judged_value(reply, key)
            except MalformedReply as exc:
                last = exc
        raise CallFailed(f"metric `{self.name}`: no valid JSON `{key}` in {self.json_retries} tries: {last}")

    async def _judge(self, outcome: Outcome) -> float:
        assert self.caller is not None and self.prompt is not None
        text = prompts.render(self.prompt, {
            "task": outcome.task.prompt,
            "reference": outcome.task.answer or "",
            "final_answer": outcome.final_answer,
            "chat_history": prompts.render_history(outcome.chat()),
        })
        messages = [{"role": "user", "content": text}]
        last: Exception | None = None
        for attempt in range(self.json_retries):
            # greedy first; a retry samples, since a deterministic endpoint would repeat the same reply
            reply = await self.caller(messages, temperature=0.0 if attempt == 0 else 0.7)
            try:
                return _score_of(reply)
            except MalformedReply as exc:
                last = exc
        raise CallFailed(f"metric `{self.name}`: no valid JSON score in {self.json_retries} tries: {last}")



EXTRACT_TYPES = {"bleu": "document", "pass_rate": "runnable code"}
"""What CollabLLM's extraction prompt asks for, per metric type (``document->bleu``,
``runnable code->pass_rate``)."""


class ExtractedMetric(Metric):
    """A metric on what a model extracts from the whole conversation, as CollabLLM computes it.

    ``bleu``: the extraction model (``model:`` or the section's judge) is asked, with CollabLLM's own
    prompt, for the final document of the conversation; the value is NLTK's
    ``sentence_bleu([reference], document)`` on the two strings. ``pass_rate`` under ``preset:
    collabllm``: the same for the final runnable code, then the share of the task's ``tests`` that pass
    against it. A task field ``extraction_requirement`` is added to the prompt, as CollabLLM does.
    """

    async def __call__(self, outcome: Outcome) -> float:
        """The metric's value for one outcome."""
        task = outcome.task
        tests: Any = None
        if self.spec.type == "pass_rate":
            tests = task.metadata.get("tests")
            tests = [tests] if isinstance(tests, str) else tests
            if not isinstance(tests, list) or not tests:
                raise DataError(f"task {task.id} has no `tests` (a list of Python statements), which the "
                                f"pass_rate metric `{self.name}` needs.")
        completion = await self.extract(outcome)
        if self.spec.type == "bleu":
            return collabllm.sentence_bleu(task.answer or "", completion)
        return await asyncio.to_thread(pass_rate, completion, [str(t) for t in tests], self.spec.timeout)

    async def extract(self, outcome: Outcome) -> str:
        """The ``final_completion`` the extraction model reads out of the conversation."""
        assert self.caller is not None
        session = outcome.session if outcome.session is not None else outcome.conversation
        requirement = outcome.task.metadata.get("extraction_requirement")
        text = collabllm.extraction_prompt(EXTRACT_TYPES[self.spec.type], session,
                                           str(requirement) if requirement else None)
        messages = [{"role": "user", "content": text}]
        last: Exception | None = None
        for attempt in range(self.json_retries):
            reply = await self.caller(messages, temperature=0.0 if attempt == 0 else 0.7)
            try:
                obj = parse_json_object(reply)
                if "final_completion" not in obj:
                    raise MalformedReply(f"the extraction reply lacks `final_completion`: {reply[:200]!r}")
                return str(obj["final_completion"])
            except MalformedReply as exc:
                last = exc
        raise CallFailed(f"metric `{self.name}`: no JSON `final_completion` in {self.json_retries} tries: {last}")


def build_metric(name: str, spec: MetricSpec, base_dir: Path, *, preset: str, caller: Caller | None = None,
                 prompt: str | None = None, json_retries: int = 3) -> Metric:
    """One configured metric: an :class:`ExtractedMetric` for ``bleu`` (and ``pass_rate`` under preset
    collabllm), else a :class:`Metric`."""
    extracted = spec.type == "bleu" or (spec.type == "pass_rate" and preset == "collabllm")
    cls = ExtractedMetric if extracted else Metric
    return cls(name, spec, base_dir, caller=caller, prompt=prompt, json_retries=json_retries, preset=preset)
