"""Prompt templates of the simulated user, the grader and the interactivity judge: moved to the public
:mod:`cruijff_kit.collab` (shared with the multi-turn eval task); every name is re-exported here."""

from __future__ import annotations

from cruijff_kit.collab._prompts import *  # noqa: F403
