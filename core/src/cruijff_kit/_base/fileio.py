"""Atomic file writes and locked read-modify-write, safe with many processes on a shared filesystem."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from cruijff_kit._base.errors import DataError
from cruijff_kit._base.parsing import parse_json_text


def _temp_beside(path: Path, mode: int | None) -> tuple[int, str]:
    """A new temp file in ``path``'s folder (created), with ``mode`` or the umask's bits; its fd and name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    if mode is None:
        mode = _umask_mode()  # mkstemp makes 0600; shared cluster folders need group/other read
    try:
        os.chmod(tmp, mode)
    except BaseException:
        os.close(fd)
        _unlink(tmp)
        raise
    return fd, tmp


def _unlink(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def atomic_write_text(path: Path, text: str, *, mode: int | None = None) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder and a rename (never half-written).

    ``mode`` gives the file exactly these permission bits whatever the umask (``0o700`` for a job
    script no one else may read); by default the umask applies as usual.
    """
    tmp = _write_synced_temp(path, text, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


#: Threads that write and fsync the temp files of one :func:`atomic_write_many` call at once: a file
#: system commits what arrives together in one journal commit; one file after another, each waits for its own.
WRITE_THREADS = 16


def _umask_mode() -> int:
    """The bits a new file gets under the umask (read here, once: setting the umask is not thread-safe)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_synced_temp(path: Path, text: str, mode: int | None) -> str:
    """A temp file beside ``path`` holding ``text``, fsynced; its name."""
    fd, tmp = _temp_beside(path, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        _unlink(tmp)
        raise
    return tmp


def atomic_write_many(items: Sequence[tuple[Path, str]]) -> None:
    """Write several text files, each as :func:`atomic_write_text` does, waiting for the disk once.

    Every file's temp file is written and fsynced first (in parallel threads), then each is renamed
    onto its path in the order given. So a file is never seen half-written and, after a crash, each
    file is whole: the old content or the new. A failure before the renames (a full disk, an error
    while writing) removes the temp files and leaves every file as it was; one during the renames
    leaves the files before it new and the rest old. Two items with the same path: the last one wins.
    """
    items = [(Path(p), text) for p, text in items]
    if not items:
        return
    mode = _umask_mode()
    temps: list[str] = []
    if len(items) == 1:
        temps.append(_write_synced_temp(items[0][0], items[0][1], mode))
    else:
        from concurrent.futures import ThreadPoolExecutor  # here: not a cost of every import

        with ThreadPoolExecutor(min(WRITE_THREADS, len(items))) as pool:
            futures = [pool.submit(_write_synced_temp, p, text, mode) for p, text in items]
        errors = [e for f in futures if (e := f.exception()) is not None]
        temps = [f.result() for f in futures if f.exception() is None]
        if errors:
            for tmp in temps:
                _unlink(tmp)
            raise errors[0]
    done = 0  # temp files renamed so far
    try:
        for tmp, (path, _) in zip(temps, items, strict=True):
            os.replace(tmp, path)
            done += 1
    except BaseException:
        for tmp in temps[done:]:
            _unlink(tmp)
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


def atomic_write_yaml(path: Path, data: Any, *, parsed_copy: bool = False) -> None:
    """Atomically write YAML (keys in insertion order).

    ``parsed_copy``: also keep the data as JSON beside it (:func:`parsed_copy_of`), for a file that is
    read far more often than written (each run's resolved ``spec.yaml``: ``ck status`` reads them all);
    :func:`load_written_yaml` then reads it in a tenth of the time. The copy names the YAML's hash, so
    an edit of the YAML (or a copy that a crash cut short) is noticed and the YAML itself is read.
    """
    text = dump_yaml(data)
    atomic_write_text(path, text)
    if parsed_copy:
        _write_parsed_copy(path, text.encode("utf-8"), data)


def parsed_copy_of(path: Path) -> Path:
    """Where :func:`atomic_write_yaml` keeps the parsed copy of ``path`` (a hidden file beside it)."""
    return path.with_name(f".{path.name}.parsed.json")


def _same_in_json(data: Any) -> bool:
    """Whether JSON gives ``data`` back exactly as YAML does (plain values, text keys, finite numbers)."""
    if isinstance(data, dict):
        return all(isinstance(k, str) and _same_in_json(v) for k, v in data.items())
    if isinstance(data, list):
        return all(_same_in_json(v) for v in data)
    if isinstance(data, float):
        return data == data and data not in (float("inf"), float("-inf"))
    return data is None or isinstance(data, (str, int))


def _write_parsed_copy(path: Path, raw: bytes, data: Any) -> None:
    """The parsed copy of the YAML file ``path`` (bytes ``raw``): written atomically but not synced (a copy
    lost in a crash is only a slower read); none for data that JSON cannot give back exactly."""
    import hashlib

    copy = parsed_copy_of(path)
    if not _same_in_json(data):
        copy.unlink(missing_ok=True)
        return
    fd, tmp = _temp_beside(copy, None)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"sha256": hashlib.sha256(raw).hexdigest(), "data": data}, fh)
        os.replace(tmp, copy)
    except BaseException:
        _unlink(tmp)
        raise


def _matching_copy(path: Path, raw: bytes) -> tuple[bool, Any]:
    """``(True, data)`` when ``path``'s parsed copy was made from exactly the bytes ``raw``."""
    import hashlib

    try:
        copy = json.loads(parsed_copy_of(path).read_bytes())
    except (OSError, ValueError):
        return False, None  # no copy, or one cut short: the YAML is the record
    if isinstance(copy, dict) and "data" in copy and copy.get("sha256") == hashlib.sha256(raw).hexdigest():
        return True, copy["data"]
    return False, None


def keep_parsed_copy(path: Path) -> None:
    """Give the YAML file ``path`` a parsed copy if it has none that matches its bytes (the copy is
    parsed from exactly the bytes it is keyed by)."""
    raw = path.read_bytes()
    if not _matching_copy(path, raw)[0]:
        _write_parsed_copy(path, raw, load_yaml(raw.decode("utf-8")))


def load_written_yaml(path: Path, raw: bytes | None = None) -> Any:
    """A YAML file this project wrote with ``parsed_copy`` (``raw``: its bytes, when already read): its
    parsed copy when that copy was made from exactly these bytes, else the YAML parsed (:func:`load_yaml`)."""
    raw = path.read_bytes() if raw is None else raw
    found, data = _matching_copy(path, raw)
    return data if found else load_yaml(raw.decode("utf-8"))


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


def repair_tail(path: Path) -> bool:
    """Cut a torn last line (no final newline: a kill in the middle of an append) off a JSONL file, reading
    only the file's end; True when something was cut."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    with open(path, "rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return False
        size = fh.seek(0, os.SEEK_END)
        step = 1 << 16
        pos = size
        keep = 0
        while pos > 0:
            pos = max(0, pos - step)
            fh.seek(pos)
            chunk = fh.read(min(step, size - pos))
            idx = chunk.rfind(b"\n")
            if idx != -1:
                keep = pos + idx + 1
                break
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    return True


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
