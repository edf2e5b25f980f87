"""Scheduler plugin ``local``: stages as subprocesses on this machine."""

from __future__ import annotations

from cruijff_kit import hookimpl


@hookimpl
def register_schedulers(register):  # type: ignore[no-untyped-def]
    """Register the local scheduler."""
    from cruijff_kit_local.scheduler import LocalScheduler

    register(LocalScheduler)
