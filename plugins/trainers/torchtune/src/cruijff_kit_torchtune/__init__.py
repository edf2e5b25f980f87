"""Trainer plugin `torchtune`: LoRA with torchtune recipes."""

from __future__ import annotations

from typing import Any

from cruijff_kit import hookimpl


@hookimpl
def register_trainers(register: Any) -> None:
    """Register the ``torchtune`` trainer."""
    from cruijff_kit_torchtune.trainer import TorchtuneTrainer

    register(TorchtuneTrainer)
