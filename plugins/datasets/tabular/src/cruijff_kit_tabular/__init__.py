"""Dataset plugin `tabular`: social data tables rendered as LLM tasks; also `ck data tabular`."""

from __future__ import annotations

from typing import Any

from cruijff_kit import hookimpl


@hookimpl
def register_datasets(register: Any) -> None:
    """Register the `tabular` dataset plugin."""
    from cruijff_kit_tabular.plugin import TabularDataset

    register(TabularDataset)


@hookimpl
def register_commands(cli: Any) -> None:
    """Add `ck data tabular` to the `data` group."""
    from cruijff_kit_tabular.command import tabular_command

    group = cli.commands.get("data") if hasattr(cli, "commands") else None
    if group is not None and "tabular" not in group.commands:
        group.add_command(tabular_command)
