"""Learning-rate schedules with warmup as a ratio of all steps, like the Hugging Face Trainer's.

Used as ``lr_scheduler._component_`` in ``train/torchtune.yaml``: torchtune's recipes call it with the
optimizer, ``num_training_steps`` and ``last_epoch`` (for resume), and the schedule comes from the
spec's ``lr_scheduler`` and ``warmup_ratio``, so both trainers follow the same curve.
"""

from __future__ import annotations

import math
from typing import Any


def warmup_steps(num_training_steps: int, warmup_ratio: float) -> int:
    """Warmup steps for a ratio, rounded up as the Hugging Face Trainer does."""
    return math.ceil(num_training_steps * warmup_ratio)


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    if kind == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown lr schedule {kind!r}")


def warmup_schedule(optimizer: Any, num_training_steps: int, kind: str = "cosine", warmup_ratio: float = 0.0,
                    last_epoch: int = -1) -> Any:
    """A ``LambdaLR`` following :func:`lr_factor`."""
    from torch.optim.lr_scheduler import LambdaLR

    warmup = warmup_steps(num_training_steps, warmup_ratio)
    return LambdaLR(optimizer, lambda step: lr_factor(step, num_training_steps, warmup, kind), last_epoch)
