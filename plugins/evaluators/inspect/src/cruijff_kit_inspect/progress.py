"""Samples finished, reported to the stage's progress display while an eval runs.

An inspect hook counts every finished sample of the eval the evaluator is running and advances the
progress object it was given (``ctx.progress(total, "samples")``). It is idle outside
:func:`reporting`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from inspect_ai.hooks import Hooks, SampleEnd, hooks

__all__ = ["reporting"]

_LOCK = threading.Lock()
_ACTIVE: list[Any] = []


@hooks(name="cruijff_kit_sample_progress", description="cruijff-kit: count finished samples for the progress display")
class SampleProgress(Hooks):
    """Advances the active progress object by one per finished sample."""

    def enabled(self) -> bool:
        """On only while the evaluator runs an eval."""
        return bool(_ACTIVE)

    async def on_sample_end(self, data: SampleEnd) -> None:
        """One more sample finished."""
        with _LOCK:
            bar = _ACTIVE[-1] if _ACTIVE else None
        if bar is not None:
            bar.advance()


@contextmanager
def reporting(bar: Any) -> Iterator[Any]:
    """Within this block, every finished sample calls ``bar.advance()``."""
    with _LOCK:
        _ACTIVE.append(bar)
    try:
        yield bar
    finally:
        with _LOCK:
            _ACTIVE.remove(bar)
