"""Scheduler plugin `slurm`: submit stages to SLURM (submitit)."""

from __future__ import annotations
