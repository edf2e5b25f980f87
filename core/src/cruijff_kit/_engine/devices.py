"""The GPUs a stage process sees, checked at its start: a stage that asks for GPUs never falls back
to the CPU without a word."""

from __future__ import annotations

import os

from cruijff_kit._base.errors import StageError


def cuda_problem(wanted: int) -> str | None:
    """Why this process cannot use ``wanted`` CUDA devices (the torch build, the visible devices, the
    driver), or None when it can. Imports torch."""
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen = f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "CUDA_VISIBLE_DEVICES is not set"
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return (f"torch {torch.__version__} is a CPU build (it has no CUDA support; {seen}): install a CUDA "
                "build of torch in this environment")
    if not torch.cuda.is_available():
        return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable GPU ({seen}): the "
                "devices are hidden, or the NVIDIA driver is missing or older than this CUDA build needs. "
                "`nvidia-smi` shows the driver and the newest CUDA version it supports: list the GPUs in "
                "CUDA_VISIBLE_DEVICES (or leave it unset), or install a torch build for a CUDA version the "
                "driver supports")
    count = torch.cuda.device_count()
    if count < wanted:
        return (f"this process sees {count} GPU(s) ({seen}), fewer than the {wanted} it asks for: list "
                f"{wanted} GPUs in CUDA_VISIBLE_DEVICES (or leave it unset to see all), or ask for at most {count}")
    return None


def require_gpus(wanted: int, where: str, option: str = "scheduler.resources.gpus") -> None:
    """Raise a :class:`StageError` saying why, when this process cannot use ``wanted`` GPUs (``option``:
    the spec key that asked for them)."""
    if wanted <= 0:
        return
    problem = cuda_problem(wanted)
    if problem:
        raise StageError(f"{where} asks for {wanted} GPU(s) ({option}) but {problem}. It would "
                         "run on the CPU in float32, far slower and with other numbers, so it stops here. Fix "
                         f"the environment, or set {option}: 0 to run on the CPU on purpose.")
