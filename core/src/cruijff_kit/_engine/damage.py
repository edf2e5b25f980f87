"""Damaged state files of a run read back with their shape checked (``eval/results.json``,
``train/metrics.jsonl``; ``status.json`` is checked in :mod:`cruijff_kit.status`, ``spec.yaml`` by
``load_run``), and what ``ck run`` rebuilds of them.

A damaged file is never deleted: it is moved aside to ``<name>.damaged-<time>`` (it is the user's data).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from cruijff_kit import status
from cruijff_kit._base.errors import short_repr
from cruijff_kit._base.fileio import atomic_write_json, locked
from cruijff_kit._base.layout import RunLayout
from cruijff_kit._base.parsing import parse_json_text
from cruijff_kit.status import DamagedState, json_kind

#: How to recover from a damaged ``eval/results.json``.
RESULTS_FIX = ("`ck run SPEC` moves it aside (to results.json.damaged-<time>, kept) and evaluates the finished "
               "eval stages of this run again; `ck reset RUN_DIR STAGE` resets one stage.")
#: How to recover from a damaged ``train/metrics.jsonl``.
METRICS_FIX = ("The training columns of this run are left empty. `ck reset RUN_DIR train` (moves train/ aside) "
               "then `ck run SPEC` trains again and writes it anew.")


def read_results(layout: RunLayout) -> dict[str, dict[str, dict[str, Any]]]:
    """``eval/results.json`` as ``{task: {target: results}}`` (empty when missing).

    An empty, cut-short or non-text file, or one of another shape (a list, a target's entry that is
    not an object), raises :class:`DamagedState` naming it and saying how to recover.
    """
    path = layout.results
    data = status.read_state_json(path, RESULTS_FIX)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DamagedState(path, f"it holds {json_kind(data)}, not a JSON object", RESULTS_FIX)
    for task, targets in data.items():
        if not isinstance(targets, dict):
            raise DamagedState(path, f"the entry of task `{short_repr(task, 80)}` is {json_kind(targets)}, "
                                     "not an object", RESULTS_FIX)
        for target, entry in targets.items():
            if not isinstance(entry, dict):
                raise DamagedState(path, f"the entry `{short_repr(task, 80)}.{short_repr(target, 80)}` is "
                                         f"{json_kind(entry)}, not an object", RESULTS_FIX)
    return data


def read_metrics(layout: RunLayout) -> list[dict[str, Any]]:
    """The rows of ``train/metrics.jsonl`` (empty when missing).

    A torn last line (a crash mid-write) is skipped. An empty file, one that is not text, a line
    before the last that is not JSON, or a row that is not an object raises :class:`DamagedState`.
    """
    path = layout.metrics
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    if not raw.strip():
        raise DamagedState(path, f"it is empty ({len(raw)} bytes)", METRICS_FIX)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DamagedState(path, f"it is not UTF-8 text (byte {exc.start} is not text)", METRICS_FIX) from None
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    rows = []
    for i, (n, line) in enumerate(lines):
        try:
            row = parse_json_text(line, file=str(path), line=n)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue  # a torn last line
            raise DamagedState(path, f"line {n} is not JSON", METRICS_FIX) from None
        if not isinstance(row, dict):
            raise DamagedState(path, f"line {n} is {json_kind(row)}, not an object", METRICS_FIX)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- ck run: rebuild what it can
def repair_run(layout: RunLayout, stages: list[str]) -> list[str]:
    """Before ``ck run`` writes a run's folder: move a damaged ``status.json`` aside (its stages start
    again from pending) and a damaged ``results.json`` aside (its finished eval stages run again), and
    put back to pending a finished eval stage whose result is missing. Returns one line per repair."""
    notes: list[str] = []
    try:
        status.read(layout.root)
    except DamagedState as exc:
        moved = status.move_aside(exc.path)
        notes.append(f"{exc.path} was damaged: {exc.reason}; moved aside to {moved.name}. Every stage of run "
                     f"{layout.name} starts again from pending.")
    try:
        results = read_results(layout)
    except DamagedState as exc:
        moved = status.move_aside(exc.path)
        notes.append(f"{exc.path} was damaged: {exc.reason}; moved aside to {moved.name}.")
        results = {}
    entries = status.read(layout.root)["stages"]
    lost = [s for s in stages if s.startswith("eval.") and entries.get(s, {}).get("state") == status.DONE
            and s.split(".", 2)[2] not in results.get(s.split(".", 2)[1], {})]
    for name in lost:
        status.update_stage(layout.root, name, state=status.PENDING, error=None, reset=status.now())
    if lost:
        notes.append(f"{layout.results} has no result for the finished stage(s) {', '.join(lost)} of run "
                     f"{layout.name}: they run again.")
    return notes


def record_results(layout: RunLayout, task: str, target: str, results: dict[str, Any]) -> None:
    """Merge one eval stage's results into ``eval/results.json`` (locked, atomic).

    A damaged file (empty, cut short, not text, of the wrong shape: see
    :func:`~cruijff_kit._engine.damage.read_results`) is moved aside to ``results.json.damaged-<time>``
    (kept, as ``ck run`` does) and a warning naming it and the recovery goes to stderr (the stage's
    log); this result is then written to a new file, and ``ck run`` evaluates the other finished eval
    stages of the run again.
    """
    path = layout.results
    with locked(path):
        try:
            data = read_results(layout)
        except status.DamagedState as exc:
            moved = status.move_aside(exc.path)
            print(f"Warning: {exc.path} is damaged: {exc.reason}. It was moved aside to {moved.name} (kept, "
                  f"never deleted) and the result of {task}/{target} written to a new {path.name}; `ck run SPEC` "
                  "evaluates the other finished eval stages of this run again.", file=sys.stderr, flush=True)
            data = {}
        data.setdefault(task, {})[target] = results
        atomic_write_json(path, data)
