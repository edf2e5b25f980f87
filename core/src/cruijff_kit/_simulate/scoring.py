"""The multiturn-aware reward (CollabLLM): score a response by the futures it leads to.

At an assistant turn, ``candidates`` responses are sampled. Each is scored by simulating
``continuations`` futures from it (the simulated user replies, the assistant answers, for up to
``horizon`` user turns, stopping at the marker or at ``max_turns``), computing every metric on each
future, and averaging ``sum(weight x value)`` over the futures. The highest-scoring candidate
continues the conversation. Everything is kept: each candidate's text, seed, score, mean metric
values (``rewards``) and its futures with their own messages and values.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cruijff_kit._api.retry import Caller, CallFailed
from cruijff_kit._base.errors import DataError
from cruijff_kit._simulate.config import MetricSpec
from cruijff_kit._simulate.metrics import Metric, Outcome, final_answer, pass_rate
from cruijff_kit._simulate.tasks import Task
from cruijff_kit._simulate.turns import derive_seed, user_message
from cruijff_kit._simulate.user import MalformedReply, parse_json_object

if TYPE_CHECKING:  # pragma: no cover
    from cruijff_kit._simulate.conversation import Engine

EXTRACT_TYPES = {"bleu": "document", "pass_rate": "runnable code"}
"""What CollabLLM's extraction prompt asks for, per metric type (``document->bleu``,
``runnable code->pass_rate``)."""


class ExtractedMetric(Metric):
    """A metric on what a model extracts from the whole conversation, as CollabLLM computes it.

    ``bleu``: the extraction model (``model:`` or ``scoring.judge``) is asked, with CollabLLM's own
    prompt, for the final document of the conversation; the value is NLTK's
    ``sentence_bleu([reference], document)`` on the two strings. ``pass_rate`` under ``preset:
    collabllm``: the same for the final runnable code, then the share of the task's ``tests`` that pass
    against it. A task field ``extraction_requirement`` is added to the prompt, as CollabLLM does.
    """

    async def __call__(self, outcome: Outcome) -> float:
        """The metric's value for one outcome."""
        from cruijff_kit._simulate import collabllm

        task = outcome.task
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
        from cruijff_kit._simulate import collabllm

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


async def simulate_future(engine: Engine, conv_id: str, task: Task, history: list[dict[str, Any]],
                          turn: int, k: int, j: int) -> dict[str, Any]:
    """Future ``j`` of candidate ``k`` (the candidate is the last message of ``history``)."""
    assert engine.scoring is not None
    conv = list(history)
    start = len(conv) - 1
    texts = [conv[-1]["content"]]
    ended = False
    for h in range(engine.scoring.horizon):
        reply = await engine.user.reply(task.prompt, conv,
                                        seed=derive_seed(engine.seed, conv_id, "future-user", turn, k, j, h))
        conv.append(user_message(reply))
        if engine.user.ends(reply):
            ended = True
            break
        if turn + 1 + h >= engine.max_turns and engine.scoring.preset != "collabllm":
            break
        text = await engine.respond(conv, seed=derive_seed(engine.seed, conv_id, "future", turn, k, j, h))
        conv.append({"role": "assistant", "content": text})
        texts.append(text)
    outcome = Outcome(task, conv, texts, final_answer(conv, start), session=conv)
    values = await asyncio.gather(*(m(outcome) for m in engine.metrics))
    rewards = {m.name: float(v) for m, v in zip(engine.metrics, values, strict=True)}
    score = sum(m.spec.weight * rewards[m.name] for m in engine.metrics)
    return {"messages": conv[start + 1:], "ended": ended, "final_answer": outcome.final_answer,
            "rewards": rewards, "score": score}


async def score_candidate(engine: Engine, conv_id: str, task: Task, history: list[dict[str, Any]],
                          turn: int, k: int, text: str, seed: int) -> dict[str, Any]:
    """A candidate with its futures, mean metric values and mean reward."""
    assert engine.scoring is not None
    with_candidate = [*history, {"role": "assistant", "content": text}]
    futures = await asyncio.gather(*(simulate_future(engine, conv_id, task, with_candidate, turn, k, j)
                                     for j in range(engine.scoring.continuations)))
    n = len(futures)
    rewards = {m.name: sum(f["rewards"][m.name] for f in futures) / n for m in engine.metrics}
    return {"completion": text, "seed": seed, "score": sum(f["score"] for f in futures) / n,
            "rewards": rewards, "continuations": futures}


async def choose_response(engine: Engine, conv_id: str, task: Task, history: list[dict[str, Any]],
                          turn: int) -> tuple[int, list[dict[str, Any]]]:
    """Sample, score and rank the candidates of one turn; return (index of the best, candidates)."""
    assert engine.scoring is not None
    cfg = engine.scoring
    gen: dict[str, Any] = {}
    if cfg.candidate_temperature is not None:
        gen["temperature"] = cfg.candidate_temperature
    seeds = [derive_seed(engine.seed, conv_id, "candidate", turn, k) for k in range(cfg.candidates)]
    texts = await asyncio.gather(*(engine.respond(history, seed=s, **gen) for s in seeds))
    candidates = await asyncio.gather(*(score_candidate(engine, conv_id, task, history, turn, k, t, s)
                                        for k, (t, s) in enumerate(zip(texts, seeds, strict=True))))
    best = max(range(len(candidates)), key=lambda i: (candidates[i]["score"], -i))
    return best, list(candidates)
