"""Calls to a simulator (or any model behind a :class:`Simulator`) with bounded concurrency and retries
with exponential backoff: ``ck simulate`` and dataset plugins that rewrite rows with a model use it.

Also the deadlines every network call is held to (docs/reliability.md, "Every network call has a
total deadline"): a per-read socket timeout alone lets a server that sends one byte a second, or
never closes, hold a call forever. :func:`call_with_deadline` (blocking code) and
:func:`within_deadline` (async code) bound one try by wall-clock time; :func:`read_body` reads a
response in small reads that check the deadline; :func:`json_body` turns a truncated or invalid JSON
body into a retryable :class:`BadResponse`; :class:`StallGuard` aborts a large download that makes no
progress for N seconds while letting a slow but steady one finish.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from cruijff_kit._api.kinds import Simulator
from cruijff_kit._base.errors import CkError

T = TypeVar("T")


class RetryPolicy(BaseModel):
    """Backoff for transient failures (HTTP 429, 5xx, timeouts, dropped connections)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    attempts: int = Field(6, gt=0, description="Tries per call, the first included.")
    initial_delay: float = Field(0.5, ge=0.0, description="Seconds before the first retry.")
    max_delay: float = Field(30.0, ge=0.0, description="Longest wait between tries.")
    multiplier: float = Field(2.0, ge=1.0, description="Each wait is this times the previous one.")
    jitter: float = Field(0.25, ge=0.0, le=1.0, description="Random extra wait, as a fraction of the wait.")


class CallFailed(Exception):
    """A call failed for good (not retryable, or out of tries); fails one conversation, not the run."""


def backoff_delay(policy: RetryPolicy, attempt: int, rng: random.Random, hint: float | None = None) -> float:
    """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 1)."""
    try:
        delay = min(policy.max_delay, policy.initial_delay * policy.multiplier ** (attempt - 1))
    except OverflowError:  # multiplier ** attempt past the floats: the cap applies
        delay = policy.max_delay
    delay *= 1.0 + policy.jitter * rng.random()
    if hint is not None and math.isfinite(hint):  # a server's Retry-After of nan or inf is ignored
        delay = max(delay, min(hint, policy.max_delay))
    return delay


@dataclass
class Caller:
    """Wraps one participant: a shared request limit, retries, and counters of what happened."""

    plugin: Simulator
    policy: RetryPolicy
    limit: asyncio.Semaphore
    rng: random.Random = field(default_factory=random.Random)
    retries: int = 0
    calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    async def __call__(self, messages: list[dict[str, str]], **generation: Any) -> str:
        """The participant's reply; transient errors retried with backoff, others raise CallFailed."""
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self.limit:
                    self.calls += 1
                    return await self.plugin.complete(messages, **generation)
            except CkError:
                raise
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                kind = type(exc).__name__
                self.errors[kind] = self.errors.get(kind, 0) + 1
                if not self.plugin.is_retryable(exc):
                    raise CallFailed(f"{self.plugin.label()}: {kind}: {exc}") from exc
                if attempt >= self.policy.attempts:
                    raise CallFailed(f"{self.plugin.label()}: gave up after {attempt} tries; last error "
                                     f"{kind}: {exc}") from exc
                self.retries += 1
                await asyncio.sleep(backoff_delay(self.policy, attempt, self.rng, self.plugin.retry_after(exc)))


# --------------------------------------------------------------------------- deadlines
class DeadlineExceeded(TimeoutError):
    """A network call did not finish within its total deadline (a transient failure: retried)."""


class BadResponse(ConnectionError):
    """A server answered, but the body is truncated or not the JSON expected (retried)."""


class DownloadStalled(TimeoutError):
    """A download received (almost) nothing for its stall window (transient: retried, resumed where possible)."""


class Deadline:
    """A total wall-clock budget for one try of a network call, on the monotonic clock."""

    def __init__(self, seconds: float, what: str = "the call") -> None:
        self.seconds = float(seconds)
        self.what = what
        self.end = time.monotonic() + self.seconds

    def left(self) -> float:
        """Seconds left (0.0 once past)."""
        return max(0.0, self.end - time.monotonic())

    def error(self) -> DeadlineExceeded:
        """The error to raise when the deadline has passed."""
        return DeadlineExceeded(f"{self.what} did not finish within its deadline of {self.seconds:g} s")

    def check(self) -> None:
        """Raise :class:`DeadlineExceeded` when the deadline has passed."""
        if time.monotonic() >= self.end:
            raise self.error()


def _in_worker(call: Callable[[], Any], name: str) -> tuple[dict[str, Any], threading.Event]:
    """Start ``call()`` in a daemon thread; returns the box that receives its ``value`` or ``error``
    and the event set when it ends (the caller waits on it, bounded, and may abandon the thread)."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread as is
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name=name[:60], daemon=True).start()
    return box, done


def call_with_deadline(fn: Callable[[Deadline], T], seconds: float, what: str = "the call") -> T:
    """``fn(deadline)`` run in a worker thread, bounded by ``seconds`` of wall-clock time in total.

    Returns what ``fn`` returns and raises what it raises; raises :class:`DeadlineExceeded` once
    ``seconds`` have passed, whatever the server does (trickles bytes, never answers, never closes).
    The worker is then abandoned (a daemon thread): ``fn`` should bound its own reads with
    ``deadline.left()`` and :func:`read_body` so that it ends soon after, and must not change shared
    state after the deadline (write to a temporary file, and let the caller move it into place).
    """
    deadline = Deadline(seconds, what)
    box, done = _in_worker(lambda: fn(deadline), f"ck-deadline: {what}")
    if not done.wait(deadline.seconds):
        raise deadline.error()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


async def within_deadline(awaitable: Awaitable[T], seconds: float, what: str = "the call") -> T:
    """Await ``awaitable`` for at most ``seconds`` in total; cancels it and raises
    :class:`DeadlineExceeded` past that (an HTTP client's own timeouts are per read, not total)."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except DeadlineExceeded:
        raise
    except TimeoutError:
        raise Deadline(seconds, what).error() from None


def read_body(resp: IO[bytes] | Any, deadline: Deadline, *, length: int | None = None,
              chunk_size: int = 1 << 16) -> bytes:
    """A response body read in small reads (``read1`` where the response has it, so a trickle returns
    at each byte) with the deadline checked between them. ``length`` (the Content-Length) makes a
    body that ends short a :class:`BadResponse`, as is a connection that drops mid-body."""
    read = getattr(resp, "read1", None) or resp.read
    parts: list[bytes] = []
    got = 0
    while True:
        deadline.check()
        try:
            data = read(chunk_size)
        except (TimeoutError, OSError) as exc:  # a per-read timeout, or a reset mid-body
            deadline.check()
            raise BadResponse(f"{deadline.what}: the connection failed mid-body after {got} bytes "
                              f"({type(exc).__name__}: {exc})") from None
        except Exception as exc:  # the HTTP library's own "incomplete read" errors
            raise BadResponse(f"{deadline.what}: the body ended early after {got} bytes "
                              f"({type(exc).__name__})") from None
        if not data:
            break
        parts.append(data)
        got += len(data)
    if length is not None and got < length:
        raise BadResponse(f"{deadline.what}: the body ended after {got} of {length} bytes")
    return b"".join(parts)


def json_body(data: bytes | str, what: str = "the server") -> Any:
    """``data`` parsed as JSON; a truncated or invalid body is a :class:`BadResponse` (retried)."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        snippet = " ".join(text.split())[:120]
        raise BadResponse(f"{what} answered with a body that is not complete JSON ({exc}; "
                          f"{len(data)} bytes: {snippet!r})") from None


class StallGuard:
    """The deadline of a large download: aborts when fewer than ``min_bytes`` arrive within
    ``stall_seconds`` (nothing at all, or a trickle), never because the whole transfer is slow.

    Call :meth:`feed` with each chunk's size as it arrives; it raises :class:`DownloadStalled`. Pair it
    with a per-read socket timeout of ``stall_seconds``, which covers a server that sends nothing.
    """

    def __init__(self, stall_seconds: float, what: str = "the download", min_bytes: int = 1) -> None:
        self.stall_seconds = float(stall_seconds)
        self.what = what
        self.min_bytes = max(1, int(min_bytes))
        self.total = 0
        self._window_start = time.monotonic()
        self._window_bytes = 0

    def feed(self, n: int) -> None:
        """``n`` more bytes arrived."""
        self.total += n
        self._window_bytes += n
        if self._window_bytes >= self.min_bytes:
            self._window_start, self._window_bytes = time.monotonic(), 0
        else:
            self.check()

    def check(self) -> None:
        """Raise :class:`DownloadStalled` when the current window has run out without progress."""
        if time.monotonic() - self._window_start > self.stall_seconds:
            raise DownloadStalled(
                f"{self.what} stalled: fewer than {self.min_bytes} bytes arrived in {self.stall_seconds:g} s "
                f"({self.total} bytes received in all)")


def call_with_stall_guard(fn: Callable[[Callable[[int], None]], T], stall_seconds: float,
                          what: str = "the transfer", min_bytes: int = 1) -> T:
    """``fn(progress)`` run in a worker thread, where ``fn`` calls ``progress(n)`` each time ``n`` more
    bytes moved (a transfer library's progress callback); the stall deadline of a large transfer.

    Raises :class:`DownloadStalled` once fewer than ``min_bytes`` moved within ``stall_seconds``
    (nothing at all, a trickle, or a server that never answers after the last byte), never because
    the whole transfer is slow but steady. The worker is then abandoned (a daemon thread) and its
    next ``progress`` call raises, so the transfer stops at its next chunk; ``fn`` should write to a
    temporary file that the caller moves into place only after a success.
    """
    guard = StallGuard(stall_seconds, what, min_bytes)
    lock = threading.Lock()
    stopped = threading.Event()

    def progress(n: int) -> None:
        with lock:
            if stopped.is_set():
                raise DownloadStalled(f"{what} was given up on")
            try:
                guard.feed(int(n))
            except DownloadStalled:
                stopped.set()
                raise

    box, done = _in_worker(lambda: fn(progress), f"ck-stall: {what}")
    poll = min(1.0, max(0.01, guard.stall_seconds / 10))
    while not done.wait(poll):
        with lock:
            try:
                guard.check()
            except DownloadStalled:
                stopped.set()
                raise
    if "error" in box:
        if stopped.is_set():  # the transfer library may wrap the error that progress() raised
            raise DownloadStalled(f"{what} stalled: fewer than {guard.min_bytes} bytes arrived in "
                                  f"{guard.stall_seconds:g} s ({guard.total} bytes moved in all)") from None
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]
