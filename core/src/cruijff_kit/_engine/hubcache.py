"""Where hub models live on this machine, read from the hub's own cache layout only.

A spec that names a model by hub id (``model: {path: org/name}``) resolves at plan time to the cached
snapshot (``models--ORG--NAME/{refs,snapshots}``) inside the profile's ``models_cache`` folder, else
the hub library's default cache: no network, no heavy import, so runs work on compute nodes with
``HF_HUB_OFFLINE=1``. ``ck models download`` fills that cache.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cruijff_kit._base.errors import CkError, clip

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def looks_like_hub_id(path: str) -> bool:
    """``org/name`` (not absolute, not ``./x``, exactly one slash)."""
    return bool(_HUB_ID.match(path)) and not path.startswith((".", "~"))


def default_hub_cache() -> Path:
    """The hub library's default cache folder (``HF_HUB_CACHE``, ``HF_HOME/hub``, ``~/.cache/huggingface/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def models_cache(spec_dir: Path | None = None) -> Path:
    """The cache folder: the profile's ``models_cache`` if set, else the hub library's default."""
    from cruijff_kit._engine.profile import load_profile

    path, data = load_profile(spec_dir)
    value = data.get("models_cache")
    if value:
        p = Path(str(value)).expanduser()
        if not p.is_absolute() and path is not None:
            p = path.parent / p
        return p
    return default_hub_cache()


def repo_folder(cache: Path, hub_id: str) -> Path:
    """``cache/models--ORG--NAME``."""
    return Path(cache) / ("models--" + hub_id.replace("/", "--"))


def find_cached(hub_id: str, cache: Path, revision: str | None = None) -> Path | None:
    """The snapshot folder of ``hub_id`` at ``revision`` (a branch/tag under ``refs/`` or a commit;
    default ``main``) in ``cache``, or None when it is not there."""
    repo = repo_folder(cache, hub_id)
    rev = revision or "main"
    if _COMMIT.match(rev) and (repo / "snapshots" / rev).is_dir():
        return repo / "snapshots" / rev
    ref = repo / "refs" / rev
    if ref.is_file():
        snap = repo / "snapshots" / _ref_commit(ref, hub_id, rev)
        if snap.is_dir():
            return snap
    return None


def _ref_commit(ref: Path, hub_id: str, rev: str) -> str:
    """The commit a ``refs/<rev>`` file names; an empty, non-text or other file is a :class:`CkError`
    (never a path made of whatever the file holds)."""
    raw = ref.read_bytes()
    try:
        commit = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        commit = None
    if commit is None or not _COMMIT.match(commit):
        reason = ("it is empty" if not raw.strip() else "it is not text" if commit is None
                  else f"it holds {clip(commit, 60)!r}, not a 40-hex commit")
        raise CkError(f"{ref} is damaged: {reason}. It names the commit of {hub_id} at `{rev}` in the hub cache. "
                      f"`ck models download {hub_id}"
                      f"{'' if rev == 'main' else f' --revision {rev}'}` writes it again.")
    return commit
