"""The simulated user's protocol (one prompt in, one validated JSON object out): moved to the public
:mod:`cruijff_kit.collab` (shared with the multi-turn eval task); re-exported here."""

from __future__ import annotations

from cruijff_kit.collab import MalformedReply, UserReply, UserSimulator, parse_json_object, parse_user_reply

__all__ = ["MalformedReply", "UserReply", "UserSimulator", "parse_json_object", "parse_user_reply"]
