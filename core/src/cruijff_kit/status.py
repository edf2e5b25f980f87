"""Per-run ``status.json``: one entry per stage, updated with a lock and atomic replace.

States: ``pending`` (planned), ``submitted`` (handed to a scheduler), ``running``, ``done``,
``failed``, ``interrupted`` (killed or Ctrl-C; resumable), ``cancelled``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cruijff_kit._base.fileio import read_json, update_json
from cruijff_kit._base.secrets import scrub

PENDING, SUBMITTED, RUNNING, DONE, FAILED, INTERRUPTED, CANCELLED = (
    "pending", "submitted", "running", "done", "failed", "interrupted", "cancelled",
)

__all__ = [
    "ACTIVE_STATES", "CANCELLED", "DONE", "FAILED", "FINISHED_STATES", "INTERRUPTED", "PENDING", "RUNNING",
    "STATES", "SUBMITTED", "ensure_stages", "now", "overrides", "read", "record_override", "stage_state", "tail",
    "update_stage",
]
FINISHED_STATES = {DONE}
ACTIVE_STATES = {SUBMITTED, RUNNING}
STATES = (PENDING, SUBMITTED, RUNNING, DONE, FAILED, INTERRUPTED, CANCELLED)


def now() -> str:
    """UTC timestamp, ISO 8601."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read(run_dir: Path) -> dict[str, Any]:
    """The run's status (``{"stages": {...}}``), empty when never written."""
    data = read_json(Path(run_dir) / "status.json", default=None) or {}
    data.setdefault("stages", {})
    return data


def stage_state(run_dir: Path, stage: str) -> str:
    """The state of one stage (``pending`` when unknown)."""
    return read(run_dir)["stages"].get(stage, {}).get("state", PENDING)


def update_stage(run_dir: Path, stage: str, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into a stage's entry (secrets scrubbed); returns the stage entry."""
    fields = scrub(fields)
    result: dict[str, Any] = {}

    def change(data: dict[str, Any]) -> None:
        data.setdefault("run", Path(run_dir).name)
        entry = data.setdefault("stages", {}).setdefault(stage, {"state": PENDING})
        entry.update(fields)
        entry["updated"] = now()
        result.update(entry)

    update_json(Path(run_dir) / "status.json", change)
    return result


def ensure_stages(run_dir: Path, stages: list[str]) -> None:
    """Create pending entries for stages not yet listed (keeps existing states)."""

    def change(data: dict[str, Any]) -> None:
        data.setdefault("run", Path(run_dir).name)
        st = data.setdefault("stages", {})
        for s in stages:
            st.setdefault(s, {"state": PENDING, "updated": now()})

    update_json(Path(run_dir) / "status.json", change)


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

    update_json(Path(run_dir) / "status.json", change)


def overrides(run_dir: Path) -> dict[str, Any]:
    """Dotted-path changes recorded with :func:`record_override` (empty when none)."""
    return dict(read(run_dir).get("overrides") or {})
