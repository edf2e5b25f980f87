"""Simulator plugin `local`: a local Hugging Face model plus an optional PEFT adapter as the assistant."""

from __future__ import annotations

from typing import Any

from cruijff_kit import hookimpl


@hookimpl
def register_simulators(register: Any) -> None:
    """Register the `local` simulator."""
    from cruijff_kit_local_simulator.simulator import LocalAssistant

    register(LocalAssistant)
