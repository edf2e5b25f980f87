"""The asyncio loop: many conversations at once, each appended to the JSONL file as it finishes.

A :class:`Writer` appends from a worker thread, in batches (the conversations that finished while the
previous batch was written: one write and one fsync for them all), so no conversation and not the
event loop waits on the disk.

Resume: conversations already in the output file (by ``conv_id``) are never redone; a torn last
line left by a killed process is cut off first (that conversation is simply redone). Only an output
``ck simulate`` created (it wrote ``<output>.owner.json`` beside it) is cut or appended to. One process at
a time writes an output file (a lock next to it). A conversation whose calls fail for good is recorded
in ``<output>.errors.jsonl`` and left for the next run; a :class:`cruijff_kit.CkError` (a missing API
key, a rejected model name) stops the whole simulation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cruijff_kit._api.retry import Caller, CallFailed
from cruijff_kit._base.errors import CkError
from cruijff_kit._base.fileio import atomic_write_json, read_jsonl, repair_tail
from cruijff_kit._base.ownership import check_writable, remove_path
from cruijff_kit._base.secrets import scrub
from cruijff_kit._simulate.config import Simulation, preset_line
from cruijff_kit._simulate.conversation import Engine
from cruijff_kit._simulate.progress import Progress
from cruijff_kit._simulate.scoring import build_metric
from cruijff_kit.collab import Metric, Task, UserSimulator, conversation_ids


@dataclass
class Summary:
    """What one ``ck simulate`` invocation did."""

    output: Path
    total: int
    already_done: int
    finished: int = 0
    failed: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    calls: dict[str, Any] = field(default_factory=dict)
    scoring: str | None = None
    """Which scoring preset the simulation used, in one sentence (None without scoring)."""

    @property
    def complete(self) -> bool:
        """True when every conversation of the spec is in the output file."""
        return self.already_done + self.finished == self.total

    @property
    def per_minute(self) -> float:
        """Conversations finished per minute in this invocation."""
        return 60.0 * self.finished / self.seconds if self.seconds > 0 else 0.0


def side_file(output: Path, suffix: str) -> Path:
    """``conversations.jsonl`` -> ``conversations.<suffix>``."""
    return output.with_name(f"{output.stem}.{suffix}")


def owner_file(output: Path) -> Path:
    """``conversations.jsonl`` -> ``conversations.owner.json``: written when ``ck simulate`` creates the output."""
    return side_file(output, "owner.json")


def claim_output(output: Path, *, overwrite: bool = False) -> None:
    """Make sure ``output`` is ours before any truncating or appending; mark a new one as ours.

    The output is ours when its :func:`owner_file` exists (or, from versions before that file, its
    ``run.json``). A file without either was not written by ``ck simulate`` and is refused, or, with
    ``overwrite``, replaced.
    """
    def ours(path: Path) -> bool:
        return path.is_file() and (owner_file(path).is_file() or side_file(path, "run.json").is_file())

    if check_writable(output, command="ck simulate", overwrite=overwrite, ours=ours):
        remove_path(output)
    if not owner_file(output).is_file():
        atomic_write_json(owner_file(output), {"written_by": "ck simulate", "output": output.name})


def finished_ids(path: Path, fingerprint: str) -> set[str]:
    """Ids of the conversations already in the output file; a CkError when some were simulated under
    other settings (another fingerprint: scoring preset, metrics, prompts, turns...), as resuming would
    mix two kinds of conversations (and rewards) in one file."""
    rows = [r for r in read_jsonl(path) if isinstance(r, dict) and "conv_id" in r]
    other = sorted({str(r.get("fingerprint")) for r in rows if r.get("fingerprint") != fingerprint})
    if other:
        n = sum(r.get("fingerprint") != fingerprint for r in rows)
        raise CkError(f"{path} holds {n} conversation(s) simulated with other settings (fingerprint "
                      f"{', '.join(other)}; these settings give {fingerprint}): resuming would mix them with "
                      "new ones in one file. Give this simulation another simulate.output, go back to the settings "
                      "it was made with, or move the file (and its side files) away to start again.")
    return {str(r["conv_id"]) for r in rows}


def build_engine(sim: Simulation, limit: asyncio.Semaphore, rng: random.Random) -> tuple[Engine, dict[str, Caller]]:
    """The shared conversation engine, with one retrying caller per participant."""
    cfg = sim.config
    callers: dict[int, Caller] = {}

    def caller(p: Any) -> Caller:
        if id(p) not in callers:
            callers[id(p)] = Caller(p, cfg.retry, limit, random.Random(rng.random()))
        return callers[id(p)]

    user = UserSimulator(caller(sim.user), sim.user_prompt, cfg.termination_marker, cfg.json_retries)
    metrics: list[Metric] = []
    if cfg.scoring is not None:
        for name, spec in cfg.scoring.metrics.items():
            model = sim.metric_models.get(name)
            metrics.append(build_metric(name, spec, sim.base_dir, caller=caller(model) if model else None,
                                        prompt=sim.metric_prompts.get(name), json_retries=cfg.json_retries,
                                        preset=cfg.scoring.preset))
    engine = Engine(user=user, assistant=caller(sim.assistant), max_turns=cfg.max_turns, seed=sim.seed,
                    system=sim.system_prompt, scoring=cfg.scoring, metrics=metrics,
                    fingerprint=cfg.fingerprint(),
                    labels={"user": sim.user.label(), "assistant": sim.assistant.label()})
    named = {"user": callers[id(sim.user)], "assistant": callers[id(sim.assistant)]}
    for name, model in sim.metric_models.items():
        named[f"metric:{name}"] = callers[id(model)]
    return engine, named


async def run_simulation(sim: Simulation, tasks: list[Task], *, progress: bool = True,
                         overwrite: bool = False) -> Summary:
    """Simulate every conversation not yet in ``sim.output``; append each as it finishes.

    An output file ``ck simulate`` did not create is refused (replaced with ``overwrite``)."""
    from filelock import FileLock, Timeout

    cfg = sim.config
    output = sim.output
    output.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(output) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise CkError(f"another `ck simulate` is writing {output} (lock {output}.lock). Wait for it to "
                      "finish, or give this simulation another simulate.output.") from None
    try:
        claim_output(output, overwrite=overwrite)
        repair_tail(output)
        done = finished_ids(output, cfg.fingerprint())
        todo = [(cid, t) for t in tasks for cid in conversation_ids(t, cfg.conversations_per_task)]
        total = len(todo)
        pending = [(cid, t) for cid, t in todo if cid not in done]
        summary = Summary(output, total, total - len(pending), scoring=preset_line(cfg.scoring))
        if not pending:
            return summary
        for p in sim.participants():
            p.open()
        try:
            await _run(sim, pending, summary, progress)
        finally:
            for p in sim.participants():
                await p.aclose()
        return summary
    finally:
        lock.release()


def append_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append ``rows`` (secrets scrubbed) as whole JSON lines: one write and one fsync for all of them."""
    data = "".join(json.dumps(row, default=str) + "\n" for row in scrub(rows)).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


class Writer:
    """Appends finished conversations (and failures) in a worker thread, in batches.

    :meth:`add` never waits: the conversation's worker goes on to its next conversation at once. Rows
    that finish while a batch is being written form the next batch (one write and one fsync each), so
    the event loop never waits on the disk, and the disk sees one fsync per batch, not per row. A
    batch counts in the summary and the progress bar once it is on disk. A write error ends the run.
    """

    def __init__(self, summary: Summary, bar: Progress, output: Path, errors: Path) -> None:
        self.summary, self.bar, self.output, self.errors = summary, bar, output, errors
        self._rows: list[dict[str, Any]] = []
        self._failed: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._closing = False

    def add(self, row: dict[str, Any]) -> None:
        """A finished conversation, to append to the output."""
        self._rows.append(row)
        self._wake.set()

    def fail(self, row: dict[str, Any]) -> None:
        """A failed conversation, to append to the errors file."""
        self._failed.append(row)
        self._wake.set()

    def close(self) -> None:
        """No more rows: :meth:`run` returns once what is pending is written."""
        self._closing = True
        self._wake.set()

    @staticmethod
    async def _append(path: Path, rows: list[dict[str, Any]]) -> None:
        try:
            await asyncio.to_thread(append_lines, path, rows)
        except OSError as exc:
            raise CkError(f"could not append {len(rows)} conversation(s) to {path} ({exc.strerror or exc}). "
                          "Free disk space or fix the folder's permissions, then run `ck simulate` again: the "
                          "conversations already in the file are kept and the others are simulated again.") from None

    async def run(self) -> None:
        """Write batches until :meth:`close`."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            rows, self._rows = self._rows, []
            failed, self._failed = self._failed, []
            if rows:
                await self._append(self.output, rows)
                self.summary.finished += len(rows)
                for _ in rows:
                    self.bar.advance()
            if failed:
                await self._append(self.errors, failed)
                self.summary.failed += len(failed)
                for _ in failed:
                    self.bar.advance(failed=True)
            if self._closing and not self._rows and not self._failed:
                return


async def _run(sim: Simulation, pending: list[tuple[str, Task]], summary: Summary, show: bool) -> None:
    cfg = sim.config
    limit = asyncio.Semaphore(cfg.max_in_flight or 4 * cfg.concurrency)
    engine, callers = build_engine(sim, limit, random.Random(sim.seed))
    bar = Progress(summary.total, summary.already_done, enabled=show)
    writer = Writer(summary, bar, sim.output, side_file(sim.output, "errors.jsonl"))
    queue = iter(pending)
    start, cpu = time.monotonic(), time.process_time()

    active = [min(cfg.concurrency, len(pending))]

    async def worker() -> None:
        try:
            for conv_id, task in queue:
                try:
                    row = await engine.run(conv_id, task)
                except CallFailed as exc:
                    writer.fail({"conv_id": conv_id, "error": str(exc), "time": time.time()})
                    continue
                writer.add(row)
        finally:
            active[0] -= 1
            if not active[0]:
                writer.close()

    writing = asyncio.create_task(writer.run())

    async def watch_writer() -> None:  # a write error stops the run; stopping the run never stops the writer
        await asyncio.shield(writing)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(active[0]):
                group.create_task(worker())
            group.create_task(watch_writer())
    except* CkError as eg:
        raise eg.exceptions[0] from None
    finally:
        writer.close()  # what finished is written even when the run stopped early
        with contextlib.suppress(Exception):  # a write error was raised through the group already
            await writing
        bar.close()
        summary.seconds = time.monotonic() - start
        summary.cpu_seconds = time.process_time() - cpu
        summary.calls = {name: {"calls": c.calls, "retries": c.retries, "errors": dict(c.errors),
                                **c.plugin.stats()} for name, c in callers.items()}
        summary.calls["user"]["malformed_json"] = engine.user.malformed
        atomic_write_json(side_file(sim.output, "run.json"), scrub({
            "spec": str(sim.spec_file), "fingerprint": cfg.fingerprint(),
            "simulate": cfg.model_dump(mode="json"), "participants": engine.labels,
            "total": summary.total, "already_done": summary.already_done, "finished": summary.finished,
            "failed": summary.failed, "seconds": round(summary.seconds, 3),
            "cpu_seconds": round(summary.cpu_seconds, 3), "calls": summary.calls,
        }))
