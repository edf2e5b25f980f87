"""The one step that may send row text off the machine: rewriting rendered rows with an LLM.

It runs only with ``template.rewrite.send_rows: true`` (checked in :func:`generate.prepare`); the
sidecar records the step, its simulator and how many rows were sent.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from cruijff_kit import CkError, DataError
from cruijff_kit_tabular.options import Rewrite


def _simulator(rewrite: Rewrite) -> Any:
    from pydantic import ValidationError

    from cruijff_kit import plugin_class

    section = dict(rewrite.simulator)
    name = str(section.pop("plugin"))
    cls = plugin_class("simulator", name)
    try:
        config = cls.Config.model_validate(section)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise DataError(f"template.rewrite.simulator.{where}: {err['msg']} (options of the `{name}` "
                        "simulator plugin).") from None
    return cls(config)


def rewrite_rows(splits: dict[str, list[dict[str, Any]]], rewrite: Rewrite, seed: int) -> dict[str, Any]:
    """Replace every row's ``input`` (the rendered features) with the LLM's rewrite; returns counts."""
    if not rewrite.send_rows:  # prepare() refuses earlier; never send without the opt-in
        raise DataError("template.rewrite needs send_rows: true to send row text off this machine.")
    from cruijff_kit import Caller, CallFailed, RetryPolicy

    sim = _simulator(rewrite)
    rows = [row for part in splits.values() for row in part]

    async def run() -> None:
        sim.open()
        caller = Caller(sim, RetryPolicy(), asyncio.Semaphore(rewrite.concurrency), random.Random(seed))
        try:
            async def one(row: dict[str, Any]) -> None:
                messages = [{"role": "system", "content": rewrite.instructions},
                            {"role": "user", "content": row["input"]}]
                reply = await caller(messages, seed=seed, temperature=0.0)
                row["input"] = reply.strip()

            await asyncio.gather(*(one(r) for r in rows))
        finally:
            await sim.aclose()

    try:
        asyncio.run(run())
    except CallFailed as exc:
        raise DataError(f"template.rewrite: a call to the simulator failed ({exc}). Nothing was written; "
                        "fix the endpoint and generate again.") from None
    except CkError:
        raise
    return {"rows_sent": len(rows), "simulator": sim.label()}
