"""Trainer plugin `trl`: LoRA and QLoRA supervised fine-tuning with TRL's ``SFTTrainer``.

Registration imports nothing heavy: the trainer class lives in :mod:`cruijff_kit_trl.plugin`, and
torch, transformers, peft and trl are imported only when a stage trains.
"""

from __future__ import annotations

from typing import Any

from cruijff_kit import hookimpl


@hookimpl
def register_trainers(register: Any) -> None:
    """Register the ``trl`` trainer."""
    from cruijff_kit_trl.plugin import TrlTrainer

    register(TrlTrainer)
