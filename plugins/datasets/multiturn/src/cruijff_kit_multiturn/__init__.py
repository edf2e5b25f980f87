"""Dataset plugin `multiturn`: best response per turn from simulated conversations."""

from __future__ import annotations

from typing import Any

from cruijff_kit import hookimpl


@hookimpl
def register_datasets(register: Any) -> None:
    """Register the `multiturn` dataset."""
    from cruijff_kit_multiturn.plugin import MultiturnDataset

    register(MultiturnDataset)
