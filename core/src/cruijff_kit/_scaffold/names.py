"""Names derived from the one the user gives (``my-data`` -> package ``ck_my_data``, class ``MyData``)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from cruijff_kit._base.errors import SpecError

_NAME = re.compile(r"^[a-z][a-z0-9]*([-_][a-z0-9]+)*$")


@dataclass(frozen=True)
class Names:
    """Every spelling of a plugin name the templates need."""

    name: str

    @property
    def package(self) -> str:
        """The import name, e.g. ``ck_my_data``."""
        return "ck_" + self.name.replace("-", "_")

    @property
    def dist(self) -> str:
        """The distribution name, e.g. ``ck-my-data``."""
        return "ck-" + self.name.replace("_", "-")

    @property
    def cls(self) -> str:
        """The class name, e.g. ``MyData``."""
        return "".join(part.capitalize() for part in re.split(r"[-_]", self.name))


def check_name(name: str, what: str) -> Names:
    """Refuse names that are not lower-case words joined by ``-`` or ``_``."""
    if not _NAME.match(name):
        raise SpecError(f"{name!r} is not a usable {what} name.", file="ck new",
                        hint="Use lower-case letters and digits, words joined by - or _ (e.g. my-data).")
    return Names(name)


def write_files(root: Path, files: dict[str, str]) -> None:
    """Write ``files`` (relative path -> text) under ``root``; refuse to overwrite anything.

    A path that exists in any form (a dangling symbolic link too) is refused before anything is written,
    and each file is created exclusively, so a scaffold never writes through a link or over a file.
    """
    existing = [rel for rel in files if os.path.lexists(root / rel)]
    if existing:
        raise SpecError(f"would overwrite {existing[0]}.", file=str(root),
                        hint="Choose another name or folder, or remove the old files first (scaffolds never "
                             "overwrite; there is no flag for it).")
    for rel, text in files.items():
        write_new(root / rel, text)


def write_new(path: Path, text: str) -> None:
    """Create ``path`` with ``text``; a SpecError when anything (a link too) is already there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x", encoding="utf-8") as fh:  # O_EXCL: never follows a symbolic link
            fh.write(text)
    except FileExistsError:
        raise SpecError("exists already; scaffolds never overwrite (there is no flag for it).", file=str(path),
                        hint="Choose another name or folder, or remove the old file first.") from None
