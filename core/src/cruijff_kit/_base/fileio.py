"""Atomic file writes and locked read-modify-write, safe with many processes on a shared filesystem."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from cruijff_kit._base.errors import DataError
from cruijff_kit._base.parsing import parse_json_text


def atomic_write_text(path: Path, text: str, *, mode: int | None = None) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder and a rename (never half-written).

    ``mode`` gives the file exactly these permission bits whatever the umask (``0o700`` for a job
    script no one else may read); by default the umask applies as usual.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    if mode is None:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask  # mkstemp makes 0600; shared cluster folders need group/other read
    os.chmod(tmp, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    """Atomically write pretty JSON."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with the C loader when available (10x faster on large run specs).

    For YAML cruijff-kit wrote itself (each run's resolved ``spec.yaml``); read a user's file with
    :func:`cruijff_kit._base.yamlfile.read_yaml`, which refuses duplicate keys, deep nesting and alias bombs.
    """
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader


def dump_yaml(data: Any) -> str:
    """``yaml.safe_dump`` (C dumper when available), keys in insertion order."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def atomic_write_yaml(path: Path, data: Any) -> None:
    """Atomically write YAML (keys in insertion order)."""
    atomic_write_text(path, dump_yaml(data))


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``<path>.lock`` for read-modify-write cycles."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=120):
        yield


def update_json(path: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Locked read-modify-write of a JSON object file; returns the new content."""
    with locked(path):
        data = read_json(path, default={})
        change(data)
        atomic_write_json(path, data)
        return data


def read_json(path: Path, default: Any = None) -> Any:
    """Read JSON, or ``default`` when the file does not exist.

    A file that is not JSON, repeats a key in an object or nests deeper than 100 levels raises a
    :class:`DataError` naming it.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return default
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text, so not JSON. Fix or replace the file.") from None
    try:
        return parse_json_text(text, file=str(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}. Fix or "
                        "replace the file (`python -m json.tool FILE` shows the spot).") from None


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line with a single write (whole lines even with concurrent appenders)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(row, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file, skipping a torn last line left by a crash.

    A line that repeats a key in an object or nests deeper than 100 levels raises a :class:`DataError`
    naming the file and the line.
    """
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text, so not JSON lines. Fix or replace the file.") from None
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(parse_json_text(line, file=str(path), line=n))
        except json.JSONDecodeError:
            continue
    return rows
