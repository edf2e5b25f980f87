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
from typing import TYPE_CHECKING, Any

from cruijff_kit.collab import Outcome, Task, derive_seed, final_answer, user_message
from cruijff_kit.collab._metrics import EXTRACT_TYPES, ExtractedMetric, build_metric

if TYPE_CHECKING:  # pragma: no cover
    from cruijff_kit._simulate.conversation import Engine

__all__ = ["EXTRACT_TYPES", "ExtractedMetric", "build_metric", "choose_response", "score_candidate",
           "simulate_future"]


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
