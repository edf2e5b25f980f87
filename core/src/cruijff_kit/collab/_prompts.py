"""Prompt templates of the simulated user, the grader and the interactivity judge.

Templates are plain text with ``{name}`` placeholders; only the names listed per template are
replaced (everything else, JSON braces included, is left alone). Override any of them from the spec
with inline text or a path to a text file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cruijff_kit._base.errors import SpecError

TERMINATION_MARKER = "[[TERMINATE CHAT]]"

HISTORY_START = "<|The Start of the Chat History|>"
HISTORY_END = "<|The End of the Chat History|>"

USER_PROMPT = """\
You are role-playing as a human USER who works with an AI assistant to get a task done. Stay in \
character as this user for the whole chat: you are not an assistant, you never solve the task \
yourself, and you never mention that you are simulated.

## The task you want help with
{task}

## How to behave
- Start vague: your first messages state the goal only roughly, the way people really open a chat; \
reveal details, constraints and preferences gradually, when the assistant asks or when its answer \
misses them.
- Mention your preferences (format, length, level of detail, style) when they matter.
- Keep your messages short and natural. Answer the assistant's clarifying questions.
- Keep track of the best answer to the task the assistant has given so far.
- When the assistant has fully solved the task to your satisfaction, or the chat stops making \
progress, end the chat: reply with a short closing message followed by {termination_marker}.

## The conversation so far
{chat_history}

## Your reply
Answer with one JSON object and nothing else:
{"current_answer": "<the best answer to the task the assistant has given so far, or an empty string>", \
"thought": "<a short private note on what you think of the last assistant message and what you want next>", \
"response": "<your next message to the assistant, in character; end it with {termination_marker} to end the chat>"}
"""
"""Default user simulator prompt. Placeholders: ``{task}``, ``{chat_history}``, ``{termination_marker}``."""

GRADER_PROMPT = """\
You grade whether a conversation between a user and an AI assistant solved the user's task.

## Task
{task}

## Reference answer
{reference}

## Final answer reached in the conversation
{final_answer}

## Conversation
{chat_history}

Compare the final answer with the reference answer. Reply with one JSON object and nothing else:
{"thought": "<one sentence>", "score": <a number from 0 (wrong) to 1 (fully correct)>}
"""
"""Default grader prompt. Placeholders: ``{task}``, ``{reference}``, ``{final_answer}``, ``{chat_history}``."""

INTERACTIVITY_PROMPT = """\
You judge how interactive an AI assistant is in a conversation with a user: does it engage with the \
user's needs, ask clarifying questions when the request is ambiguous, check its understanding, and \
adapt to the preferences the user mentions, rather than guessing or ignoring them?

## The user's task
{task}

## Conversation
{chat_history}

Reply with one JSON object and nothing else:
{"thought": "<one sentence>", "score": <a number from 0 (not interactive) to 1 (highly interactive)>}
"""
"""Default interactivity judge prompt. Placeholders: ``{task}``, ``{chat_history}``."""

EMPTY_HISTORY = "(The chat has not started yet. Write your first message to the assistant.)"


_PROMPT_SUFFIXES = (".txt", ".md", ".jinja", ".prompt")
"""A short value ending in one of these names a prompt file (an error when it does not exist)."""


def prompt_text(value: str, base_dir: Path, *, file: str | None, path: str) -> str:
    """A prompt given in a spec: inline text, or the content of the file a short one-line value names.

    A short one-line value is read as a path (relative to ``base_dir``, the spec's folder) when that file
    exists or when it ends in ``.txt``, ``.md``, ``.jinja`` or ``.prompt``; such a file that does not exist
    is a :class:`SpecError` naming ``file`` and the YAML ``path``. Anything else is the prompt text itself.
    """
    if "\n" not in value and len(value) < 512:
        p = Path(value).expanduser()
        p = p if p.is_absolute() else base_dir / p
        if p.suffix in _PROMPT_SUFFIXES or p.is_file():
            if not p.is_file():
                raise SpecError(f"prompt file {p} does not exist.", file=file, path=path,
                                hint="Give inline prompt text, or the path of a text file (relative to the spec).")
            return p.read_text(encoding="utf-8")
    return value


def render(template: str, values: Mapping[str, str]) -> str:
    """Replace ``{name}`` for each name in ``values`` (and nothing else) in ``template``."""
    out = template
    for key, value in values.items():
        out = out.replace("{" + key + "}", str(value))
    return out


def render_history(messages: list[dict[str, str]]) -> str:
    """The chat as text for the user simulator and judges (system messages left out)."""
    lines = [HISTORY_START]
    shown = [m for m in messages if m.get("role") != "system"]
    if not shown:
        lines.append(EMPTY_HISTORY)
    for m in shown:
        lines.append(f"**{m['role']}**: {m['content']}")
        lines.append("")
    lines.append(HISTORY_END)
    return "\n".join(lines)
