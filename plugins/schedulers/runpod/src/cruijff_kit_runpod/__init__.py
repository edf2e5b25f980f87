"""Scheduler plugin ``runpod``: run stages on RunPod GPU pods."""

from __future__ import annotations

from cruijff_kit import hookimpl


@hookimpl
def register_schedulers(register):  # type: ignore[no-untyped-def]
    """Register the RunPod scheduler."""
    from cruijff_kit_runpod.scheduler import RunpodScheduler

    register(RunpodScheduler)
