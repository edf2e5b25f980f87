"""Prompt templates of the simulated user, the grader and the interactivity judge: moved to the public
:mod:`cruijff_kit.collab` (shared with the multi-turn eval task); re-exported here."""

from __future__ import annotations

from cruijff_kit.collab import (
    EMPTY_HISTORY,
    GRADER_PROMPT,
    HISTORY_END,
    HISTORY_START,
    INTERACTIVITY_PROMPT,
    TERMINATION_MARKER,
    USER_PROMPT,
    render,
    render_history,
)

__all__ = ["EMPTY_HISTORY", "GRADER_PROMPT", "HISTORY_END", "HISTORY_START", "INTERACTIVITY_PROMPT",
           "TERMINATION_MARKER", "USER_PROMPT", "render", "render_history"]
