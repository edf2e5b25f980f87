"""Deadlines for the model hub's network calls (docs/reliability.md, "Every network call has a total
deadline").

* The metadata call (model info with file hashes) is small: each try has a total deadline
  (:func:`cruijff_kit.call_with_deadline`), so a hub that trickles bytes or never closes is given up
  on after ``timeout x ATTEMPTS`` plus backoff.
* File downloads can be large and slow: they get a stall deadline instead (:class:`StallGuard`), held
  by event hooks on the hub library's own HTTP client, so proxies and the user's client settings are
  kept. Every request's per-read timeout is at most the stall window, and every response body is
  watched as it arrives from the network: fewer than :data:`MIN_BYTES` in ``stall_seconds`` ends
  that read with the client's own read timeout, so the hub client resumes the file where it stopped
  (an HTTP Range request), up to 5 times in a row without progress, then gives up; the partial file
  is removed, never moved into the cache.
* Verification (the hub library's ``verify_repo_checksums``) lists the repository's files with their
  hashes, then hashes the local files: the listing is fetched whole under the metadata deadline
  (:func:`deadlined_api`), the hashing reads only the local disk and has none.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from cruijff_kit._api.retry import DeadlineExceeded, DownloadStalled, StallGuard, call_with_deadline

T = TypeVar("T")

#: Tries of the metadata call (file downloads are resumed by the hub client itself).
ATTEMPTS = 3
#: Seconds before the second try; doubles each time.
BACKOFF = 1.0
#: Default total deadline of one try of the metadata call, in seconds.
DEFAULT_TIMEOUT = 60.0
#: Default stall window of file downloads, in seconds.
DEFAULT_STALL = 60.0
#: Bytes a download must receive within each stall window (a trickle below this counts as a stall).
MIN_BYTES = 1024


def with_retries(step: Callable[[], T], *, retry_on: tuple[type[BaseException], ...],
                 attempts: int = ATTEMPTS) -> T:
    """``step()`` tried ``attempts`` times with backoff while it raises one of ``retry_on``."""
    for attempt in range(1, attempts + 1):
        try:
            return step()
        except retry_on:
            if attempt == attempts:
                raise
            time.sleep(BACKOFF * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # pragma: no cover


def metadata(fetch: Callable[[], T], timeout: float, what: str) -> T:
    """``fetch()`` (a small hub API call), each try within ``timeout`` seconds in total."""
    return with_retries(lambda: call_with_deadline(lambda _deadline: fetch(), timeout, what),
                        retry_on=(DeadlineExceeded,))


def deadlined_api(timeout: float, what: str) -> Any:
    """A ``huggingface_hub.HfApi`` whose repository file listing (``list_repo_tree``, the network call of
    ``verify_repo_checksums``) is fetched whole, each try within ``timeout`` seconds in total."""
    from huggingface_hub import HfApi

    class DeadlinedApi(HfApi):
        def list_repo_tree(self, *args: Any, **kwargs: Any) -> Any:
            return iter(metadata(lambda: list(super(DeadlinedApi, self).list_repo_tree(*args, **kwargs)),
                                 timeout, what))

    return DeadlinedApi()


def _guarded_stream(inner: Any, guard: StallGuard) -> Any:
    """``inner`` (a response body stream) feeding ``guard`` with each piece as it comes off the network."""
    import httpx2

    class GuardedStream(httpx2.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            try:
                for chunk in inner:
                    guard.feed(len(chunk))
                    yield chunk
            except DownloadStalled as exc:  # the hub client resumes after its own read timeouts
                raise httpx2.ReadTimeout(str(exc)) from None

        def close(self) -> None:
            inner.close()

    return GuardedStream()


def files(fetch: Callable[[], T], stall_seconds: float) -> T:
    """``fetch()`` (the hub client's file downloads, which resume a stalled file themselves); a stall
    the client gave up on is a :class:`DownloadStalled`."""
    import httpx2

    try:
        return fetch()
    except httpx2.TimeoutException as exc:
        raise DownloadStalled(f"a file download stalled (under {MIN_BYTES} bytes in {stall_seconds:g} s) "
                              f"and the hub client's resumes stalled too: {exc or type(exc).__name__}") from None


@contextmanager
def stall_guarded(stall_seconds: float, min_bytes: int = MIN_BYTES) -> Iterator[None]:
    """While inside, every request of the hub library's HTTP client has a per-read timeout of at most
    ``stall_seconds`` and every response body a :class:`StallGuard`; the client's hooks are restored
    afterwards."""
    from huggingface_hub import get_session

    session = get_session()
    saved = {name: list(hooks) for name, hooks in session.event_hooks.items()}

    def cap_read_timeout(request: Any) -> None:
        timeout = dict(request.extensions.get("timeout") or {})
        read = timeout.get("read")
        timeout["read"] = stall_seconds if read is None else min(float(read), stall_seconds)
        request.extensions["timeout"] = timeout

    def guard_body(response: Any) -> None:
        guard = StallGuard(stall_seconds, f"the download of {response.request.url.path}", min_bytes)
        response.stream = _guarded_stream(response.stream, guard)

    session.event_hooks = {**saved, "request": [*saved.get("request", []), cap_read_timeout],
                           "response": [*saved.get("response", []), guard_body]}
    try:
        yield
    finally:
        session.event_hooks = saved
