"""Batched local generation for the ``ck/`` provider, without polling.

inspect calls ``generate`` once per sample, concurrently. inspect's ``hf`` provider collects those
calls on a thread that waits until no request arrived for 2 seconds (or a batch is full), and each
caller polls for its answer once a second: on CPU most of an eval was spent waiting. Here:

* each call puts its request in the event loop's :class:`Batcher` and awaits an asyncio future;
* a full batch (``batch_size`` requests of the same model and generation settings) is dispatched at
  once to :data:`WORKER`, the one thread of the process that runs models (so a base model shared
  through :mod:`cruijff_kit_inspect.modelcache` is never used by two batches at a time); a partial
  batch is dispatched when no request arrived for :attr:`Batcher.quiet` seconds, or as soon as the
  worker is free again and no more requests are coming;
* while the worker generates, the next requests gather into the next batch; the answers are handed
  back through ``call_soon_threadsafe``, so no caller sleeps.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

__all__ = ["WORKER", "Batcher", "batcher"]

WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ck-generate")
"""The one thread that runs local models in this process."""

#: Runs one batch of prompts on the worker; returns one result per prompt, in order.
RunBatch = Callable[[Sequence[str]], Sequence[Any]]


@dataclass
class _Request:
    prompt: str
    future: asyncio.Future[Any]


@dataclass
class _Group:
    run: RunBatch
    batch_size: int
    requests: list[_Request] = field(default_factory=list)


class Batcher:
    """Gathers the generate requests of one event loop into batches; one batch runs at a time."""

    quiet: float = 0.05
    """Seconds without a new request after which a partial batch is generated."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._groups: dict[Hashable, _Group] = {}
        self._busy = False
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        #: Sizes of the batches generated (for tests and the benchmark).
        self.sizes: list[int] = []

    async def submit(self, key: Hashable, prompt: str, run: RunBatch, batch_size: int) -> Any:
        """The result of ``prompt``, generated in a batch with other requests of the same ``key``.

        ``key`` must be equal exactly for requests that may share a batch (same model, tokenizer
        and generation settings); ``run`` generates a batch on the worker thread.
        """
        fut: asyncio.Future[Any] = self.loop.create_future()
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(run, max(1, int(batch_size)))
        group.requests.append(_Request(prompt, fut))
        self._last = self.loop.time()
        self._poke()
        return await fut

    # ------------------------------------------------------------------ scheduling
    def _poke(self) -> None:
        if self._busy:
            return
        for key, group in list(self._groups.items()):
            group.requests = [r for r in group.requests if not r.future.done()]  # cancelled callers
            if not group.requests:
                del self._groups[key]
        if not self._groups:
            return
        full = next((k for k, g in self._groups.items() if len(g.requests) >= g.batch_size), None)
        waited = self.loop.time() - self._last
        if full is None and waited < self.quiet:
            if self._timer is None:
                self._timer = self.loop.call_later(self.quiet - waited, self._wake)
            return
        self._dispatch(full if full is not None else next(iter(self._groups)))

    def _wake(self) -> None:
        self._timer = None
        self._poke()

    def _dispatch(self, key: Hashable) -> None:
        group = self._groups[key]
        batch, group.requests = group.requests[: group.batch_size], group.requests[group.batch_size:]
        if not group.requests:
            del self._groups[key]
        self._busy = True
        self.sizes.append(len(batch))
        job = WORKER.submit(group.run, [r.prompt for r in batch])
        job.add_done_callback(lambda done: self._hand_back(batch, done))

    def _hand_back(self, batch: list[_Request], done: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self._finish, batch, done)
        except RuntimeError:  # the eval's loop is gone (cancelled): nobody waits for these answers
            pass

    def _finish(self, batch: list[_Request], done: Any) -> None:
        self._busy = False
        exc = done.exception()
        results = None if exc is not None else list(done.result())
        for i, req in enumerate(batch):
            if req.future.done():
                continue
            if exc is not None:
                req.future.set_exception(exc)
            else:
                req.future.set_result(results[i])  # type: ignore[index]
        self._poke()


_BATCHERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Batcher] = weakref.WeakKeyDictionary()


def batcher() -> Batcher:
    """The :class:`Batcher` of the running event loop (each ``inspect_ai.eval`` call runs its own loop)."""
    loop = asyncio.get_running_loop()
    found = _BATCHERS.get(loop)
    if found is None:
        found = _BATCHERS[loop] = Batcher(loop)
    return found
