"""Scheduler plugin ``slurm``: stages as SLURM batch jobs, a sweep's stages as job arrays."""

from __future__ import annotations

from cruijff_kit import hookimpl


@hookimpl
def register_schedulers(register):  # type: ignore[no-untyped-def]
    """Register the slurm scheduler."""
    from cruijff_kit_slurm.scheduler import SlurmScheduler

    register(SlurmScheduler)
