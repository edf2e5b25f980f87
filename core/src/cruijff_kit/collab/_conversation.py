"""Pieces of a scored collaboration: per-conversation seeds, the reward of a finished conversation,
a journal of finished conversations and a cache of the simulated user's replies.

The reward of a conversation is CollabLLM's multiturn-aware reward with the conversation itself as
the one future: every metric is computed on the whole conversation (the same :class:`Metric` code
``ck simulate`` scores candidate turns with), and ``reward = sum(weight x value)``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cruijff_kit._base.fileio import append_jsonl, locked, read_jsonl, repair_tail
from cruijff_kit.collab._metrics import Metric, Outcome, final_answer
from cruijff_kit.collab._tasks import Task
from cruijff_kit.collab._user import UserReply

REWARD = "reward"
"""Name of the combined reward among a conversation's scores."""


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any parts (same parts, same seed, on every machine)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()
    return int(digest[:8], 16) % (2**31 - 1)


def user_message(reply: UserReply) -> dict[str, Any]:
    """The user's turn as stored: the message plus the simulator's private fields."""
    return {"role": "user", "content": reply.response, "thought": reply.thought,
            "current_answer": reply.current_answer}


def combined_reward(values: dict[str, float], weights: dict[str, float]) -> float:
    """``sum(weight x value)`` over the weighted metrics."""
    return sum(weights[name] * values[name] for name in weights)


async def score_conversation(task: Task, conversation: Sequence[dict[str, Any]],
                             metrics: Sequence[Metric]) -> dict[str, float]:
    """Every metric of a finished conversation and the combined :data:`REWARD` (first key).

    Metrics see the whole conversation as their outcome: ``tokens`` counts every assistant turn, the
    final answer is the user's last ``current_answer`` (else the last assistant turn), judges read the
    whole chat.
    """
    conv = [dict(m) for m in conversation]
    texts = [str(m["content"]) for m in conv if m["role"] == "assistant"]
    outcome = Outcome(task, conv, texts, final_answer(conv), session=conv)
    values = await asyncio.gather(*(m(outcome) for m in metrics))
    scores = {m.name: float(v) for m, v in zip(metrics, values, strict=True)}
    return {REWARD: combined_reward(scores, {m.name: m.spec.weight for m in metrics}), **scores}


class Journal:
    """Finished conversations of one evaluation, one JSON line each, appended as each finishes.

    Rows written under another ``fingerprint`` (other settings) are ignored, so a changed spec never
    reuses a stale conversation.
    """

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path, self.fingerprint = path, fingerprint
        repair_tail(path)
        self.rows: dict[str, dict[str, Any]] = {}
        for row in read_jsonl(path):
            if isinstance(row, dict) and row.get("fingerprint") == fingerprint and "conv_id" in row:
                self.rows[str(row["conv_id"])] = row

    def get(self, conv_id: str) -> dict[str, Any] | None:
        """The journaled row of a finished conversation, or None."""
        return self.rows.get(conv_id)

    def add(self, row: dict[str, Any]) -> None:
        """Append one finished conversation (one write and one fsync)."""
        row = {**row, "fingerprint": self.fingerprint}
        append_jsonl(self.path, row)
        self.rows[str(row["conv_id"])] = row


class ReplyCache:
    """The simulated user's replies by (user model, prompt, seed), shared by every run and target of an
    evaluation (processes too: appends are locked), so base and checkpoints face the same user while
    their conversations agree.

    Only for a deterministic user (greedy, or seeded sampling the endpoint honours): a cached reply
    stands for what the user would say again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mem: dict[str, str] = {}
        self._offset = 0
        self._lock = threading.Lock()  # get/put run in worker threads (asyncio.to_thread): one reader at a time
        if path.is_file():
            with locked(path):  # not while another process appends
                repair_tail(path)
        with self._lock:
            self._read()

    def _read(self) -> None:
        """Read the lines appended since the last read (whole lines only); the caller holds ``self._lock``."""
        if not self.path.is_file() or self.path.stat().st_size <= self._offset:
            return
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].decode("utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line torn by a kill mid-write: that reply is asked for again
            if isinstance(row, dict) and isinstance(row.get("key"), str) and isinstance(row.get("reply"), str):
                self._mem.setdefault(row["key"], row["reply"])

    @staticmethod
    def key(user: str, messages: Sequence[dict[str, Any]], generation: dict[str, Any]) -> str:
        """The cache key of one user call: the user model, the prompt (task and conversation so far) and
        the generation settings (the seed included)."""
        data = json.dumps([user, list(messages), generation], sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(data.encode()).hexdigest()

    def get(self, key: str) -> str | None:
        """The cached reply (read again from the file when this process has not seen it), or None."""
        with self._lock:
            if key not in self._mem:
                self._read()
            return self._mem.get(key)

    def put(self, key: str, reply: str) -> None:
        """Record a reply (the first one recorded for a key wins for every later reader)."""
        with self._lock, locked(self.path):
            self._read()
            if key not in self._mem:
                append_jsonl(self.path, {"key": key, "reply": reply})
                self._mem[key] = reply
