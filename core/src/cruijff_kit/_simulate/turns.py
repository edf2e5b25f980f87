"""Small pieces shared by a conversation and the scoring of its candidate turns."""

from __future__ import annotations

import hashlib
from typing import Any

from cruijff_kit._simulate.user import UserReply


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any parts (same parts, same seed, on every machine)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()
    return int(digest[:8], 16) % (2**31 - 1)


def user_message(reply: UserReply) -> dict[str, Any]:
    """The user's turn as stored: the message plus the simulator's private fields."""
    return {"role": "user", "content": reply.response, "thought": reply.thought,
            "current_answer": reply.current_answer}
