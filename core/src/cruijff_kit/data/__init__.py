"""Dataset helpers for dataset plugins and ``ck data``: canonical rows (instruct and chat) with checks
that name the file, the split and the row; readers of JSON, JSONL, chat folders, Parquet and Arrow;
provenance sidecars for derived files; and the synthetic sequence tasks of ``ck data synthetic``.

Heavy libraries (datasets, pyarrow) are imported inside the functions that need them.
"""

from cruijff_kit.data._canonical import (
    CANONICAL_COLUMNS,
    CHAT,
    INSTRUCT,
    as_prompt,
    canonical_row,
    canonical_rows,
    check_chat_row,
    check_instruct_row,
    check_rows,
    check_run_splits,
    check_template,
    limit_for,
    map_splits,
    render_instruct,
    shown,
    split_target,
    suggest,
    to_dataset_dict,
)
from cruijff_kit.data._provenance import (
    content_key,
    describe_file,
    find_cached,
    output_path,
    read_meta,
    sha256_file,
    write_with_meta,
)
from cruijff_kit.data._readers import (
    ArrowDir,
    ChatFolder,
    Columns,
    FileDatasetConfig,
    InstructFile,
    ParquetFolder,
    Source,
    SourceDataset,
    TableSource,
    file_identity,
    open_source,
    order_splits,
    parse_json,
    parse_jsonl,
    read_text,
)
from cruijff_kit.data._synthetic import SyntheticSettings, generate, settings_from, write_synthetic

__all__ = [
    "ArrowDir", "CANONICAL_COLUMNS", "CHAT", "ChatFolder", "Columns", "FileDatasetConfig", "INSTRUCT",
    "InstructFile", "ParquetFolder", "Source", "SourceDataset", "SyntheticSettings", "TableSource",
    "as_prompt", "canonical_row", "canonical_rows", "check_chat_row", "check_instruct_row", "check_rows",
    "check_run_splits", "check_template", "content_key", "describe_file", "file_identity", "find_cached",
    "generate", "limit_for", "map_splits", "open_source", "order_splits", "output_path", "parse_json",
    "parse_jsonl", "read_meta", "read_text", "render_instruct", "settings_from", "sha256_file", "shown",
    "split_target", "suggest", "to_dataset_dict", "write_synthetic", "write_with_meta",
]
