"""The simulated user's protocol: one prompt in, one validated JSON object out.

The user model receives the user prompt (task, conversation so far, termination marker) as a single
user message and must answer ``{"current_answer": ..., "thought": ..., "response": ...}``. A reply
that is not such an object is asked for again (``json_retries`` tries in all).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from cruijff_kit._api.retry import Caller, CallFailed
from cruijff_kit.collab import _prompts as prompts


class UserReply(BaseModel):
    """What the simulated user answers each turn."""

    model_config = ConfigDict(extra="ignore")
    current_answer: str = ""
    thought: str = ""
    response: str

    @field_validator("current_answer", "thought", mode="before")
    @classmethod
    def _as_text(cls, v: Any) -> str:
        if v is None:
            return ""
        return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)

    @field_validator("response")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("response is empty")
        return v


class MalformedReply(ValueError):
    """The user model's reply is not the JSON object asked for."""


def parse_json_object(text: str) -> dict[str, Any]:
    """The first JSON object in ``text`` (code fences and text around it are tolerated)."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        except RecursionError:  # thousands of nested brackets: a broken reply, retried like any other
            raise MalformedReply(f"the JSON in the reply nests too deep to read: {text[:200]!r}") from None
        if isinstance(obj, dict):
            return obj
        start = text.find("{", start + 1)
    raise MalformedReply(f"no JSON object in the reply: {text[:200]!r}")


def parse_user_reply(text: str) -> UserReply:
    """Validate a user model reply; raise :class:`MalformedReply` when it does not fit."""
    obj = parse_json_object(text)
    try:
        return UserReply.model_validate(obj)
    except ValidationError as exc:
        raise MalformedReply(f"the JSON object does not fit {{current_answer, thought, response}}: "
                             f"{exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}") from None


@dataclass
class UserSimulator:
    """Renders the user prompt, calls the user model and validates its reply."""

    call: Caller
    template: str
    marker: str
    json_retries: int = 3
    malformed: int = 0

    def prompt(self, task: str, history: list[dict[str, str]]) -> list[dict[str, str]]:
        """The messages sent to the user model for its next turn."""
        text = prompts.render(self.template, {
            "task": task,
            "chat_history": prompts.render_history(history),
            "termination_marker": self.marker,
        })
        return [{"role": "user", "content": text}]

    async def reply(self, task: str, history: list[dict[str, str]], **generation: Any) -> UserReply:
        """The user's next message; malformed JSON is retried (with another seed), then fails the conversation."""
        messages = self.prompt(task, history)
        last: Exception | None = None
        for attempt in range(self.json_retries):
            if attempt and generation.get("seed") is not None:
                generation = {**generation, "seed": int(generation["seed"]) + attempt}
            text = await self.call(messages, **generation)
            try:
                return parse_user_reply(text)
            except MalformedReply as exc:
                self.malformed += 1
                last = exc
        raise CallFailed(f"the user model gave no valid JSON reply in {self.json_retries} tries: {last}")

    def ends(self, reply: UserReply) -> bool:
        """True when the user ended the chat with the termination marker."""
        return self.marker in reply.response
