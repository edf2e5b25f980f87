"""A lean HTTP/1.1 client for chat-completions requests: keep-alive connections on asyncio protocols.

Why not the ``openai`` client's HTTP stack: with hundreds of requests a second in flight, its layers
(request options, httpx models, httpcore's pool over anyio) cost a few milliseconds of CPU per call,
more than everything else ``ck simulate`` does; this client costs a tenth of that. It does only what
a JSON POST to a chat-completions endpoint needs:

* one connection per request in flight, kept alive and reused (the pool grows to the peak number of
  requests in flight, which the core bounds with ``max_in_flight``; at most ``max_idle`` are kept);
* ``http://`` and ``https://`` (certificates checked against certifi's bundle where installed, else
  the system's); no proxies (the ``openai`` transport honours ``HTTPS_PROXY``);
* responses with a ``Content-Length``, ``Transfer-Encoding: chunked`` or read until the server
  closes; ``1xx`` interim responses skipped; no compression asked for;
* one total deadline per request (connecting, sending, waiting and reading), whatever the server does;
* a kept-alive connection the server closed while idle is replaced once, at once, when it fails
  before any byte of the response came.

Errors are the ``openai`` package's own classes, as its client raises them, so that retries and
messages are the same with either transport: ``APIStatusError`` subclasses for 4xx/5xx (with the
response headers, for ``Retry-After``), ``APIConnectionError`` for refused or dropped connections,
and :class:`cruijff_kit.BadResponse` for a 200 whose body is truncated or not JSON.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections import deque
from typing import Any
from urllib.parse import urlsplit

from cruijff_kit import BadResponse, DeadlineExceeded

#: Largest response accepted (bytes received); a longer one is a BadResponse.
MAX_RESPONSE = 256 << 20
#: Longest response head (status line and headers).
MAX_HEAD = 64 << 10


class _Dropped(ConnectionError):
    """The connection closed (or failed) before the response was complete; ``got`` bytes had come."""

    def __init__(self, message: str, got: int) -> None:
        super().__init__(message)
        self.got = got


class _Expired(TimeoutError):
    """The request's deadline passed (the connection was dropped)."""


class Response:
    """A complete HTTP response: status code, headers (names lowercased) and body."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; at most one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True
        self.used = 0
        self._waiter: asyncio.Future[Response] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._buf = bytearray()
        self._got = 0
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._headers: dict[str, str] | None = None
        self._body_start = 0
        self._length: int | None = None
        self._chunked = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():  # bytes nobody asked for: the connection is not in a known state
            self.reusable = False
            self.abort()
            return
        self._got += len(data)
        self._buf += data
        try:
            response = self._parse()
        except BadResponse as exc:
            self.reusable = False
            self._fail(exc)
            self.abort()
            return
        if response is not None:
            self._finish(response)

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers is not None and self._length is None and not self._chunked:
            self._finish(Response(self._status, self._headers, bytes(self._buf[self._body_start:])))
            return
        why = f"{type(exc).__name__}: {exc}" if exc else "the server closed the connection"
        if self._headers is not None:
            self._fail(BadResponse(f"the response ended early ({why}) after {len(self._buf) - self._body_start} "
                                   "bytes of its body"))
        else:
            self._fail(_Dropped(f"no complete response ({why})", self._got))

    # -- requests
    def request(self, data: bytes, deadline: float) -> asyncio.Future[Response]:
        """Send one request; the future resolves to its response, or fails once the loop's clock passes
        ``deadline`` (a timer on the loop: cheaper than a timeout scope per request)."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._timer = loop.call_at(deadline, self._expire)
        self._buf.clear()
        self._got = 0
        self._reset()
        self.used += 1
        self.transport.write(data)
        return self._waiter

    def _expire(self) -> None:
        self._timer = None
        self._fail(_Expired())
        self.abort()

    def abort(self) -> None:
        """Drop the connection at once (a request past its deadline, a broken response)."""
        self.reusable = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    def _finish(self, response: Response) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiter, self._waiter = self._waiter, None
        self._buf.clear()
        self._reset()
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def _fail(self, exc: BaseException) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _parse(self) -> Response | None:
        buf = self._buf
        while self._headers is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise BadResponse(f"the response head is longer than {MAX_HEAD} bytes")
                return None
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                raise BadResponse(f"not an HTTP response: {lines[0][:80]!r}")
            status = int(parts[1])
            if 100 <= status < 200 and status != 101:  # an interim response (100 Continue...): the real one follows
                del buf[:end + 4]
                continue
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            self._status, self._headers, self._body_start = status, headers, end + 4
            if headers.get("connection", "").lower() == "close" or parts[0] == "HTTP/1.0":
                self.reusable = False
            if status in (204, 304):  # no body, whatever the headers say
                self._length = 0
            elif "chunked" in headers.get("transfer-encoding", "").lower():
                self._chunked = True
            elif "content-length" in headers:
                try:
                    self._length = int(headers["content-length"])
                except ValueError:
                    raise BadResponse(f"Content-Length is not a number: {headers['content-length'][:40]!r}") from None
            else:
                self._length = None
                self.reusable = False  # read until the server closes
        if len(buf) - self._body_start > MAX_RESPONSE:
            raise BadResponse(f"the response is longer than {MAX_RESPONSE >> 20} MiB")
        if self._chunked:
            body = _dechunk(buf, self._body_start)
            return None if body is None else Response(self._status, self._headers, body)
        if self._length is not None and len(buf) - self._body_start >= self._length:
            body = bytes(buf[self._body_start:self._body_start + self._length])
            return Response(self._status, self._headers, body)
        return None


def _dechunk(buf: bytearray, start: int) -> bytes | None:
    """The body of a complete chunked message in ``buf`` from ``start``; None while incomplete."""
    parts: list[bytes] = []
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BadResponse(f"a chunk size is not a hex number: {size_text[:40]!r}") from None
        if size == 0:
            # the last chunk, then optional trailers, then an empty line
            end = buf.find(b"\r\n\r\n", eol)
            if end < 0 and buf[eol:eol + 4] != b"\r\n\r\n":
                return None
            return b"".join(parts)
        if len(buf) < eol + 2 + size + 2:
            return None
        parts.append(bytes(buf[eol + 2:eol + 2 + size]))
        pos = eol + 2 + size + 2


class HTTPClient:
    """Keep-alive HTTP/1.1 connections to one origin; :meth:`post_json` sends a JSON body."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None, *, max_idle: int = 512) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"
        fixed = {"Host": self.host_header, "User-Agent": "cruijff-kit", "Accept": "application/json",
                 "Accept-Encoding": "identity", "Content-Type": "application/json", **(headers or {})}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self.max_idle = max_idle
        self._idle: deque[_Connection] = deque()
        self._ssl: ssl.SSLContext | None = _ssl_context() if parts.scheme == "https" else None
        self.opened = 0

    def url(self, path: str) -> str:
        """The full URL of ``path`` (relative to the base URL's path)."""
        return f"{self.scheme}://{self.host_header}{self.prefix}{path}"

    async def _connect(self, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout_at(deadline):
            _, conn = await loop.create_connection(_Connection, self.host, self.port, ssl=self._ssl,
                                                   server_hostname=self.host if self._ssl else None)
        self.opened += 1
        return conn

    def _take(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to have been closed idle
            if not conn.closed and conn.reusable:
                return conn
        return None

    def _give_back(self, conn: _Connection) -> None:
        if conn.reusable and not conn.closed and len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn.abort()

    async def post_json(self, path: str, body: bytes, timeout: float, what: str = "the request") -> Response:
        """POST ``body`` (JSON bytes) to ``path``; the response, whatever its status, within ``timeout`` s.

        Raises :class:`cruijff_kit.DeadlineExceeded` past the deadline, ``ConnectionError`` when no
        connection could be made or it dropped before the response, and :class:`cruijff_kit.BadResponse`
        when the response is not HTTP or its body ended early.
        """
        data = b"".join((b"POST ", (self.prefix + path).encode(), b" HTTP/1.1\r\n", self._fixed,
                         b"Content-Length: %d\r\n\r\n" % len(body), body))
        deadline = asyncio.get_running_loop().time() + timeout
        conn: _Connection | None = None
        try:
            conn = self._take()
            reused = conn is not None
            if conn is None:
                conn = await self._connect(deadline)
            try:
                response = await conn.request(data, deadline)
            except _Dropped as exc:
                conn.abort()
                if not reused or exc.got:  # only a kept-alive connection closed while idle is replaced
                    raise ConnectionError(f"{what}: {exc}") from None
                conn = await self._connect(deadline)
                try:
                    response = await conn.request(data, deadline)
                except _Dropped as again:
                    raise ConnectionError(f"{what}: {again}") from None
            self._give_back(conn)
            conn = None
            return response
        except TimeoutError:  # the request's timer (_Expired) or connecting past the deadline
            if conn is not None:
                conn.abort()
            raise DeadlineExceeded(f"{what} did not finish within its deadline of {timeout:g} s") from None
        except BaseException:
            if conn is not None:
                conn.abort()
            raise

    async def aclose(self) -> None:
        """Close every idle connection."""
        while self._idle:
            self._idle.pop().abort()


def _ssl_context() -> ssl.SSLContext:
    try:
        import certifi
    except ImportError:  # pragma: no cover - certifi comes with the openai package's httpx
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


def json_bytes(obj: Any) -> bytes:
    """``obj`` as compact UTF-8 JSON."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
