"""Dataset plugins json-instruct, json-chat, parquet and hf."""

from __future__ import annotations

from cruijff_kit import hookimpl


@hookimpl
def register_datasets(register):  # type: ignore[no-untyped-def]
    """Register the file-format dataset plugins."""
    from cruijff_kit_formats.files import JsonChat, JsonInstruct, Parquet
    from cruijff_kit_formats.hf import HfDataset

    for cls in (JsonInstruct, JsonChat, Parquet, HfDataset):
        register(cls)
