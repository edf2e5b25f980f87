"""Reading the texts of ``ck embed`` and ``ck score-options`` from a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cruijff_kit._base.errors import DataError
from cruijff_kit._base.parsing import parse_json_text


def read_texts(path: str | Path, field: str = "input", id_field: str = "id") -> tuple[list[Any], list[str]]:
    """(ids, texts) from a ``.txt`` file (one text a line), a ``.jsonl`` file or a ``.json`` list of rows.

    Rows are objects with the text under ``field`` and an optional id under ``id_field`` (default: the
    row number). A ``.json`` object with a ``test`` list (our json-instruct form) uses that split.
    """
    p = Path(path)
    if p.suffix == ".txt":
        texts = [line for line in p.read_text().splitlines() if line.strip()]
        return list(range(len(texts))), texts
    try:
        if p.suffix == ".jsonl":
            rows = [parse_json_text(line, file=str(p), line=n)
                    for n, line in enumerate(p.read_text().splitlines(), start=1) if line.strip()]
        else:
            data = parse_json_text(p.read_text(), file=str(p))
            rows = data.get("test", []) if isinstance(data, dict) else data
    except json.JSONDecodeError as exc:
        raise DataError(f"{p}: not valid JSON ({exc}). Use .txt (one text a line), .jsonl or .json rows.") from None
    ids, texts = [], []
    for i, row in enumerate(rows):
        if isinstance(row, str):
            ids.append(i)
            texts.append(row)
            continue
        if not isinstance(row, dict) or not isinstance(row.get(field), str):
            raise DataError(f"{p}: row {i} has no text field {field!r}. Name the field with --field.")
        ids.append(row.get(id_field, i))
        texts.append(row[field])
    return ids, texts


def is_embeddings_file(path: Path) -> bool:
    """True when ``path`` is a parquet file ``ck embed`` wrote (its metadata names base, adapter and pooling)."""
    try:
        import pyarrow.parquet as pq

        metadata = pq.read_schema(path).metadata or {}
    except Exception:  # not parquet, unreadable: not ours
        return False
    return {b"base", b"adapter", b"pooling"} <= set(metadata)


def is_scores_file(path: Path) -> bool:
    """True when the first line of ``path`` is a row ``ck score-options`` writes (id, probabilities, mass, predicted)."""
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
        row = parse_json_text(first, file=str(path))
    except (OSError, UnicodeDecodeError, ValueError, DataError):
        return False
    return isinstance(row, dict) and set(row) == {"id", "probabilities", "mass", "predicted"}


def check_output(path: str | Path, command: str, overwrite: bool) -> None:
    """Before loading a model: refuse an output file this command did not write (unless ``overwrite``)."""
    from cruijff_kit._base.ownership import check_writable

    ours = is_embeddings_file if command == "ck embed" else is_scores_file
    check_writable(Path(path), command=command, overwrite=overwrite, ours=lambda p: p.is_file() and ours(p))
