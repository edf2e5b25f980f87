"""``ck data convert``: JSON (instruct file or chat folder) or a ``save_to_disk`` dataset -> parquet folder.

The parquet folder holds one ``<split>.parquet`` per split with the rows as they were (instruct rows keep
``input``/``output`` and extras; chat rows keep ``messages`` reduced to ``role``/``content``). Every row is
checked first, so the ``parquet`` dataset plugin reads the result back to the same canonical dataset as the
source gives.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from cruijff_kit._base.errors import DataError
from cruijff_kit._base.ownership import check_apart, check_writable, remove_path
from cruijff_kit.data._canonical import paused_gc, shown, uniform
from cruijff_kit.data._readers import ArrowDir, ChatFolder, InstructFile, ParquetFolder, Source, open_source

_SAFE_SPLIT = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]*$")


def _source(src: Path) -> Source:
    source = open_source(src)
    if isinstance(source, ParquetFolder):
        raise DataError(f"{shown(src)} already holds parquet files; nothing to convert. Point the `parquet` "
                        "dataset plugin at it.")
    assert isinstance(source, InstructFile | ChatFolder | ArrowDir)
    source.ensure()
    return source


#: Key of the parquet schema metadata that marks a file written by ``ck data convert``.
WRITTEN_BY = b"cruijff_kit.written_by"


def _check_destination(dst: Path, src: Path, overwrite: bool) -> None:
    if dst.resolve() == src.resolve():
        raise DataError(f"{shown(dst)}: the destination is the source. Choose a new folder.")
    check_apart(src, dst, command="ck data convert", error=DataError)
    check_writable(dst, command="ck data convert", overwrite=overwrite, ours=converted_folder, error=DataError)


def converted_folder(folder: Path) -> bool:
    """True when ``folder`` holds only ``.parquet`` files that ``ck data convert`` wrote (their metadata)."""
    import pyarrow.parquet as pq

    files = list(folder.iterdir()) if folder.is_dir() else []
    try:
        return bool(files) and all(p.suffix == ".parquet" and p.is_file() and not p.is_symlink()
                                   and WRITTEN_BY in (pq.read_schema(p).metadata or {}) for p in files)
    except Exception:  # an unreadable file is not one we wrote
        return False


def _write_split(rows: list[dict], path: Path, split: str, file: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pa.Table.from_pylist(uniform(rows))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"{shown(file)}: split `{split}`: the rows' extra columns do not have one type per "
                        f"column ({exc}). Give each column the same type in every row.") from None
    metadata = {**(table.schema.metadata or {}), WRITTEN_BY: b"ck data convert"}
    pq.write_table(table.replace_schema_metadata(metadata), path)


def convert_to_parquet(src: Path, dst: Path, *, overwrite: bool = False) -> dict[str, int]:
    """Write ``dst/<split>.parquet`` for every split of ``src``; return the rows written per split.

    ``src`` is a JSON instruct file, a folder of chat ``.json``/``.jsonl`` files, or a folder written by
    ``save_to_disk``. ``dst`` must not exist, be empty or hold an earlier conversion (replaced); anything
    else is replaced only with ``overwrite``. It appears only once every split is written, and never lies
    inside ``src`` nor holds it.
    """
    src, dst = Path(src), Path(dst)
    source = _source(src)
    _check_destination(dst, src, overwrite)
    splits = source.split_names()
    for split in splits:
        if not _SAFE_SPLIT.match(split):
            raise DataError(f"{shown(src)}: split name `{split}` cannot be a file name. Use letters, digits, "
                            "`_`, `-` and `.` only.")
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    written: dict[str, int] = {}
    try:
        for split in splits:
            with paused_gc():
                part = source.rows(split)
                _write_split(part.rows, tmp / f"{split}.parquet", split, part.file)
            written[split] = len(part.rows)
        remove_path(dst)
        tmp.rename(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written
