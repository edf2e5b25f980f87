"""Simulator plugin `openai`: any OpenAI-compatible endpoint as simulated user or assistant."""

from __future__ import annotations

from typing import Any

from cruijff_kit import hookimpl


@hookimpl
def register_simulators(register: Any) -> None:
    """Register the `openai` simulator."""
    from cruijff_kit_openai.simulator import OpenAISimulator

    register(OpenAISimulator)
