"""One conversation: the user opens, the assistant answers, until the marker or ``max_turns``.

With scoring, each assistant turn samples several candidates, scores each by simulated futures
(:mod:`cruijff_kit._simulate.scoring`) and continues the conversation with the best one; every
candidate, its futures and its metric values are kept in the conversation's row.

Calls, as in CollabLLM's simulator: the user model writes the opening message; after the assistant's
``max_turns``-th turn the conversation ends without asking the user for a reply nobody would answer;
with scoring, the user's reply to the chosen candidate is the first user message of that candidate's
first simulated future (drawn from the same prompt a separate call would get), not one more call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from cruijff_kit._api.retry import Caller
from cruijff_kit._simulate.config import ScoringConfig
from cruijff_kit._simulate.scoring import choose_response
from cruijff_kit.collab import Metric, Task, UserSimulator, derive_seed, final_answer, user_message


def next_user_message(candidate: dict[str, Any], preset: str = "ck") -> dict[str, Any] | None:
    """The user's reply to a chosen candidate, taken from its first simulated future (under
    ``preset: collabllm``, as CollabLLM does, from its longest future, the last of equally long ones;
    None when the futures hold no user message, as with ``horizon: 0``)."""
    futures = list(candidate.get("continuations") or [])
    if preset == "collabllm" and futures:
        futures = [sorted(futures, key=lambda f: len(f.get("messages") or []))[-1]]
    for future in futures:
        messages = future.get("messages") or []
        if messages and messages[0].get("role") == "user":
            return dict(messages[0])
        break
    return None


@dataclass
class Engine:
    """Everything a conversation needs; shared by all conversations of a simulation."""

    user: UserSimulator
    assistant: Caller
    max_turns: int
    seed: int
    system: str | None = None
    scoring: ScoringConfig | None = None
    metrics: list[Metric] = field(default_factory=list)
    fingerprint: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def assistant_view(self, history: list[dict[str, Any]]) -> list[dict[str, str]]:
        """What the assistant sees: the system prompt, then role/content of each turn."""
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": m["role"], "content": m["content"]} for m in history]

    async def respond(self, history: list[dict[str, Any]], **generation: Any) -> str:
        """One assistant reply to the conversation so far."""
        return await self.assistant(self.assistant_view(history), **generation)

    async def run(self, conv_id: str, task: Task) -> dict[str, Any]:
        """Simulate one conversation to its end; return its row for the JSONL file."""
        start = time.monotonic()
        history: list[dict[str, Any]] = []
        turns: list[dict[str, Any]] = []
        reply = await self.user.reply(task.prompt, history, seed=derive_seed(self.seed, conv_id, "user", 0))
        history.append(user_message(reply))
        ended_by = "marker" if self.user.ends(reply) else ""
        turn = 0
        while not ended_by:
            user_next: dict[str, Any] | None = None
            if self.scoring is None:
                text = await self.respond(history, seed=derive_seed(self.seed, conv_id, "assistant", turn))
            else:
                chosen, candidates = await choose_response(self, conv_id, task, history, turn)
                text = candidates[chosen]["completion"]
                turns.append({"turn_id": turn, "message_index": len(history), "chosen": chosen,
                              "candidates": candidates})
                user_next = next_user_message(candidates[chosen], self.scoring.preset)
            history.append({"role": "assistant", "content": text, "turn_id": turn})
            turn += 1
            if turn >= self.max_turns:
                ended_by = "max_turns"
                break
            if user_next is None:
                reply = await self.user.reply(task.prompt, history,
                                              seed=derive_seed(self.seed, conv_id, "user", turn))
                user_next = user_message(reply)
            history.append(user_next)
            if self.user.marker in user_next["content"]:
                ended_by = "marker"
        row: dict[str, Any] = {
            "conv_id": conv_id,
            "task": task.as_dict(),
            "system": self.system,
            "messages": history,
            "num_turns": turn,
            "ended_by": ended_by,
            "final_answer": final_answer(history),
            "fingerprint": self.fingerprint,
            "participants": self.labels,
            "seconds": round(time.monotonic() - start, 3),
        }
        if self.scoring is not None:
            row["turns"] = turns
        return row
