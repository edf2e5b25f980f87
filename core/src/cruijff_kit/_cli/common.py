"""Helpers shared by the ``ck`` area modules: the rich console, ``--set`` help, loading a spec, ``--json``."""

from __future__ import annotations

from typing import Any

from cruijff_kit._base.console import console  # noqa: F401 - shared by the area modules
from cruijff_kit._base.jsonout import json_flag, json_output  # noqa: F401 - shared by the area modules
from cruijff_kit._engine.spec import (  # noqa: F401 - shared by the area modules
    ALLOW_LARGE_SWEEP_HELP,
    ALLOW_MANY_EPOCHS_HELP,
    SET_HELP,
)


def load(spec: str, sets: tuple[str, ...], scheduler: str | None = None) -> Any:
    """Load SPEC with ``--set`` overrides; ``scheduler`` replaces the spec's scheduler plugin (keeping resources)."""
    from cruijff_kit._engine.spec import load_spec, parse_overrides

    overrides = parse_overrides(sets)
    loaded = load_spec(spec, overrides)
    if scheduler:
        resources = (loaded.raw.get("scheduler") or {}).get("resources")
        section: dict[str, Any] = {"plugin": scheduler}
        if resources is not None:
            section["resources"] = resources
        loaded.raw["scheduler"] = section
        loaded.overrides = {k: v for k, v in loaded.overrides.items() if not k.startswith("scheduler")}
        loaded.overrides["scheduler"] = section
    return loaded

