"""The `openai` simulator's built-in HTTP/1.1 client, against raw sockets on 127.0.0.1 and the fake server.

The raw server answers each request with bytes the test scripts (chunked bodies, interim responses,
bodies read until close, connections closed while idle, silence), so each case of the client's
response reading and connection reuse is exercised on a real socket.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_openai import FakeOpenAI
from simulate_fixtures import (
    KEY,
    KEY_VAR,
    key_in_environment,
    participant,
    read_conversations,
    write_sim_spec,
)

api_key = pytest.fixture(key_in_environment, name="api_key")

#: (request bytes) -> (bytes to send, close the connection after sending); None: send nothing, hold it open.
Answer = Callable[[bytes], "tuple[bytes, bool] | None"]


class RawServer:
    """A thread per connection; ``answer`` decides what each request gets."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while not self.stop.is_set():
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), b"0"))
                while len(data) < length:
                    data += conn.recv(65536)
                body, data = data[:length], data[length:]
                self.requests.append(head + b"\r\n\r\n" + body)
                reply = self.answer(body)
                if reply is None:
                    self.stop.wait()
                    return
                payload, close = reply
                conn.sendall(payload)
                if close:
                    return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[[Answer], RawServer]]:
    servers: list[RawServer] = []

    def start(answer: Answer) -> RawServer:
        servers.append(RawServer(answer))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def ok(body: bytes, *headers: str) -> bytes:
    head = ["HTTP/1.1 200 OK", "Content-Type: application/json", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def post(url: str, bodies: list[bytes], timeout: float = 5.0) -> list[Any]:
    """POST each body in turn through one client; the responses (or the errors raised)."""
    from cruijff_kit_openai.http import HTTPClient

    async def go() -> list[Any]:
        client = HTTPClient(url)
        out: list[Any] = []
        for body in bodies:
            try:
                out.append(await client.post_json("/chat/completions", body, timeout))
            except Exception as exc:  # noqa: BLE001 - the test looks at it
                out.append(exc)
        await client.aclose()
        return out

    return asyncio.run(go())


def test_kept_alive_connections_are_reused(raw_server: Callable[[Answer], RawServer]) -> None:
    server = raw_server(lambda body: (ok(b'{"echo": ' + body + b"}"), False))
    responses = post(server.url, [json.dumps({"n": i}).encode() for i in range(20)])
    assert [json.loads(r.body) for r in responses] == [{"echo": {"n": i}} for i in range(20)]
    assert server.connections == 1  # one connection for 20 requests in turn
    head = server.requests[0].split(b"\r\n\r\n")[0].decode()
    assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.url.split(':')[2].split('/')[0]}" in head


def test_chunked_interim_and_read_until_close_bodies(raw_server: Callable[[Answer], RawServer]) -> None:
    replies = iter([
        # chunked, in two chunks with an extension, then a trailer
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"5;x=y\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\nX-Trailer: t\r\n\r\n", False),
        # an interim 100 Continue, then the response
        (b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b'{"b": 2}'), False),
        # no length: the body runs until the server closes
        (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"c\": 3}", True),
        # a new connection after that one closed
        (ok(b'{"d": 4}'), False),
    ])
    server = raw_server(lambda body: next(replies))
    responses = post(server.url, [b"{}"] * 4)
    assert [(r.status, json.loads(r.body)) for r in responses] == [(200, {"a": 1}), (200, {"b": 2}), (200, {"c": 3}),
                                                                    (200, {"d": 4})]
    assert server.connections == 2


def test_a_connection_the_server_closed_while_idle_is_replaced_once(
        raw_server: Callable[[Answer], RawServer]) -> None:
    # the server closes every connection after its response, without saying so (no Connection: close):
    # the kept connection is dead when the next request goes out, and a new one is made at once
    server = raw_server(lambda body: (ok(b'{"ok": true}'), True))
    responses = post(server.url, [b"{}"] * 3)
    assert all(getattr(r, "status", None) == 200 for r in responses), responses
    assert server.connections == 3 and len(server.requests) == 3


def test_drops_bad_bodies_and_silence_raise(raw_server: Callable[[Answer], RawServer]) -> None:
    from cruijff_kit import BadResponse, DeadlineExceeded

    replies = iter([
        (b"", True),                                                     # a fresh connection closed, no answer
        (ok(b'{"whole": "body"}')[:-6], True),                           # the body ends early
        (b"SMTP ready\r\n\r\n", True),                                   # not HTTP
        None,                                                            # nothing, ever
    ])
    server = raw_server(lambda body: next(replies))
    dropped, short, garbage, silent = post(server.url, [b"{}"] * 4, timeout=0.5)
    assert isinstance(dropped, ConnectionError) and not isinstance(dropped, BadResponse), dropped
    assert isinstance(short, BadResponse) and "ended early" in str(short)
    assert isinstance(garbage, BadResponse) and "not an HTTP response" in str(garbage)
    assert isinstance(silent, DeadlineExceeded) and "0.5 s" in str(silent)
    assert len(server.requests) == 4  # no request was sent twice


def test_status_errors_are_the_openai_packages(api_key: str) -> None:
    import openai
    from cruijff_kit_openai.simulator import OpenAIConfig, OpenAISimulator

    from cruijff_kit import CkError

    def config(server: FakeOpenAI, **options: Any) -> OpenAIConfig:
        section = {k: v for k, v in participant(server.url, "helper").items() if k != "plugin"}
        return OpenAIConfig(**{**section, **options})

    async def one(server: FakeOpenAI, **options: Any) -> Any:
        sim = OpenAISimulator(config(server, **options))
        sim.open()
        try:
            return await sim.complete([{"role": "user", "content": "What is 1+2?"}], seed=0)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            return exc
        finally:
            await sim.aclose()

    with FakeOpenAI(api_key=KEY, faults=("429", "500")) as server:
        sim = OpenAISimulator(config(server))
        assert sim.uses_builtin()
        limited = asyncio.run(one(server))
        assert isinstance(limited, openai.RateLimitError) and limited.status_code == 429
        assert "rate limited" in str(limited) and sim.is_retryable(limited)
        assert sim.retry_after(limited) == pytest.approx(0.005)  # the server's retry-after-ms: 5
        failed = asyncio.run(one(server))
        assert isinstance(failed, openai.InternalServerError) and sim.is_retryable(failed)
        assert asyncio.run(one(server)) == "The answer is 3."
        refused = asyncio.run(one(server, api_key_env=None))  # no key sent: 401
        assert isinstance(refused, openai.AuthenticationError)
        with pytest.raises(CkError, match="refused the request"):
            sim.is_retryable(refused)
    gone = asyncio.run(one(server))  # the server is stopped: nothing listens on its port
    assert isinstance(gone, openai.APIConnectionError) and sim.is_retryable(gone)


def test_auto_transport_takes_the_openai_client_behind_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    from cruijff_kit_openai.simulator import OpenAIConfig, OpenAISimulator

    def sim(**options: Any) -> OpenAISimulator:
        return OpenAISimulator(OpenAIConfig(model="m", base_url="https://api.example.com/v1", **options))

    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    assert sim().uses_builtin()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.com:3128")
    assert not sim().uses_builtin() and sim(transport="builtin").uses_builtin()
    monkeypatch.setenv("NO_PROXY", "api.example.com")
    assert sim().uses_builtin() and not sim(transport="openai").uses_builtin()


def test_both_transports_give_the_same_conversations(tmp_path: Path, api_key: str) -> None:
    from cruijff_kit._engine.spec import load_spec
    from cruijff_kit._simulate.command import simulate

    def rows(folder: Path, transport: str) -> list[dict[str, Any]]:
        spec = write_sim_spec(folder, server.url, stops=[1, 2, 9, 2], simulate={
            "user": {"transport": transport}, "assistant": {"transport": transport}})
        summary = simulate(load_spec(spec), progress=False)
        assert (summary.finished, summary.failed) == (4, 0)
        out = read_conversations(folder / "sim" / "conversations.jsonl")
        return sorted(({k: v for k, v in r.items() if k not in ("seconds", "fingerprint")} for r in out),
                      key=lambda r: r["conv_id"])

    with FakeOpenAI(api_key=KEY) as server:
        builtin = rows(tmp_path / "builtin", "builtin")
        requests = server.stats.requests
        assert rows(tmp_path / "openai", "openai") == builtin
        assert server.stats.requests == 2 * requests
        assert server.stats.auth[f"Bearer {KEY}"] == server.stats.requests  # the key, sent by both
    assert KEY_VAR not in json.dumps(builtin)
