"""``ck archive``: copy an experiment without bulky artifacts, verify the copy, optionally remove the original."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cruijff_kit._base.errors import CkError
from cruijff_kit._base.ownership import check_apart

#: Folder names never copied: resumable trainer state and caches.
ALWAYS_SKIPPED = {"state", "__pycache__", ".cache"}
#: Files that are model weights (skipped unless adapters are kept).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass
class ArchiveReport:
    """What was copied and what was left out."""

    copied: int
    skipped: int
    bytes_copied: int
    bytes_skipped: int
    removed_original: bool


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _skip(rel: Path, keep_adapters: bool) -> bool:
    if any(part in ALWAYS_SKIPPED for part in rel.parts):
        return True
    if rel.name.endswith(".lock"):
        return True
    is_weight = rel.suffix in WEIGHT_SUFFIXES
    in_adapter = "adapter" in rel.parts
    return is_weight and not (keep_adapters and in_adapter)


def archive(src: Path, dest: Path, *, keep_adapters: bool = False, remove: bool = False) -> ArchiveReport:
    """Copy ``src`` (an experiment folder) to ``dest``/<name>, verify every file by hash, then
    remove ``src`` only when ``remove`` and the verification passed."""
    src = Path(src).resolve()
    if not (src / "runs").is_dir():
        raise CkError(f"{src} is not an experiment folder (no runs/ inside). Give <output_dir>/<experiment>.")
    target = Path(dest).resolve() / src.name
    check_apart(src, target, command="ck archive")
    if os.path.lexists(target):
        raise CkError(f"ck archive: {target} already exists; an archive never writes over anything (there is "
                      "no flag for it). Choose another DEST, or move that folder away first.")
    copied = skipped = bytes_copied = bytes_skipped = 0
    pairs: list[tuple[Path, Path]] = []
    for path in sorted(src.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(src)
        if _skip(rel, keep_adapters):
            skipped += 1
            bytes_skipped += path.stat().st_size
            continue
        out = target / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out)
        pairs.append((path, out))
        copied += 1
        bytes_copied += path.stat().st_size
    bad = [str(a.relative_to(src)) for a, b in pairs if _sha256(a) != _sha256(b)]
    if bad:
        raise CkError(f"the copy in {target} differs from the original for {bad[:5]}; the original is kept.")
    if remove:
        shutil.rmtree(src)
    return ArchiveReport(copied, skipped, bytes_copied, bytes_skipped, remove)
