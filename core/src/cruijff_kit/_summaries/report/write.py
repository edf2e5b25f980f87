"""Write ``report.html`` once, or again each time a stage of the experiment changes (``--watch``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from cruijff_kit import status
from cruijff_kit._base.errors import CkError
from cruijff_kit._base.fileio import atomic_write_text
from cruijff_kit._base.layout import ExperimentLayout, folders_in
from cruijff_kit._summaries.report.page import MARKER

REPORT_NAME = "report.html"


def report_path(exp: ExperimentLayout) -> Path:
    """``<experiment>/report.html``."""
    return exp.root / REPORT_NAME


def _ours(path: Path) -> bool:
    """True when ``path`` is a page ``ck report`` wrote (its second line is :data:`MARKER`)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.readline().startswith("<!DOCTYPE html>") and fh.readline().strip() == MARKER
    except (OSError, UnicodeDecodeError):
        return False


def write_report(exp: ExperimentLayout, *, overwrite: bool = False) -> tuple[Path, dict]:
    """Write ``report.html`` and return its path and the data it shows.

    A ``report.html`` that ``ck report`` did not write is refused (written over with ``overwrite``)."""
    from cruijff_kit._base.ownership import check_writable
    from cruijff_kit._summaries.report.collect import report_data
    from cruijff_kit._summaries.report.page import render

    path = report_path(exp)
    if not exp.runs_dir.is_dir():
        raise CkError(f"{exp.root}: no run folders yet (no `runs/` folder in it), so there is nothing to report. "
                      "`ck run SPEC` writes them; run `ck report` after it (or `ck report --watch` while it runs).")
    check_writable(path, command="ck report", overwrite=overwrite, ours=_ours)
    data = report_data(exp)
    atomic_write_text(path, render(data))
    return path, data


def fingerprint(exp: ExperimentLayout) -> tuple[tuple[str, int, int], ...]:
    """Size and modification time of every file the page is made from that changes as stages run."""
    out = []
    for layout in [*folders_in(exp.runs_dir), *folders_in(exp.shared_dir)]:
        for p in (layout.status, layout.results, layout.metrics, layout.env):
            try:
                st = p.stat()
            except OSError:
                continue
            out.append((str(p), st.st_mtime_ns, st.st_size))
    sim = exp.root / "simulate" / "conversations.jsonl"
    if sim.is_file():
        st = sim.stat()
        out.append((str(sim), st.st_mtime_ns, st.st_size))
    return tuple(out)


def active(data: dict) -> int:
    """How many stages of the page are submitted or running."""
    return sum(1 for s in data.get("stages", []) if s.get("state") in status.ACTIVE_STATES)


def watch(exp: ExperimentLayout, *, overwrite: bool, interval: float, on_write: Callable[[Path, dict], None],
          sleep: Callable[[float], None] = time.sleep) -> None:
    """Write the page, then again whenever :func:`fingerprint` changes; return once no stage is
    submitted or running (the page then shows the experiment's final state)."""
    last = None
    while True:
        now = fingerprint(exp)
        if now != last:
            path, data = write_report(exp, overwrite=overwrite)
            overwrite = False  # the page is ours from here on
            on_write(path, data)
            last = now
            if not active(data):
                return
        sleep(interval)
