"""What ``ck simulate SPEC`` runs: load and validate the spec, then run the loop to completion."""

from __future__ import annotations

import asyncio
from typing import Any

from cruijff_kit._base.errors import CkError
from cruijff_kit._simulate.config import load_simulation
from cruijff_kit._simulate.loop import Summary, run_simulation, side_file
from cruijff_kit.collab import load_tasks


def simulate(loaded: Any, *, limit: int | None = None, progress: bool = True, overwrite: bool = False) -> Summary:
    """Run the simulation of a loaded spec (a :class:`cruijff_kit._engine.spec.LoadedSpec`)."""
    sim = load_simulation(loaded)
    if limit is not None:
        sim.config.tasks.limit = limit
    tasks = load_tasks(sim.config.tasks, sim.path(sim.config.tasks.path))
    return asyncio.run(run_simulation(sim, tasks, progress=progress, overwrite=overwrite))


def report(summary: Summary) -> tuple[str, int]:
    """The closing message and the exit code (1 when some conversations failed)."""
    lines = [f"{summary.already_done + summary.finished}/{summary.total} conversations in {summary.output} "
             f"({summary.finished} new, {summary.already_done} from earlier runs, {summary.failed} failed)."]
    if summary.scoring:
        lines.append(summary.scoring)
    if summary.finished:
        lines.append(f"{summary.per_minute:.1f} conversations per minute.")
    if summary.failed:
        lines.append(f"Errors are in {side_file(summary.output, 'errors.jsonl')}; run `ck simulate` again to "
                     "retry the failed conversations (finished ones are kept).")
    return "\n".join(lines), (1 if summary.failed else 0)


def run_command(loaded: Any, *, limit: int | None = None, progress: bool = True,
                overwrite: bool = False) -> tuple[str, int]:
    """``ck simulate``: run, and return (message, exit code)."""
    try:
        summary = simulate(loaded, limit=limit, progress=progress, overwrite=overwrite)
    except KeyboardInterrupt:
        raise CkError("simulation interrupted; finished conversations are saved and `ck simulate` "
                      "resumes from them.") from None
    return report(summary)
