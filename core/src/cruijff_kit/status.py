"""Per-run ``status.json``: one entry per stage, updated with a lock and atomic replace.

States: ``pending`` (planned), ``submitted`` (handed to a scheduler), ``running``, ``done``,
``failed``, ``interrupted`` (killed or Ctrl-C; resumable), ``cancelled``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from cruijff_kit._base.errors import DataError, short_repr
from cruijff_kit._base.fileio import atomic_write_json, atomic_write_many, locked
from cruijff_kit._base.parsing import parse_json_text
from cruijff_kit._base.secrets import scrub

PENDING, SUBMITTED, RUNNING, DONE, FAILED, INTERRUPTED, CANCELLED = (
    "pending", "submitted", "running", "done", "failed", "interrupted", "cancelled",
)

__all__ = [
    "ACTIVE_STATES", "CANCELLED", "DONE", "FAILED", "FINISHED_STATES", "INTERRUPTED", "PENDING", "RUNNING",
    "STATES", "SUBMITTED", "ensure_stages", "now", "overrides", "read", "record_override", "stage_state", "tail",
    "update_runs", "update_stage",
]
FINISHED_STATES = {DONE}
ACTIVE_STATES = {SUBMITTED, RUNNING}
STATES = (PENDING, SUBMITTED, RUNNING, DONE, FAILED, INTERRUPTED, CANCELLED)


def now() -> str:
    """UTC timestamp, ISO 8601."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --------------------------------------------------------------------------- damaged state files
#: The state a stage is shown in when a file it is read from is damaged (never written to status.json).
DAMAGED = "damaged"

#: How to recover from a damaged ``status.json`` (said in every message about one).
STATUS_FIX = ("`ck run SPEC` moves it aside (to status.json.damaged-<time>, kept, never deleted) and runs every "
              "stage of this run again from pending; `ck reset RUN_DIR STAGE` does the same without starting "
              "anything.")


class DamagedState(DataError):
    """A state file cruijff-kit wrote and reads back (a run's ``status.json``, ``spec.yaml``,
    ``eval/results.json``, ``train/metrics.jsonl``) that is missing, empty, cut short, not text, or
    holds the wrong shape. The message names the file, the reason and how to recover."""

    def __init__(self, path: Path, reason: str, fix: str) -> None:
        self.path, self.reason, self.fix = Path(path), reason, fix
        super().__init__(f"{path} is damaged: {reason}. {fix}")


def json_kind(value: Any) -> str:
    """``an object``, ``a list``, ``a string``... : the JSON kind of a parsed value, for messages."""
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
             int: "a number", float: "a number"}
    return kinds.get(type(value), type(value).__name__)


def read_state_json(path: Path, fix: str) -> Any:
    """A JSON state file's value, or None when the file does not exist.

    An empty file, one that is not UTF-8 text, or not JSON (cut short by a crash or a full disk)
    raises :class:`DamagedState` naming ``path`` and saying ``fix``.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise DamagedState(path, "it is a folder, not a file", fix) from None
    if not raw.strip():
        raise DamagedState(path, f"it is empty ({len(raw)} bytes)", fix)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DamagedState(path, f"it is not UTF-8 text (byte {exc.start} is not text)", fix) from None
    try:
        return parse_json_text(text, file=str(path))
    except json.JSONDecodeError as exc:
        raise DamagedState(path, f"it is not valid JSON (cut short?): {exc.msg} at line {exc.lineno}, "
                                 f"column {exc.colno}", fix) from None
    except DataError as exc:
        raise DamagedState(path, str(exc).removeprefix(f"{path}: ").rstrip("."), fix) from None


def move_aside(path: Path) -> Path:
    """Rename a damaged file to ``<name>.damaged-<UTC time>`` beside it (never deleted: it is the
    user's data); returns the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    os.replace(path, target)
    return target


def _check(data: Any, path: Path) -> dict[str, Any]:
    """``data`` if it has the shape of a ``status.json``, else :class:`DamagedState`."""
    if not isinstance(data, dict):
        raise DamagedState(path, f"it holds {json_kind(data)}, not a JSON object", STATUS_FIX)
    stages = data.get("stages", {})
    if not isinstance(stages, dict):
        raise DamagedState(path, f"`stages` is {json_kind(stages)}, not an object", STATUS_FIX)
    for name, entry in stages.items():
        if not isinstance(entry, dict):
            raise DamagedState(path, f"the entry of stage `{short_repr(name, 80)}` is {json_kind(entry)}, "
                                     "not an object", STATUS_FIX)
        state = entry.get("state", PENDING)
        if state not in STATES:
            raise DamagedState(path, f"stage `{short_repr(name, 80)}` has the unknown state "
                                     f"{short_repr(state, 80)} (known: {', '.join(STATES)})", STATUS_FIX)
    if not isinstance(data.get("overrides", {}), dict):
        raise DamagedState(path, f"`overrides` is {json_kind(data['overrides'])}, not an object", STATUS_FIX)
    return data


def read(run_dir: Path) -> dict[str, Any]:
    """The run's status (``{"stages": {...}}``), empty when never written.

    A damaged file (empty, cut short, not text, not an object, a stage entry that is not an object)
    raises :class:`DamagedState` naming it and the way to recover.
    """
    path = Path(run_dir) / "status.json"
    data = read_state_json(path, STATUS_FIX)
    data = _check({} if data is None else data, path)
    data.setdefault("stages", {})
    return data


def _update(run_dir: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Locked read-modify-write of ``status.json``; a damaged file raises :class:`DamagedState`."""
    path = Path(run_dir) / "status.json"
    with locked(path):
        data = read(run_dir)
        change(data)
        atomic_write_json(path, data)


def stage_state(run_dir: Path, stage: str) -> str:
    """The state of one stage (``pending`` when unknown)."""
    return read(run_dir)["stages"].get(stage, {}).get("state", PENDING)


def _merge(data: dict[str, Any], run_dir: Path, stage: str, fields: Mapping[str, Any], replace: bool,
           when: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any] | None:
    """Merge (already scrubbed) ``fields`` into the stage's entry of ``data``; the entry, or None when
    ``when`` does not hold."""
    data.setdefault("run", Path(run_dir).name)
    entry = data.setdefault("stages", {}).setdefault(stage, {"state": PENDING})
    if when is not None and not when(dict(entry)):
        return None
    if replace:
        entry.clear()
    entry.update({k: v for k, v in fields.items() if v is not None})
    for key in [k for k, v in fields.items() if v is None]:
        entry.pop(key, None)
    entry["updated"] = now()
    return entry


def update_stage(run_dir: Path, stage: str, *, when: Callable[[dict[str, Any]], bool] | None = None,
                 replace: bool = False, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into a stage's entry (secrets scrubbed); a field given as None is removed from
    the entry (a stage claimed again forgets its old job id). With ``replace``, the entry becomes
    ``fields`` alone. Returns the stage entry.

    With ``when``, only if ``when(entry)`` holds, in the same locked read-modify-write (a
    compare-and-set: nobody changes the entry in between); returns an empty dict when it does not.
    """
    fields = scrub(fields)
    result: dict[str, Any] = {}

    def change(data: dict[str, Any]) -> None:
        entry = _merge(data, run_dir, stage, fields, replace, when)
        if entry is not None:
            result.update(entry)

    _update(run_dir, change)
    return result


#: A change of :func:`update_runs`: ``(run_dir, stages, files)`` -> ``{stage: fields}`` (or None).
RunChange = Callable[[Path, dict[str, dict[str, Any]], dict[Path, Any]], Mapping[str, Mapping[str, Any]] | None]


def update_runs(run_dirs: Iterable[Path], change: RunChange, *, batch: int = 128) -> dict[Path, dict[str, Any]]:
    """Update the ``status.json`` of many runs with one wait for the disk per ``batch`` runs.

    For each run folder (in sorted order, ``batch`` runs at a time) its ``status.json`` is locked and
    read, and ``change(run_dir, stages, files)`` is called with the run's stage entries, as read under
    the lock (nobody changes them until they are written: compare and set as with
    :func:`update_stage`'s ``when``), and an empty dict ``files`` it may fill with other JSON files
    to write together with it (path -> data; e.g. a job's full accounting record). It returns
    ``{stage: fields}``, merged as :func:`update_stage` merges ``fields`` (secrets scrubbed, a field
    given as None removed, ``updated`` stamped), or None or ``{}`` for no change; a run without
    changes or files is not written.

    The files of a batch are written atomically together (temp files, fsynced at once, renamed: the
    other files first, each ``status.json`` last) before its locks are let go: a ``status.json`` is
    never seen half-written, and after a crash every file is whole, old or new. An exception in
    ``change``, a damaged ``status.json`` (:class:`DamagedState`) or a failed write leaves every file
    of that batch as it was (earlier batches are written) and is raised.

    Returns run folder -> its status after the change (the whole object, as :func:`read` gives it).
    """
    dirs = sorted({Path(d) for d in run_dirs})
    out: dict[Path, dict[str, Any]] = {}
    for start in range(0, len(dirs), max(1, batch)):
        group = dirs[start:start + max(1, batch)]
        writes: list[tuple[Path, str]] = []
        status_writes: list[tuple[Path, str]] = []
        with ExitStack() as locks:
            for run_dir in group:  # always in sorted order: two of these never wait for each other
                locks.enter_context(locked(run_dir / "status.json"))
            for run_dir in group:
                data = read(run_dir)
                files: dict[Path, Any] = {}
                stages = {name: dict(entry) for name, entry in data["stages"].items()}
                changes = change(run_dir, stages, files) or {}
                for stage, fields in changes.items():
                    _merge(data, run_dir, stage, scrub(dict(fields)), False)
                writes += [(Path(p), _json_text(v)) for p, v in files.items()]
                if changes:
                    status_writes.append((run_dir / "status.json", _json_text(data)))
                out[run_dir] = data
            atomic_write_many(writes + status_writes)
    return out


def _json_text(data: Any) -> str:
    """JSON as :func:`~cruijff_kit._base.fileio.atomic_write_json` writes it."""
    return json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"


def ensure_stages(run_dir: Path, stages: list[str]) -> None:
    """Create pending entries for stages not yet listed (keeps existing states)."""

    def change(data: dict[str, Any]) -> None:
        data.setdefault("run", Path(run_dir).name)
        st = data.setdefault("stages", {})
        for s in stages:
            st.setdefault(s, {"state": PENDING, "updated": now()})

    _update(run_dir, change)


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a text file (empty when missing)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            text = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def record_override(run_dir: Path, dotted: str, value: Any) -> None:
    """Record a change a scheduler made to the run's resolved spec (e.g. a smaller batch after an
    out-of-memory failure), so that rewriting ``spec.yaml`` keeps it (see :func:`overrides`)."""

    def change(data: dict[str, Any]) -> None:
        data.setdefault("run", Path(run_dir).name)
        data.setdefault("overrides", {})[dotted] = value

    _update(run_dir, change)


def overrides(run_dir: Path) -> dict[str, Any]:
    """Dotted-path changes recorded with :func:`record_override` (empty when none)."""
    return dict(read(run_dir).get("overrides") or {})


# --------------------------------------------------------------------------- claims (one runner per stage)
def hold_lock(path: Path, holder: dict[str, Any]) -> int | None:
    """Take the exclusive lock of ``path`` without waiting and write ``holder`` (who holds it) into it.

    Returns the file descriptor that holds the lock: close it (:func:`release_lock`), or let the
    process end, to let go; the kernel drops the lock of a killed process (SIGKILL included), so a
    lock is never stale. Returns None when another process holds it (see :func:`lock_holder`).
    """
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder, default=str).encode(), 0)
    except OSError:  # a full disk: the lock holds all the same, only the holder's description is missing
        pass
    return fd


def release_lock(fd: int) -> None:
    """Let go of a lock taken with :func:`hold_lock`."""
    os.close(fd)


def lock_holder(path: Path) -> dict[str, Any]:
    """Who holds (or last held) the lock of ``path``: ``pid``, ``host``, ``since``... (empty when unknown)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 123 on host node1 since 2026-01-01T00:00:00Z`` (the parts that are known)."""
    parts = [f"pid {holder['pid']}" if holder.get("pid") else "a process"]
    if holder.get("host"):
        parts.append(f"on host {holder['host']}")
    if holder.get("job"):
        parts.append(f"(job {holder['job']})")
    if holder.get("since"):
        parts.append(f"since {holder['since']}")
    return " ".join(parts)
