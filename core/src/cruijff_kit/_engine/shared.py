"""Shared stages: a stage several runs of an experiment would compute identically (same
``Evaluator.identity``) runs once, in ``<experiment>/shared/<name>/`` (laid out like a run folder), and
each run that needs it points to it.

A run's ``status.json`` entry for such a stage is ``{"shared": "shared/<name>"}`` and its
``eval/results.json`` entry for the stage's task and target is the same pointer; the shared folder's
``status.json`` and ``results.json`` hold the stage's real state and result. Everything that reads a
run's stage back goes through :func:`resolve_entry` or :func:`resolve_results`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cruijff_kit import status
from cruijff_kit._base.layout import ExperimentLayout, RunLayout, folders_in
from cruijff_kit.status import DamagedState

#: The key of a pointer entry in a run's ``status.json`` and ``eval/results.json``.
POINTER = "shared"
#: What a pointer may hold: ``shared/<name>``, one folder of this experiment's ``shared/``.
_POINTER_VALUE = re.compile(r"^shared/[A-Za-z0-9][A-Za-z0-9_.-]*$")
POINTER_FIX = ("`ck run SPEC` writes the run's pointers again (a hand-edited status.json or results.json should "
               "only point to shared/<name> of the same experiment).")


@dataclass(frozen=True)
class Resolved:
    """Where a run's stage really lives: its own folder, or the shared folder it points to."""

    layout: RunLayout
    entry: dict[str, Any]
    #: ``shared/<name>`` when the stage is shared, else None.
    shared: str | None = None


def pointer_of(entry: Any) -> str | None:
    """The ``shared/<name>`` a status or results entry points to, or None for an entry of its own."""
    value = entry.get(POINTER) if isinstance(entry, dict) else None
    return value if isinstance(value, str) else None


def shared_layout(run_dir: Path, pointer: str, where: Path) -> RunLayout:
    """The shared folder ``pointer`` names, for the run in ``run_dir``; a pointer that leaves the
    experiment's ``shared/`` raises :class:`DamagedState` naming ``where`` (the file holding it)."""
    if not _POINTER_VALUE.match(pointer) or ".." in pointer:
        raise DamagedState(where, f"it points a stage to `{pointer[:120]}`, not to a shared/<name> folder of "
                                  "this experiment", POINTER_FIX)
    return RunLayout(Path(run_dir).parent.parent / pointer)


def resolve_entry(run_dir: Path, stage: str, entry: dict[str, Any],
                  cache: dict[Path, dict[str, Any]] | None = None) -> Resolved:
    """The real status entry of ``stage`` of the run in ``run_dir`` (whose own entry is ``entry``):
    the shared folder's entry when ``entry`` points there (pending when it has none yet).

    ``cache``: shared folder -> its ``status.json`` stages, so that a reader of many runs (``ck status``,
    ``ck summarize``) reads each shared folder's file once."""
    ptr = pointer_of(entry)
    if ptr is None:
        return Resolved(RunLayout(Path(run_dir)), entry)
    layout = shared_layout(run_dir, ptr, Path(run_dir) / "status.json")
    cache = {} if cache is None else cache
    if layout.root not in cache:
        cache[layout.root] = status.read(layout.root)["stages"] if layout.root.is_dir() else {}
    return Resolved(layout, cache[layout.root].get(stage, {"state": status.PENDING}), ptr)


def resolve_results(run: RunLayout, results: dict[str, Any], task: str, target: str,
                    cache: dict[Path, dict[str, Any]] | None = None) -> tuple[dict[str, Any], str | None]:
    """The result of ``task``/``target`` of a run whose ``results.json`` is ``results``: its own entry,
    or the shared folder's when the entry points there; with the pointer (None for its own).
    ``cache``: shared folder -> its ``results.json``, read once."""
    from cruijff_kit._engine.damage import read_results

    entry = results.get(task, {}).get(target, {})
    ptr = pointer_of(entry)
    if ptr is None:
        return entry, None
    layout = shared_layout(run.root, ptr, run.results)
    cache = {} if cache is None else cache
    if layout.root not in cache:
        cache[layout.root] = read_results(layout)
    return cache[layout.root].get(task, {}).get(target, {}), ptr


def point_runs(plan: Any) -> list[str]:
    """Write each pointer of ``plan`` (a :class:`~cruijff_kit._engine.planner.Plan`) into its run's
    ``status.json`` and ``eval/results.json``; returns notes for stages left as they are (an earlier
    ``ck run`` of the run's own copy of the stage is still active)."""
    from cruijff_kit._engine.damage import read_results, record_results

    notes: list[str] = []
    by_name = {r.name: r for r in plan.runs}
    for (run_name, stage), name in plan.pointers.items():
        run = by_name[run_name]
        ptr = f"shared/{name}"
        entry = status.read(run.layout.root)["stages"].get(stage, {})
        if pointer_of(entry) != ptr:
            ok = status.update_stage(run.layout.root, stage, replace=True,
                                     when=lambda e: e.get("state") not in status.ACTIVE_STATES,
                                     **{POINTER: ptr, "updated": status.now()})
            if not ok:
                notes.append(f"run {run_name}: its own {stage} is still {entry.get('state')}; the next `ck run` points "
                             f"it to {ptr}, which runs it once for every run that needs it.")
                continue
        _, task, target = stage.split(".", 2)
        try:
            current = read_results(run.layout).get(task, {}).get(target)
        except DamagedState:
            current = None  # record_results moves a damaged file aside and writes it again
        if pointer_of(current) != ptr:
            if isinstance(current, dict) and current:  # the run's own result from before: kept beside its logs
                from cruijff_kit._base.fileio import atomic_write_json

                kept = run.layout.eval_dir(task, target) / "own-result.json"
                kept.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(kept, {task: {target: current}})
                notes.append(f"run {run_name}: {stage} is now shared ({ptr}); its own earlier result was moved from "
                             f"{run.layout.results} to {kept}.")
            record_results(run.layout, task, target, {POINTER: ptr})
    return notes


def shared_folders(exp: ExperimentLayout) -> list[RunLayout]:
    """Every shared stage's folder of an experiment."""
    return folders_in(exp.shared_dir)


def used_by(spec: dict[str, Any]) -> list[str]:
    """The runs a shared folder's resolved spec says it serves (empty for a run's own spec)."""
    shared = (spec.get("run") or {}).get("shared") or {}
    return [str(r) for r in shared.get("used_by") or []] if isinstance(shared, dict) else []


def with_earlier_users(spec: dict[str, Any], on_disk: Any) -> dict[str, Any]:
    """A shared folder's ``spec`` whose ``run.shared.used_by`` also lists the runs the spec already on
    disk names (runs of an earlier plan of the experiment still point there); other specs unchanged."""
    new = used_by(spec)
    old = used_by(on_disk) if isinstance(on_disk, dict) else []
    if not new or not old or set(old) <= set(new):
        return spec
    merged = list(dict.fromkeys([*old, *new]))
    return {**spec, "run": {**spec["run"], "shared": {**spec["run"]["shared"], "used_by": merged}}}
