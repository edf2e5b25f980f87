"""Where hub models live on this machine, read from the hub's own cache layout only.

A spec that names a model by hub id (``model: {path: org/name}``) resolves at plan time to the cached
snapshot (``models--ORG--NAME/{refs,snapshots}``) inside the profile's ``models_cache`` folder, else
the hub library's default cache: no network, no heavy import, so runs work on compute nodes with
``HF_HUB_OFFLINE=1``. ``ck models download`` fills that cache.

A snapshot that is not a complete download is never resolved to (docs/reliability.md, "Every network
call has a total deadline"): one with a file whose blob is missing, one whose repository holds
``.incomplete`` blobs of a download that stopped midway, and one named by exact commit that nothing
records as complete (no entry in :data:`RECORD`, no ref naming it) is a :class:`CkError` that says to
run ``ck models download``, which finishes and verifies it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from cruijff_kit._base.errors import CkError, clip
from cruijff_kit._base.hubcachedir import hub_cache_dir

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")

#: The record of verified downloads that ``ck models download`` keeps in the cache folder
#: (``{hub_id: {revision: {"commit": ..., "verified_at": ...}}}``), written only after verification.
RECORD = "cruijff_kit_models.json"


def looks_like_hub_id(path: str) -> bool:
    """``org/name`` (not absolute, not ``./x``, exactly one slash)."""
    return bool(_HUB_ID.match(path)) and not path.startswith((".", "~"))


def default_hub_cache() -> Path:
    """The hub library's default cache folder (``HF_HUB_CACHE``, ``HUGGINGFACE_HUB_CACHE``, ``HF_HOME/hub``,
    ``~/.cache/huggingface/hub``), read from the environment on each call by
    :func:`cruijff_kit._base.hubcachedir.hub_cache_dir`."""
    return hub_cache_dir()


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
    default ``main``) in ``cache``, or None when it is not there.

    A snapshot there that is not a complete download (see :func:`snapshot_problem`) is a
    :class:`CkError` naming the folder and ``ck models download``, never a model to run on."""
    repo = repo_folder(cache, hub_id)
    rev = revision or "main"
    snap = None
    if _COMMIT.match(rev) and (repo / "snapshots" / rev).is_dir():
        snap = repo / "snapshots" / rev
    else:
        ref = repo / "refs" / rev
        named = repo / "snapshots" / _ref_commit(ref, hub_id, rev) if ref.is_file() else None
        snap = named if named is not None and named.is_dir() else None
    if snap is None:
        return None
    problem = snapshot_problem(Path(cache), hub_id, snap)
    if problem:
        again = f"ck models download {hub_id}" + ("" if rev == "main" else f" --revision {rev}")
        raise CkError(f"{snap} is not a complete download of {hub_id} at `{rev}`: {problem}. A run never uses a "
                      f"half-downloaded model. `{again}` finishes it (files already there are not fetched again) "
                      "and verifies it.")
    return snap


def snapshot_problem(cache: Path, hub_id: str, snap: Path) -> str | None:
    """Why the snapshot folder ``snap`` of ``hub_id`` is not a complete download, or None.

    Complete: every file in it is there (no link to a missing blob), and ``ck models download`` recorded
    its commit as verified in :data:`RECORD`; a cache filled by the hub library itself (no record) counts
    as complete when no blob of the repository is ``.incomplete`` and a ref under ``refs/`` names it.
    """
    for path in sorted(snap.rglob("*")):
        if path.is_symlink() and not path.exists():
            return f"its file {path.relative_to(snap)} links to a blob that is not there"
    if snap.name in _recorded_commits(cache, hub_id):
        return None
    repo = snap.parent.parent
    partial = sorted((repo / "blobs").glob("*.incomplete")) if (repo / "blobs").is_dir() else []
    if partial:
        return (f"{len(partial)} file(s) in {repo / 'blobs'} end in .incomplete (a download stopped midway) "
                f"and {cache / RECORD} does not record it as downloaded")
    refs = repo / "refs"
    named = refs.is_dir() and any(_reads(ref) == snap.name for ref in refs.rglob("*") if ref.is_file())
    if not named:
        return f"{cache / RECORD} does not record it as downloaded and no ref under {refs} names it"
    return None


def _reads(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _recorded_commits(cache: Path, hub_id: str) -> set[str]:
    """The commits of ``hub_id`` that :data:`RECORD` lists as verified (none when it is missing or unreadable)."""
    path = Path(cache) / RECORD
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    entries = data.get(hub_id) if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        return set()
    return {str(e["commit"]) for e in entries.values() if isinstance(e, dict) and "commit" in e}


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
