"""Models from the model hub: ``ck models download`` and ``ck models list``.

Models live in the hub's own cache layout (``models--ORG--NAME/{blobs,refs,snapshots}``) inside the
folder named by the profile key ``models_cache`` (cluster scratch space), else the hub library's
default cache. A spec that names a model by hub id (``model: {path: org/name}``) resolves at plan time
to the cached snapshot by reading that layout only (no network, no heavy import), so runs work on
compute nodes with ``HF_HUB_OFFLINE=1``.

Downloads resume where they stopped, use the token in ``HF_TOKEN`` (never written anywhere), and are
verified by the hub library's ``verify_repo_checksums`` against the hub's file hashes (sha256 for large
files, the git blob id for small ones), also for files already in the cache.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cruijff_kit._api.retry import DeadlineExceeded, DownloadStalled
from cruijff_kit._base.errors import CkError, SpecError
from cruijff_kit._base.sizes import human_bytes as human_size  # noqa: F401 - `ck models list` sizes
from cruijff_kit._engine.hubcache import (  # noqa: F401 - part of this module's API
    _COMMIT,
    default_hub_cache,
    find_cached,
    looks_like_hub_id,
    models_cache,
    repo_folder,
)
from cruijff_kit._models import hubnet

#: Record of downloads, written in the cache folder.
RECORD = "cruijff_kit_models.json"


class HubError(CkError):
    """The model hub cannot be reached, refused the request, or served a file that fails its hash."""


@dataclass
class CachedModel:
    """One cached snapshot of a hub model."""

    hub_id: str
    commit: str
    refs: list[str]
    path: str
    size_bytes: int
    used_by: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


# --------------------------------------------------------------------------- download
def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "the model hub")


def _is_hub_failure(exc: BaseException) -> bool:
    """Network, HTTP and offline-mode errors (of the hub client or its HTTP library), not bugs."""
    if isinstance(exc, OSError | TimeoutError):
        return True
    root = type(exc).__module__.split(".")[0]
    return root.startswith(("huggingface_hub", "httpx", "httpcore", "requests", "urllib3"))


def _hub_error(hub_id: str, exc: BaseException) -> HubError:
    """A readable error for a failed hub call."""
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    if "offlinemode" in low or "offline mode" in low:
        why = "offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set), so the hub is not contacted."
        fix = "Unset HF_HUB_OFFLINE on a machine with network access (a login node) and run `ck models download` there."
    elif any(w in low for w in ("401", "403", "gated", "unauthorized", "forbidden")):
        why = "the hub refused access (the model is gated or private)."
        fix = "Accept the model's licence on the hub and export HF_TOKEN with a token of that account."
    elif any(w in low for w in ("404", "not found", "repositorynotfound", "revisionnotfound")):
        why = "the hub has no such model or revision."
        fix = "Check the spelling of the hub id (org/name) and of --revision."
    else:
        why = f"the hub at {_endpoint()} cannot be reached."
        fix = ("Run `ck models download` on a machine with network access (a login node), or copy the "
               "cache folder over; compute nodes then read it with HF_HUB_OFFLINE=1.")
    return HubError(f"Cannot download {hub_id}: {why} {fix} ({text.splitlines()[0][:300]})")


def _gave_up(hub_id: str, exc: DeadlineExceeded | DownloadStalled, cache: Path) -> HubError:
    """The error for a hub that kept missing its deadlines (the partial download is kept)."""
    if isinstance(exc, DownloadStalled):
        return HubError(f"Cannot download {hub_id} from {_endpoint()}: {exc}. Files that arrived whole are kept "
                        f"in {cache}; the partial one was not kept and nothing was recorded as downloaded, so "
                        "runs do not use it. Try again later (finished files are not fetched again), or allow "
                        "longer pauses on a slow link with --stall-timeout SECONDS.")
    return HubError(f"Cannot download {hub_id}: {exc} at {_endpoint()}; gave up after {hubnet.ATTEMPTS} tries. "
                    "Nothing was downloaded. Try again later, or allow more time with --timeout SECONDS.")


def _hub_commit(api: Any, hub_id: str, revision: str | None, token: str | None) -> str:
    """The commit ``revision`` (default ``main``) of ``hub_id`` names on the hub."""
    return str(api.model_info(hub_id, revision=revision, token=token).sha)


def _verification_problems(result: Any, allow_patterns: list[str] | None) -> list[str]:
    """What a ``verify_repo_checksums`` result found wrong, one line per file: the file, the expected and
    the found hash. Files the hub has that ``allow_patterns`` left out are not missing."""
    from huggingface_hub.utils import filter_repo_objects

    problems = [f"{m['path']}: {m['algorithm']} expected {m['expected']}, found {m['actual']}"
                for m in result.mismatches]
    missing = list(filter_repo_objects(result.missing_paths, allow_patterns=allow_patterns))
    return problems + [f"{path}: missing" for path in missing]


def _verify(hub_id: str, commit: str, cache: Path, token: str | None, timeout: float,
            allow_patterns: list[str] | None) -> None:
    """Check every file of the snapshot against the hub's hashes (files that were already in the cache
    too); a file that differs or is missing is a :class:`HubError` naming it."""
    api = hubnet.deadlined_api(timeout, f"the hub's file hashes of {hub_id}")
    try:
        result = api.verify_repo_checksums(hub_id, revision=commit, cache_dir=cache, token=token)
    except (DeadlineExceeded, DownloadStalled) as exc:
        raise HubError(f"Downloaded {hub_id} at {commit} but could not verify it: {exc} at {_endpoint()}; gave up "
                       f"after {hubnet.ATTEMPTS} tries. The files are kept in {repo_folder(cache, hub_id)} but not "
                       "recorded as downloaded, so runs do not use them. Run the same `ck models download` again "
                       "later (the files are not fetched again), or allow more time with --timeout SECONDS.") from None
    problems = _verification_problems(result, allow_patterns)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise HubError(f"Downloaded {hub_id} at {commit} but {len(problems)} file(s) fail verification against "
                       f"the hub's hashes: {shown}. A file in the cache was damaged or changed after download, or "
                       f"the transfer was corrupted. Delete {repo_folder(cache, hub_id)} and run `ck models "
                       "download` again; runs do not use the model until it verifies.")


def download(hub_id: str, revision: str | None = None, cache: Path | None = None,
             allow_patterns: list[str] | None = None, *, overwrite: bool = False,
             timeout: float = hubnet.DEFAULT_TIMEOUT, stall_timeout: float = hubnet.DEFAULT_STALL) -> Path:
    """Download (or resume) ``hub_id`` at ``revision`` into ``cache``; verify it; record it.

    The metadata call has ``timeout`` seconds per try in total; file downloads are given up on when
    they stall (under 1 KiB in ``stall_timeout`` seconds), never for being slow, after the hub client
    has resumed them where they stopped (up to 5 times without progress).

    Returns the snapshot folder. Raises :class:`HubError` with the cause and the fix when the hub is
    unreachable, refuses access, or serves a file whose hash does not match. A file named like the
    record (``cruijff_kit_models.json``) that is not a record is replaced only with ``overwrite``.
    """
    if not looks_like_hub_id(hub_id):
        raise SpecError(f"{hub_id!r} is not a hub id.", hint="Name the model as org/name, e.g. meta-llama/Llama-3.2-1B.")
    from cruijff_kit._base.ownership import check_writable

    cache = Path(cache) if cache is not None else models_cache()
    if check_writable(Path(cache) / RECORD, command="ck models download", overwrite=overwrite, ours=_is_record):
        (Path(cache) / RECORD).unlink()
    from huggingface_hub import HfApi, snapshot_download

    cache.mkdir(parents=True, exist_ok=True)
    token = os.environ.get("HF_TOKEN") or None
    try:
        with hubnet.stall_guarded(stall_timeout):
            commit = hubnet.metadata(lambda: _hub_commit(HfApi(), hub_id, revision, token), timeout,
                                     f"the hub's model info of {hub_id}")
            snap = Path(hubnet.files(lambda: snapshot_download(hub_id, revision=commit, cache_dir=str(cache),
                                                               token=token, allow_patterns=allow_patterns),
                                     stall_timeout))
            _verify(hub_id, commit, cache, token, timeout, allow_patterns)
    except CkError:
        raise
    except (DeadlineExceeded, DownloadStalled) as exc:
        raise _gave_up(hub_id, exc, cache) from None
    except Exception as exc:
        if not _is_hub_failure(exc):
            raise
        raise _hub_error(hub_id, exc) from None
    ref_name = revision or "main"
    if not _COMMIT.match(ref_name):  # named only once verified: keep the branch/tag usable offline
        ref = repo_folder(cache, hub_id) / "refs" / ref_name
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)
    record(cache, hub_id, revision or "main", commit)
    return snap


def _is_record(path: Path) -> bool:
    """True when ``path`` is a JSON object (a record of downloads this module wrote)."""
    from cruijff_kit._base.fileio import read_json

    try:
        return path.is_file() and isinstance(read_json(path), dict)
    except CkError:
        return False


def record(cache: Path, hub_id: str, revision: str, commit: str) -> None:
    """Note a verified download in ``cache/cruijff_kit_models.json``."""
    from cruijff_kit._base.fileio import atomic_write_text, read_json

    path = Path(cache) / RECORD
    data = read_json(path, default={}) if path.is_file() else {}
    data.setdefault(hub_id, {})[revision] = {"commit": commit, "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                           time.gmtime())}
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))


# --------------------------------------------------------------------------- listing
def _size(folder: Path) -> int:
    total = 0
    for p in folder.rglob("*"):
        if p.is_file():
            total += p.stat().st_size  # follows the snapshot's symlinks into blobs/
    return total


def _experiment_specs(roots: Iterable[Path]) -> list[tuple[str, dict[str, Any]]]:
    from cruijff_kit._base.fileio import load_yaml

    out = []
    for root in roots:
        for pattern in ("runs/*/spec.yaml", "*/runs/*/spec.yaml", "*/*/runs/*/spec.yaml"):
            for spec in Path(root).glob(pattern):
                try:
                    data = load_yaml(spec.read_text()) or {}  # a run's resolved spec, written by ck
                except Exception:  # an unreadable spec is not ours to report here
                    continue
                if isinstance(data, dict) and data.get("experiment"):
                    out.append((str(data["experiment"]), data))
    return out


def list_cached(cache: Path, experiment_roots: Iterable[Path] = ()) -> list[CachedModel]:
    """Every cached model snapshot in ``cache``, with its size, refs and the experiments (under
    ``experiment_roots``) whose runs use it.

    The hub library's ``scan_cache_dir`` reads the cache; a repository it reports as corrupted (a
    missing blob, a ref to a missing snapshot) is still listed, read by hand, since it takes space."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    cache = Path(cache)
    try:
        info = scan_cache_dir(cache)
    except CacheNotFound:
        return []
    specs = _experiment_specs(experiment_roots)
    found: dict[str, list[tuple[str, list[str], int]]] = {}
    for repo in info.repos:
        if repo.repo_type == "model":
            found[repo.repo_path.name] = [(rev.commit_hash, sorted(rev.refs), rev.size_on_disk)
                                          for rev in repo.revisions]
    for repo in sorted(cache.glob("models--*")):  # the ones scan_cache_dir left out as corrupted
        if repo.name not in found and repo.is_dir():
            found[repo.name] = _walk_repo(repo)
    out = []
    for name in sorted(found):
        hub_id = name[len("models--"):].replace("--", "/", 1)
        for commit, refs, size in sorted(found[name]):
            snap = cache / name / "snapshots" / commit
            used = set()
            for exp, data in specs:
                model = data.get("model") or {}
                local = str(model.get("local_path") or "")
                if local.startswith(str(snap)) or (model.get("path") == hub_id
                                                   and (model.get("revision") or "main") in (commit, *refs)):
                    used.add(exp)
            out.append(CachedModel(hub_id=hub_id, commit=commit, refs=refs, path=str(snap), size_bytes=size,
                                   used_by=sorted(used)))
    return out


def _walk_repo(repo: Path) -> list[tuple[str, list[str], int]]:
    """(commit, refs, size) of each snapshot of a repository folder ``scan_cache_dir`` reports as corrupted."""
    refs: dict[str, list[str]] = {}
    for ref in (repo / "refs").rglob("*") if (repo / "refs").is_dir() else []:
        if ref.is_file():
            refs.setdefault(ref.read_text().strip(), []).append(ref.relative_to(repo / "refs").as_posix())
    return [(snap.name, sorted(refs.get(snap.name, [])), _size(snap))
            for snap in sorted(p for p in (repo / "snapshots").glob("*") if p.is_dir())]
