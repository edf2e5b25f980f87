"""Content-addressed generated datasets: one hash names a file, a ``.meta.json`` sidecar says where it came from.

A generator (``ck data tabular``, ``ck data synthetic``) computes a :func:`content_key` from everything
that decides its output (its settings, the sha256 of every input file, the generator's version). The
output is written as ``<prefix>-<key>.json`` with a sidecar ``<prefix>-<key>.meta.json`` holding the
key, the inputs with their sha256, row counts, the seed and the settings. The sidecar is written last,
so a file with a sidecar whose key matches is complete: :func:`find_cached` returns it and nothing is
generated again. Both files are written atomically and hold no timestamps, so the same inputs always give
byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cruijff_kit._base.errors import DataError
from cruijff_kit._base.fileio import atomic_write_text
from cruijff_kit._base.parsing import parse_json_text
from cruijff_kit._base.secrets import scrub

#: Characters of the sha256 hex digest used in file names.
KEY_CHARS = 16
META_SUFFIX = ".meta.json"


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in chunks); a missing or unreadable file is a DataError."""
    p = Path(path)
    h = hashlib.sha256()
    try:
        with p.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except IsADirectoryError:
        raise DataError(f"{p} is a folder; a file was expected here.") from None
    except OSError as exc:
        raise DataError(f"{p}: cannot be read ({exc.strerror or exc}). Check the path and its permissions.") from None
    return h.hexdigest()


def content_key(*parts: Any) -> str:
    """A short hex key of JSON-able parts (settings, file hashes, versions)."""
    return sha256_bytes(canonical_json(list(parts)).encode("utf-8"))[:KEY_CHARS]


def sidecar_path(output: str | Path) -> Path:
    """``data/x.json`` -> ``data/x.meta.json``."""
    p = Path(output)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    return p.with_name(stem + META_SUFFIX)


def output_path(dst: str | Path, prefix: str, key: str) -> Path:
    """Where an output goes: ``dst`` itself when it names a ``.json`` file, else ``dst/<prefix>-<key>.json``."""
    d = Path(dst)
    if d.suffix == ".json":
        return d
    return d / f"{prefix}-{key}.json"


def read_meta(output: str | Path) -> dict[str, Any] | None:
    """The sidecar of an output as a dict, or None when there is none (or it is unreadable)."""
    path = sidecar_path(output)
    try:
        value = parse_json_text(path.read_text(encoding="utf-8"), file=str(path))
    except (OSError, ValueError, DataError):  # a sidecar that cannot be trusted is no sidecar
        return None
    return value if isinstance(value, dict) else None


def find_cached(output: str | Path, key: str) -> Path | None:
    """``output`` when it exists and its sidecar records ``key`` (a finished, identical generation)."""
    p = Path(output)
    meta = read_meta(p)
    if p.is_file() and meta is not None and meta.get("key") == key:
        return p
    return None


def dumps_splits(splits: Mapping[str, list[dict[str, Any]]]) -> str:
    """Our JSON instruct format as text, byte-stable: ``{"train": [...], ...}``, one row per line."""
    lines = ["{"]
    names = list(splits)
    for i, name in enumerate(names):
        rows = splits[name]
        lines.append(f"{json.dumps(name)}: [")
        for j, row in enumerate(rows):
            lines.append(" " + json.dumps(row, ensure_ascii=False) + ("," if j < len(rows) - 1 else ""))
        lines.append("]" + ("," if i < len(names) - 1 else ""))
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_with_meta(output: str | Path, splits: Mapping[str, list[dict[str, Any]]], meta: Mapping[str, Any]
                    ) -> Path:
    """Write the splits (JSON instruct format) and then the sidecar; returns the output path.

    ``meta`` must hold ``key``; ``rows`` (per split) and ``sha256`` (of the written data) are added.
    Secret values from the environment are scrubbed from the sidecar.
    """
    if "key" not in meta:
        raise ValueError("meta needs the content key")
    out = Path(output)
    text = dumps_splits(splits)
    full = {**meta, "output": out.name, "sha256": sha256_bytes(text.encode("utf-8")),
            "rows": {name: len(rows) for name, rows in splits.items()}}
    atomic_write_text(out, text)
    sidecar = json.dumps(scrub(full), indent=2, ensure_ascii=False, default=str) + "\n"
    atomic_write_text(sidecar_path(out), sidecar)
    return out


def describe_file(path: str | Path, *, base: str | Path | None = None) -> dict[str, str]:
    """``{"path", "sha256"}`` of an input file for a sidecar (path relative to ``base`` when inside it)."""
    p = Path(path)
    shown = str(p)
    if base is not None:
        try:
            shown = str(p.resolve().relative_to(Path(base).resolve()))
        except ValueError:
            shown = str(p.resolve())
    return {"path": shown, "sha256": sha256_file(p)}
