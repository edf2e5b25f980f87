"""May a command write here? The one rule every command that writes a user-named destination follows.

A destination may be written when it is absent, an empty folder, or something cruijff-kit wrote itself
(a folder holding :data:`OWNER_FILE`, or whatever the command's own ``ours`` check recognises: a
provenance sidecar, a model marker, a simulation sidecar). Anything else is refused with one paragraph
naming the path, why, and the flag that allows it (:data:`OVERWRITE_FLAG`), unless that flag was given.
A command also never removes a source that holds its own destination, nor writes a destination inside
its source (:func:`check_apart`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from cruijff_kit._base.errors import CkError

#: The one flag name that lets a command replace what cruijff-kit did not write.
OVERWRITE_FLAG = "--overwrite"
#: Written into every folder a command creates as a whole (exports, parquet folders, tiny models, ...).
OWNER_FILE = ".written-by-cruijff-kit"


def owned_folder(path: Path) -> bool:
    """True when ``path`` is a real folder (not a link) holding :data:`OWNER_FILE`."""
    p = Path(path)
    return p.is_dir() and not p.is_symlink() and (p / OWNER_FILE).is_file()


def _empty_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def _what(path: Path) -> str:
    if path.is_symlink():
        return "a symbolic link"
    if path.is_dir():
        return "not an empty folder"
    return "a file"


def check_writable(path: str | Path, *, command: str, overwrite: bool = False,
                   ours: Callable[[Path], bool] | None = None, flag: str = OVERWRITE_FLAG,
                   error: type[CkError] = CkError) -> bool:
    """Refuse (a :class:`CkError`) to write over ``path`` that cruijff-kit did not write.

    Allowed: ``path`` is absent, an empty folder, a folder holding :data:`OWNER_FILE`, recognised by
    ``ours`` (never called on a symbolic link), or ``overwrite`` is true. Returns True when ``path``
    exists and is neither empty nor ours (so the caller replaces a foreign thing, as ``flag`` asked).
    ``error`` is the kind of :class:`CkError` raised (e.g. ``DataError`` for datasets).
    """
    p = Path(path)
    if not os.path.lexists(p) or _empty_folder(p) or owned_folder(p):
        return False
    if not p.is_symlink() and ours is not None and ours(p):
        return False
    if overwrite:
        return True
    raise error(f"{command}: {p} already exists and is {_what(p)}, and cruijff-kit did not write it, so it is "
                f"left as it is. Choose another destination, or pass {flag} to replace it.")


def claim_folder(folder: str | Path, *, command: str, overwrite: bool = False,
                 ours: Callable[[Path], bool] | None = None, flag: str = OVERWRITE_FLAG) -> Path:
    """Check ``folder`` with :func:`check_writable`, create it and mark it as ours; returns it.

    A foreign file (or link) at ``folder`` that ``overwrite`` allows to replace is removed first; a
    foreign folder is kept and written into.
    """
    p = Path(folder)
    foreign = check_writable(p, command=command, overwrite=overwrite, ours=ours, flag=flag)
    if foreign and (p.is_symlink() or not p.is_dir()):
        p.unlink()
    p.mkdir(parents=True, exist_ok=True)
    (p / OWNER_FILE).write_text(f"Written by `{command}`; it may write here again.\n", encoding="utf-8")
    return p


def remove_path(path: str | Path) -> None:
    """Remove a file, a link (never what it points to) or a folder tree; nothing when absent."""
    p = Path(path)
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.is_dir():
        shutil.rmtree(p)


def inside(inner: str | Path, outer: str | Path) -> bool:
    """True when ``inner`` is ``outer`` or lies inside it (both resolved, links followed)."""
    a, b = Path(inner).resolve(), Path(outer).resolve()
    return a == b or b in a.parents


def check_apart(source: str | Path, destination: str | Path, *, command: str,
                error: type[CkError] = CkError) -> None:
    """Refuse (``error``) a destination that is the source, lies inside it, or holds it."""
    if inside(destination, source) or inside(source, destination):
        how = ("is" if Path(source).resolve() == Path(destination).resolve()
               else "lies inside" if inside(destination, source) else "holds")
        raise error(f"{command}: the destination {destination} {how} the source {source}; writing there "
                    "could copy the source into itself or remove it with the copy. Choose a destination "
                    "outside the source.")
