"""Small pieces shared by a conversation and the scoring of its candidate turns: the public
:mod:`cruijff_kit.collab` holds them (shared with the multi-turn eval task); re-exported here."""

from __future__ import annotations

from cruijff_kit.collab._conversation import derive_seed, user_message

__all__ = ["derive_seed", "user_message"]
