"""Dataset helpers for dataset plugins and ``ck data``: canonical rows (instruct and chat) with checks
that name the file, the split and the row; readers of JSON, JSONL, chat folders, Parquet and Arrow;
and provenance sidecars for derived files.

Heavy libraries (datasets, pyarrow) are imported inside the functions that need them.
"""

from cruijff_kit.data._canonical import (
    CANONICAL_COLUMNS,
    CHAT,
    INSTRUCT,
    as_prompt,
    canonical_row,
    canonical_rows,
    check_rows,
    check_run_splits,
    check_template,
    limit_for,
    map_splits,
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

__all__ = [
    "CANONICAL_COLUMNS", "CHAT", "INSTRUCT", "ArrowDir", "ChatFolder", "Columns", "FileDatasetConfig", "InstructFile",
    "ParquetFolder", "Source", "SourceDataset", "TableSource", "as_prompt", "canonical_row", "canonical_rows",
    "check_rows", "check_run_splits", "check_template", "content_key", "describe_file", "file_identity",
    "find_cached", "limit_for", "map_splits", "open_source", "order_splits", "output_path", "parse_json",
    "parse_jsonl", "read_meta", "read_text", "sha256_file", "shown", "split_target", "suggest",
    "to_dataset_dict", "write_with_meta",
]
