"""User-facing errors.

Every error a researcher can cause (a wrong key, a missing file, an unknown plugin) is raised as a
:class:`CkError` subclass. The CLI prints its message as one paragraph and exits non-zero; it never
shows a traceback for these.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable
from enum import IntEnum
from typing import Any

#: Most characters of a user's input quoted in one message (:func:`clip`, :func:`short_repr`).
EXCERPT_CHARS = 200


class ExitCode(IntEnum):
    """The exit statuses of ``ck`` (documented in docs/cli.md, "Exit codes"); every command uses these."""

    #: Everything asked for was done (``ck status``: no stage failed).
    OK = 0
    #: A stage failed: ``ck run`` on a scheduler that waits (local) saw one fail or be interrupted;
    #: ``ck status`` lists a failed one.
    STAGE_FAILED = 1
    #: Nothing was done: the spec, an option or a file is wrong, or it is unsafe (another ``ck run`` holds
    #: the experiment, a file ck did not write would be overwritten). Click's usage errors use 2 too.
    USAGE = 2
    #: ``ck stage`` found its stage claimed by another live process (EX_TEMPFAIL): it did nothing.
    CLAIMED = 75
    #: Interrupted (Ctrl-C, SIGINT or SIGTERM): what finished is kept, ``ck run`` resumes the rest.
    INTERRUPTED = 130


class CkError(Exception):
    """An error caused by the user's input, with a message that says what to fix.

    ``option`` names the option of a plugin's section the error is about (e.g. ``task``) when a
    plugin's plan-time check raises it; the planner then names the field (``eval[0].task``)."""

    exit_code: int = ExitCode.USAGE

    def __init__(self, *args: object, option: str | None = None) -> None:
        super().__init__(*args)
        self.option = option


class SpecError(CkError):
    """A run spec (or profile) is invalid. Names the file, the YAML path and the fix."""

    def __init__(self, message: str, *, file: str | None = None, path: str | None = None,
                 hint: str | None = None) -> None:
        self.file = file
        self.path = path
        self.hint = hint
        self.problem = message
        where = []
        if file:
            where.append(clip(file, 2 * EXCERPT_CHARS))
        if path:
            where.append(f"at `{clip(path, EXCERPT_CHARS)}`")
        text = (": ".join([" ".join(where), message]) if where else message)
        if hint:
            text = f"{text} {hint}"
        super().__init__(text)


class PluginError(CkError):
    """A plugin is unknown, failed to load, or misbehaved."""


class StageError(CkError):
    """A stage cannot run (missing checkpoint, missing input) for a reason the user can fix."""


class DataError(CkError):
    """A dataset file or row is malformed. Names the file, the split and the row."""


def closest(word: str, choices: Iterable[str]) -> str | None:
    """Return the closest valid choice to ``word``, or None when nothing is near."""
    matches = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A sentence suggesting the closest choice, or listing the valid ones when none is close."""
    choices = sorted({str(c) for c in choices})
    best = closest(word, choices)
    if best:
        return f"Did you mean `{clip(best, 80)}`?"
    if not choices:
        return "There are no valid choices here."
    shown = clip(", ".join(f"`{c}`" for c in choices[:20]), 2 * EXCERPT_CHARS)
    return f"Valid choices: {shown}."


def clip(text: Any, limit: int = EXCERPT_CHARS) -> str:
    """``text`` as a string of at most ``limit`` characters and a note of the cut and the full length."""
    s = text if isinstance(text, str) else str(text)
    if len(s) <= limit:
        return s
    return f"{s[:limit]}… ({len(s):,} characters)"


_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = _REPR.maxother = EXCERPT_CHARS
_REPR.maxlong = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = 8


def short_repr(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)`` of at most ``limit`` characters, never built whole: a list of a million rows, or a
    value expanded from YAML aliases, is cut after a few items and levels."""
    shown = _REPR.repr(value)
    return shown if len(shown) <= limit else f"{shown[:limit]}…"
