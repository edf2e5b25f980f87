"""Every network call has a total deadline (docs/reliability.md): a real misbehaving HTTP server on
127.0.0.1 trickles bytes, never answers, answers 200 with truncated JSON, or stalls mid-body, and the
real components (``ck simulate`` with the openai simulator, the RunPod API client, ``ck models
download``) give up within ``timeout x attempts`` plus backoff with a clear message, losing nothing.

Every subprocess runs under a generous hang guard (its ``timeout``): on the baseline these calls hung
for as long as the server kept trickling, so the guard fails them instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

#: Longest a command under test may take before it counts as hung (it should take a few seconds).
HANG_GUARD = 60.0
TRICKLE_EVERY = 0.2  # seconds between bytes: far below every per-read timeout the tests set
STEADY_CHUNK, STEADY_EVERY = 2048, 0.25  # a slow but steady body: 8 KiB/s


class BadServer:
    """A raw HTTP/1.1 server on 127.0.0.1 (port 0, a thread per connection) misbehaving on purpose.

    ``choose(method, path, body) -> (mode, payload[, headers])`` picks, per request, what happens:

    * ``ok``: 200 with ``payload`` (bytes) and a correct Content-Length (206 and the rest of it when the
      request asks for a ``Range: bytes=N-``);
    * ``trickle``: the headers (Content-Length of a gigabyte), then one body byte every TRICKLE_EVERY s, forever;
    * ``silent``: the request is read, nothing is ever sent, the connection is never closed;
    * ``truncated``: 200 with ``payload`` cut in half as the whole body (a correct Content-Length), then close;
    * ``stall``: the headers (the full Content-Length), half of ``payload``, then nothing, never closed;
    * ``steady``: 200 with ``payload`` sent slowly but steadily: STEADY_CHUNK bytes every STEADY_EVERY s.
    """

    def __init__(self, choose: Callable[[str, str, bytes], tuple[str, bytes]]) -> None:
        self.choose = choose
        self.requests: list[tuple[str, str, str]] = []  # (method, path, mode)
        self.ranges: list[int] = []  # the start of each Range request, in order
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def count(self, mode: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if mode is None or r[2] == mode)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                while not self.stop.is_set():
                    request = self._read_request(conn)
                    if request is None:
                        return
                    method, path, body, start = request
                    mode, payload, *extra = self.choose(method, path, body)
                    with self._lock:
                        self.requests.append((method, path, mode))
                        if start:
                            self.ranges.append(start)
                    if mode == "ok" and start and method == "GET":
                        rest = payload[start:]
                        conn.sendall((f"HTTP/1.1 206 Partial Content\r\nContent-Length: {len(rest)}\r\nContent-Range: "
                                      f"bytes {start}-{len(payload) - 1}/{len(payload)}\r\n\r\n").encode() + rest)
                    elif not self._answer(conn, method, mode, payload, extra[0] if extra else {}):
                        return
            except OSError:
                return

    @staticmethod
    def _read_request(conn: socket.socket) -> tuple[str, str, bytes, int] | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path = lines[0].split(" ")[:2]
        length = start = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
            if name.strip().lower() == "range" and value.strip().startswith("bytes="):
                start = int(value.strip()[6:].split("-")[0])
            if name.strip().lower() == "expect" and value.strip().lower() == "100-continue":
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # as S3 does: botocore sends its body after it
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            body += chunk
        return method, path, body, start

    def _answer(self, conn: socket.socket, method: str, mode: str, payload: bytes, headers: dict[str, str]) -> bool:
        """Send the answer; True when the connection may serve another request."""
        def head(length: int) -> bytes:
            lines = ["HTTP/1.1 200 OK", "Content-Type: application/json", f"Content-Length: {length}",
                     *(f"{k}: {v}" for k, v in headers.items())]
            return ("\r\n".join(lines) + "\r\n\r\n").encode()

        if mode == "notfound":
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}")
            return True
        if mode == "ok":
            conn.sendall(head(len(payload)) + (b"" if method == "HEAD" else payload))
            return True
        if mode == "truncated":
            cut = payload[: len(payload) // 2]
            conn.sendall(head(len(cut)) + cut)
            return False
        if mode == "steady":
            conn.sendall(head(len(payload)))
            for i in range(0, len(payload), STEADY_CHUNK):
                if self.stop.wait(STEADY_EVERY):
                    return False
                conn.sendall(payload[i:i + STEADY_CHUNK])
            return True
        if mode == "trickle":
            conn.sendall(head(1 << 30))
            while not self.stop.wait(TRICKLE_EVERY):
                conn.sendall(b" ")
            return False
        if mode == "stall":
            conn.sendall(head(len(payload)) + payload[: len(payload) // 2])
        self.stop.wait()  # silent and stall: hold the connection open, say nothing more
        return False


@pytest.fixture
def bad_server() -> Iterator[Callable[[Callable[[str, str, bytes], tuple[str, bytes]]], BadServer]]:
    """Factory: ``bad_server(choose)`` starts a :class:`BadServer`; all are closed after the test."""
    servers: list[BadServer] = []

    def start(choose: Callable[[str, str, bytes], tuple[str, bytes]]) -> BadServer:
        servers.append(BadServer(choose))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def run_ck(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real `ck` in a subprocess, under the hang guard (TimeoutExpired fails the test)."""
    return subprocess.run([sys.executable, "-m", "cruijff_kit", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=HANG_GUARD)


# --------------------------------------------------------------------------- ck simulate (openai simulator)
def _chat_payload(body: bytes) -> bytes:
    """What the fake OpenAI server would answer to this chat-completions request."""
    from fake_openai import reply_for

    req = json.loads(body)
    text = reply_for(req, first=False)
    return json.dumps({"id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": req.get("model"),
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()


def _sim_spec(tmp_path: Path, url: str, extra: dict[int, str] | None = None) -> Path:
    from simulate_fixtures import write_sim_spec

    # each try of a call has 1 s in total, and 2 tries: a hung call is given up on after about 2 s
    return write_sim_spec(tmp_path, url + "/v1", stops=[1, 1, 1], extra=extra,
                          simulate={"user": {"timeout": 1.0}, "assistant": {"timeout": 1.0},
                                    "retry": {"attempts": 2, "initial_delay": 0.01, "max_delay": 0.05}})


def test_simulate_gives_up_on_a_trickling_endpoint_and_keeps_the_other_conversations(
        tmp_path: Path, bad_server: Callable[..., BadServer], monkeypatch: pytest.MonkeyPatch) -> None:
    from simulate_fixtures import KEY_VAR, read_conversations

    monkeypatch.setenv(KEY_VAR, "sk-test")
    state = {"mode": "trickle"}
    # task 1's requests trickle one byte every 0.2 s forever (under the 1 s per-read timeout); others answer
    server = bad_server(lambda m, p, body: (state["mode"] if b"[slow]" in body else "ok", _chat_payload(body)))
    spec = _sim_spec(tmp_path, server.url, extra={1: "[slow]"})
    res = run_ck("simulate", str(spec), "--no-progress")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert "1 failed" in res.stdout and "again to retry the failed conversations" in res.stdout
    out = tmp_path / "sim" / "conversations.jsonl"
    first = read_conversations(out)
    assert sorted(r["conv_id"] for r in first) == ["task-000", "task-002"]  # the others were written
    assert server.count("trickle") == 2  # timeout x attempts: two tries, each cut at its deadline
    run = json.loads((tmp_path / "sim" / "conversations.run.json").read_text())
    assert run["calls"]["user"]["errors"] == {"APITimeoutError": 2}  # counted with the client's own timeouts
    # nothing lost: once the endpoint behaves, the failed conversation is done and the others kept as they were
    state["mode"] = "ok"
    again = run_ck("simulate", str(spec), "--no-progress")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 from earlier runs" in again.stdout
    rows = read_conversations(out)
    assert rows[:2] == first and [r["conv_id"] for r in rows[2:]] == ["task-001"]


def test_simulate_retries_a_200_with_truncated_json(tmp_path: Path, bad_server: Callable[..., BadServer],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from simulate_fixtures import KEY_VAR, read_conversations

    monkeypatch.setenv(KEY_VAR, "sk-test")
    seen: set[bytes] = set()

    def choose(method: str, path: str, body: bytes) -> tuple[str, bytes]:
        first = body not in seen  # each distinct request is cut in half the first time it comes
        seen.add(body)
        return ("truncated" if first else "ok"), _chat_payload(body)

    server = bad_server(choose)
    res = run_ck("simulate", str(_sim_spec(tmp_path, server.url)), "--no-progress")
    assert res.returncode == 0, res.stdout + res.stderr
    rows = read_conversations(tmp_path / "sim" / "conversations.jsonl")
    assert sorted(r["conv_id"] for r in rows) == ["task-000", "task-001", "task-002"]
    assert all(r["messages"][-1]["content"] for r in rows)
    run = json.loads((tmp_path / "sim" / "conversations.run.json").read_text())
    # 3 conversations x (user, assistant, user): 9 distinct requests, each truncated once and retried
    assert server.count("truncated") == 9 and server.count("ok") == 9
    assert run["calls"]["user"]["errors"] == {"BadResponse": 6}  # two user turns per conversation
    assert run["calls"]["assistant"]["errors"] == {"BadResponse": 3}


# --------------------------------------------------------------------------- the RunPod API client
RUNPOD_SCRIPT = """
import json, sys, time
from cruijff_kit_runpod.api import PodRequest, RunPodApi
RunPodApi.timeout, RunPodApi.attempts, RunPodApi.backoff = 1.0, 2, 0.01  # 1 s per try, 2 tries
api, started = RunPodApi(), time.monotonic()
try:
    if sys.argv[1] == "create":
        value = api.create_pod(PodRequest(name="ck-run-abc", image="img", gpu_type="g", gpu_count=1,
            cloud_type="SECURE", container_disk_gb=1, volume_gb=1, volume_mount_path="/w", docker_args="x", env={}))
    else:
        value = api.list_pods()
    print(json.dumps({"value": value}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""

POD = {"id": "pod-1", "name": "ck-run-abc", "desiredStatus": "RUNNING"}


def _runpod(server: BadServer, what: str) -> dict[str, Any]:
    """A RunPod API call in a fresh process against ``server``, under the hang guard."""
    env = {**os.environ, "RUNPOD_API_BASE_URL": server.url, "RUNPOD_API_KEY": "test-key"}
    res = subprocess.run([sys.executable, "-c", RUNPOD_SCRIPT, what], capture_output=True, text=True, env=env,
                         timeout=HANG_GUARD)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


def _graphql(data: dict[str, Any]) -> bytes:
    return json.dumps({"data": data}).encode()


def test_runpod_client_gives_up_on_a_trickling_api_after_timeout_x_attempts(
        bad_server: Callable[..., BadServer]) -> None:
    server = bad_server(lambda m, p, body: ("trickle", b""))
    out = _runpod(server, "list")
    assert out["error"] == "AmbiguousError", out
    assert "did not send its whole answer within 1 s" in out["message"]
    assert "Gave up after 2 attempt(s)" in out["message"]
    assert server.count("trickle") == 2


def test_runpod_create_cut_at_its_deadline_finds_the_pod_instead_of_starting_another(
        bad_server: Callable[..., BadServer]) -> None:
    def choose(method: str, path: str, body: bytes) -> tuple[str, bytes]:
        if b"podFindAndDeployOnDemand" in body:  # the pod is created, but the answer trickles forever
            return "trickle", b""
        return "ok", _graphql({"myself": {"pods": [POD]}})

    server = bad_server(choose)
    out = _runpod(server, "create")
    assert out == {"value": POD}
    assert server.count("trickle") == 1  # one create request: the retry looked the pod up by its name


def test_runpod_client_retries_a_200_with_truncated_json(bad_server: Callable[..., BadServer]) -> None:
    answers = iter(["truncated"])
    server = bad_server(lambda m, p, body: (next(answers, "ok"), _graphql({"myself": {"pods": [POD]}})))
    out = _runpod(server, "list")
    assert out == {"value": [POD]}
    assert (server.count("truncated"), server.count("ok")) == (1, 1)


# --------------------------------------------------------------------------- ck models download (the hub)
HUB_REPO = "acme/slow-model"
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"
HUB_FILES = {"config.json": b'{"a": 1}\n', "model.safetensors": bytes(range(256)) * 64}  # 16 KiB of weights


def _hub_choose(state: dict[str, str]) -> Callable[[str, str, bytes], tuple[str, bytes, dict[str, str]]]:
    """The hub protocol the client uses (as tests/hub_fixtures.py), with ``state`` saying how the file
    list (``info``) and the weights (``weights``) are served."""
    import hashlib

    def meta(name: str, data: bytes) -> dict[str, Any]:
        row: dict[str, Any] = {"rfilename": name, "size": len(data),
                               "blobId": hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()}
        if name.endswith(".safetensors"):
            row["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 130}
        return row

    def choose(method: str, path: str, body: bytes) -> tuple[str, bytes, dict[str, str]]:
        if path.startswith(f"/api/models/{HUB_REPO}/tree/"):
            tree = [{"type": "file", "oid": meta(n, d)["blobId"], "size": len(d), "path": n,
                     **({"lfs": {"oid": meta(n, d)["lfs"]["sha256"], "size": len(d), "pointerSize": 130}}
                        if "lfs" in meta(n, d) else {})} for n, d in HUB_FILES.items()]
            return "ok", json.dumps(tree).encode(), {}
        if path.startswith(f"/api/models/{HUB_REPO}"):
            info = {"id": HUB_REPO, "modelId": HUB_REPO, "sha": HUB_COMMIT, "private": False,
                    "siblings": [meta(n, d) for n, d in HUB_FILES.items()]}
            return state["info"], json.dumps(info).encode(), {}
        name = path.split("?")[0].rsplit("/", 1)[-1]
        if name not in HUB_FILES or f"/{HUB_REPO}/resolve/" not in path:
            return "notfound", b"{}", {}
        m = meta(name, HUB_FILES[name])
        headers = {"X-Repo-Commit": HUB_COMMIT, "ETag": f'"{m["lfs"]["sha256"] if "lfs" in m else m["blobId"]}"'}
        mode = state["weights"] if method == "GET" and name.endswith(".safetensors") else "ok"
        return mode, HUB_FILES[name], headers

    return choose


def _models_download(server: BadServer, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"HF_ENDPOINT": server.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "",
           "HF_DATASETS_OFFLINE": ""}
    return run_ck("models", "download", HUB_REPO, "--cache-dir", str(cache), *args, env=env)


def test_models_download_gives_up_on_a_trickling_file_list(tmp_path: Path,
                                                           bad_server: Callable[..., BadServer]) -> None:
    server = bad_server(_hub_choose({"info": "trickle", "weights": "ok"}))
    res = _models_download(server, tmp_path / "cache", "--timeout", "1")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert f"Cannot download {HUB_REPO}" in res.stderr and "within its deadline of 1 s" in res.stderr
    assert "gave up after 3 tries" in res.stderr and "--timeout" in res.stderr
    assert server.count("trickle") == 3


@pytest.mark.parametrize("mode", ["trickle", "stall"])
def test_models_download_stalled_weights_are_given_up_kept_and_resumed(
        tmp_path: Path, bad_server: Callable[..., BadServer], mode: str) -> None:
    from cruijff_kit._models import hub

    state = {"info": "ok", "weights": mode}
    server = bad_server(_hub_choose(state))
    cache = tmp_path / "cache"
    res = _models_download(server, cache, "--stall-timeout", "0.5")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert "stalled (under 1024 bytes in 0.5 s)" in res.stderr and "--stall-timeout" in res.stderr
    assert server.count(mode) == 6  # the first try and the hub client's 5 resumes, each cut at its stall
    # a partial download is not mistaken for a complete one: no ref, no record, not found by hub id, and
    # no blob holds the weights (the config, which arrived whole, is kept)
    assert hub.find_cached(HUB_REPO, cache) is None
    assert not (cache / hub.RECORD).exists()
    blobs = hub.repo_folder(cache, HUB_REPO) / "blobs"
    assert sorted(p.read_bytes() for p in blobs.iterdir()) == [HUB_FILES["config.json"]]
    # once the hub behaves, the same command finishes and verifies the model
    state["weights"] = "ok"
    again = _models_download(server, cache, "--stall-timeout", "0.5")
    assert again.returncode == 0, again.stdout + again.stderr
    snap = hub.find_cached(HUB_REPO, cache)
    assert snap is not None and snap.name == HUB_COMMIT
    assert {n: (snap / n).read_bytes() for n in HUB_FILES} == HUB_FILES
    assert not [p for p in blobs.iterdir() if p.name.endswith(".incomplete")]
    assert json.loads((cache / hub.RECORD).read_text())[HUB_REPO]["main"]["commit"] == HUB_COMMIT


# --------------------------------------------------------------------------- the RunPod pod agent's transfers
AGENT_SCRIPT = """
import json, sys
from cruijff_kit_runpod import agent
what, url, dest = sys.argv[1:4]
try:
    if what == "download":
        agent.download(url, dest)
        value = len(open(dest, "rb").read())
    else:
        value = agent.http("PUT", url, data=b'{"state": "running"}').decode()
    print(json.dumps({"value": value}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


def _agent(server: BadServer, what: str, dest: Path, stall: float = 0.5) -> dict[str, Any]:
    """One transfer of the pod agent in a fresh process, with small windows, under the hang guard."""
    env = {**os.environ, "CK_STALL_SECONDS": str(stall), "CK_CALL_SECONDS": "1", "CK_RETRY_SECONDS": "0.01"}
    res = subprocess.run([sys.executable, "-c", AGENT_SCRIPT, what, server.url + "/bundle?sig=x", str(dest)],
                         capture_output=True, text=True, env=env, timeout=HANG_GUARD)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


BUNDLE = bytes(range(256)) * 64  # 16 KiB


def test_agent_download_gives_up_on_a_trickle(tmp_path: Path, bad_server: Callable[..., BadServer]) -> None:
    server = bad_server(lambda m, p, body: ("trickle", BUNDLE))
    out = _agent(server, "download", tmp_path / "bundle.tar.gz")
    assert out["error"] == "TimeoutError" and "stalled" in out["message"], out
    assert server.count("trickle") == 5  # five tries, each cut when its stall window ran out


def test_agent_download_stalled_mid_body_resumes_where_it_stopped(
        tmp_path: Path, bad_server: Callable[..., BadServer]) -> None:
    answers = iter(["stall"])
    server = bad_server(lambda m, p, body: (next(answers, "ok"), BUNDLE))
    dest = tmp_path / "bundle.tar.gz"
    out = _agent(server, "download", dest)
    assert out == {"value": len(BUNDLE)}
    assert dest.read_bytes() == BUNDLE  # half from the stalled try, the rest from the resumed one
    assert [r[2] for r in server.requests] == ["stall", "ok"]
    assert server.ranges == [len(BUNDLE) // 2]


def test_agent_small_request_has_a_total_deadline(tmp_path: Path, bad_server: Callable[..., BadServer]) -> None:
    server = bad_server(lambda m, p, body: ("trickle", b"{}"))
    out = _agent(server, "put", tmp_path / "unused", stall=30)  # the 1 s total deadline cuts it first
    assert out["error"] == "TimeoutError" and "did not finish within 1 s" in out["message"], out
    assert server.count("trickle") == 5


def test_models_download_slow_but_steady_is_never_cut(tmp_path: Path, bad_server: Callable[..., BadServer]) -> None:
    from cruijff_kit._models import hub

    server = bad_server(_hub_choose({"info": "ok", "weights": "steady"}))
    cache = tmp_path / "cache"
    # 16 KiB at 2 KiB every 0.25 s takes 2 s: twice the stall window of 1 s, each window with over 1 KiB
    res = _models_download(server, cache, "--stall-timeout", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert server.count("steady") == 1  # one request, never cut or resumed
    snap = hub.find_cached(HUB_REPO, cache)
    assert snap is not None and (snap / "model.safetensors").read_bytes() == HUB_FILES["model.safetensors"]


# --------------------------------------------------------------------------- the RunPod object store (boto3)
STORE_SCRIPT = """
import json, sys
from pathlib import Path
from cruijff_kit_runpod.store import ObjectStore
# small calls: 1 s per try in total; large transfers: 1 KiB per 1 s stall window; 2 tries each
ObjectStore.call_seconds, ObjectStore.stall_seconds, ObjectStore.attempts, ObjectStore.backoff = 1.0, 1.0, 2, 0.01
ObjectStore.stall_bytes = 1024
what, endpoint, dest = sys.argv[1:4]
if what == "ck":  # the real `ck` command line, with the windows above
    from cruijff_kit._cli import main
    main(sys.argv[4:])
store = ObjectStore({"bucket": "ck-bucket", "prefix": "ck", "endpoint_url": endpoint, "region": "us-east-1",
                     "addressing_style": "path"})
try:
    if what == "get":
        value = store.get_json("ck/run/status.json")
    elif what == "download":
        value = store.download("ck/run/results.tar.gz", Path(dest))
    else:
        value = store.delete("ck/run/bundle.tar.gz")
    print(json.dumps({"value": value}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


def _store_env() -> dict[str, str]:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIDFAKE", "AWS_SECRET_ACCESS_KEY": "fake-secret-key",
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
           "AWS_EC2_METADATA_DISABLED": "true"}
    env.pop("AWS_PROFILE", None)
    return env


def _store(server: BadServer, what: str, dest: Path) -> dict[str, Any]:
    """One call of the RunPod plugin's bucket client in a fresh process against ``server``, under the hang guard."""
    res = subprocess.run([sys.executable, "-c", STORE_SCRIPT, what, server.url, str(dest)], capture_output=True,
                         text=True, env=_store_env(), timeout=HANG_GUARD)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


@pytest.mark.parametrize("what", ["get", "delete"])
def test_runpod_store_small_call_gives_up_on_a_trickling_bucket(
        tmp_path: Path, bad_server: Callable[..., BadServer], what: str) -> None:
    server = bad_server(lambda m, p, body: ("trickle", b""))
    out = _store(server, what, tmp_path / "unused")
    assert out.get("error") == "StoreError", out
    assert f"the bucket endpoint {server.url} did not answer in time" in out["message"]
    assert "did not finish within its deadline of 1 s" in out["message"]
    assert "gave up after 2 tries" in out["message"] and "runpod.store.endpoint_url" in out["message"]
    # never a third try; how many of the two reached the server before their 1 s deadline cut them
    # depends on how busy the machine is (a loaded one may spend the second starting boto3's connection)
    assert server.count("trickle") <= 2


def test_runpod_store_read_retries_a_truncated_body(tmp_path: Path, bad_server: Callable[..., BadServer]) -> None:
    answers = iter(["truncated"])
    body = json.dumps({"stages": {"train": {"state": "running"}}}).encode()
    server = bad_server(lambda m, p, b: (next(answers, "ok"), body))
    out = _store(server, "get", tmp_path / "unused")
    assert out == {"value": {"stages": {"train": {"state": "running"}}}}
    assert (server.count("truncated"), server.count("ok")) == (1, 1)


@pytest.mark.parametrize("mode", ["trickle", "stall"])
def test_runpod_results_download_stalled_is_given_up_and_leaves_no_file(
        tmp_path: Path, bad_server: Callable[..., BadServer], mode: str) -> None:
    state = {"mode": mode}
    server = bad_server(lambda m, p, body: ("ok" if m == "HEAD" else state["mode"], BUNDLE))
    dest = tmp_path / "results.tar.gz"
    out = _store(server, "download", dest)
    assert out.get("error") == "StoreError", out
    assert "stalled: fewer than 1024 bytes" in out["message"] and "gave up after 2 tries" in out["message"]
    assert server.url in out["message"]
    assert list(tmp_path.iterdir()) == []  # nothing half-written, not even a partial file beside it
    assert server.count(mode) == 2
    # slow but steady is never cut: 16 KiB at 2 KiB every 0.25 s takes 2 s, twice the 1 s stall window,
    # each window with over 1 KiB
    state["mode"] = "steady"
    out = _store(server, "download", dest)
    assert out == {"value": True}
    assert dest.read_bytes() == BUNDLE and server.count("steady") == 1


def test_ck_run_gives_up_on_a_bucket_that_trickles_its_answer_to_the_bundle_upload(
        tmp_path: Path, bad_server: Callable[..., BadServer], with_toy: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from runpod_fixtures import run_dirs, running_fake_runpod, stages, write_profile, write_toy_spec

    fake = running_fake_runpod(with_toy, tmp_path, monkeypatch)
    api = next(fake)  # the RunPod API on 127.0.0.1 (its environment set for the subprocess)
    try:
        # the bucket takes the whole bundle, then answers one byte every 0.2 s and never closes
        server = bad_server(lambda m, p, body: ("trickle" if m == "PUT" else "notfound", b""))
        spec = write_toy_spec(tmp_path)
        write_profile(tmp_path, server)  # type: ignore[arg-type] - only its url is read
        res = subprocess.run([sys.executable, "-c", STORE_SCRIPT, "ck", server.url, "-", "run", str(spec)],
                             capture_output=True, text=True, env=_store_env(), cwd=tmp_path, timeout=HANG_GUARD)
        out = res.stdout + res.stderr
        assert res.returncode != 0, out
        assert "Traceback" not in out
        assert f"the bucket endpoint {server.url} did not answer in time" in out, out
        assert "stalled: fewer than 1024 bytes" in out and "gave up after 2 tries" in out
        assert server.count("trickle") == 2  # two tries of the upload, each cut at its 1 s stall window
        # nothing recorded as started: no pod, no stage submitted
        assert api.calls("podFindAndDeployOnDemand") == []
        (run,) = run_dirs(tmp_path)
        assert {e["state"] for e in stages(run).values()} <= {"pending"}, stages(run)
    finally:
        next(fake, None)


# --------------------------------------------------------------------------- half-downloaded hub snapshots
HUB_SPEC = """
experiment: toy
model: {path: %s, revision: %s}
dataset: {plugin: toy-data}
train: {plugin: toy, epochs: 1, steps_per_epoch: 2}
eval:
  - {plugin: toy-eval, task: exact, checkpoints: last, include_base: false}
"""


def test_spec_naming_a_commit_never_resolves_to_a_stalled_download(
        tmp_path: Path, bad_server: Callable[..., BadServer], with_toy: Path) -> None:
    from conftest import write_spec

    from cruijff_kit._models import hub

    state = {"info": "ok", "weights": "stall"}
    server = bad_server(_hub_choose(state))
    cache = tmp_path / "cache"
    assert _models_download(server, cache, "--stall-timeout", "0.5").returncode == 2
    snap = hub.repo_folder(cache, HUB_REPO) / "snapshots" / HUB_COMMIT
    assert (snap / "config.json").is_file() and not (snap / "model.safetensors").exists()  # half a model
    (tmp_path / "ck.profile.yaml").write_text(f"models_cache: {cache}\n")
    spec = write_spec(tmp_path, HUB_SPEC % (HUB_REPO, HUB_COMMIT))
    res = run_ck("validate", str(spec), cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert f"{snap} is not a complete download of {HUB_REPO}" in res.stderr
    assert f"`ck models download {HUB_REPO} --revision {HUB_COMMIT}` finishes it" in res.stderr
    # the command it names finishes the download; then the spec resolves to the verified snapshot
    state["weights"] = "ok"
    assert _models_download(server, cache, "--revision", HUB_COMMIT).returncode == 0
    assert hub.find_cached(HUB_REPO, cache, HUB_COMMIT) == snap
    assert (snap / "model.safetensors").read_bytes() == HUB_FILES["model.safetensors"]


@pytest.mark.parametrize("damage", ["incomplete-blob", "missing-blob"])
def test_find_cached_refuses_a_snapshot_with_a_partial_or_missing_blob(tmp_path: Path, damage: str) -> None:
    from cruijff_kit import CkError
    from cruijff_kit._models import hub

    cache = tmp_path / "cache"
    repo = hub.repo_folder(cache, HUB_REPO)
    snap = repo / "snapshots" / HUB_COMMIT
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HUB_COMMIT)  # the ref the hub library writes before its files
    (repo / "blobs" / "aaaa").write_bytes(HUB_FILES["config.json"])
    (snap / "config.json").symlink_to("../../blobs/aaaa")
    assert hub.find_cached(HUB_REPO, cache) == snap  # a whole (if small) snapshot: found by ref and by commit
    assert hub.find_cached(HUB_REPO, cache, HUB_COMMIT) == snap
    if damage == "incomplete-blob":  # a download of the weights stopped midway (killed)
        (repo / "blobs" / "bbbb.incomplete").write_bytes(HUB_FILES["model.safetensors"][:100])
        why = "1 file(s) in"
    else:  # the weights' blob was deleted after the snapshot was recorded as verified
        hub.record(cache, HUB_REPO, "main", HUB_COMMIT)
        (snap / "model.safetensors").symlink_to("../../blobs/bbbb")
        why = "its file model.safetensors links to a blob that is not there"
    for rev in (None, HUB_COMMIT):
        with pytest.raises(CkError) as err:
            hub.find_cached(HUB_REPO, cache, rev)
        assert why in str(err.value) and f"ck models download {HUB_REPO}" in str(err.value)


# --------------------------------------------------------------------------- the trl plugin's push_to_hub
PUSH_SCRIPT = """
import json, sys
from pathlib import Path
from cruijff_kit_trl import sft
sft.HUB_CALL_SECONDS, sft.HUB_ATTEMPTS, sft.HUB_BACKOFF = 1.0, 2, 0.01  # 1 s per try, 2 tries
folder = Path(sys.argv[1])
try:
    sft.push_folder(folder, "acme/adapter", private=True, message="run epoch 0", kept=folder)
    print(json.dumps({"value": None}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


def test_push_to_hub_gives_up_on_a_trickling_hub(tmp_path: Path, bad_server: Callable[..., BadServer]) -> None:
    server = bad_server(lambda m, p, body: ("trickle", b"{}"))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    env = {**os.environ, "HF_ENDPOINT": server.url, "HF_TOKEN": "hf_test", "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "", "HF_DATASETS_OFFLINE": ""}
    res = subprocess.run([sys.executable, "-c", PUSH_SCRIPT, str(adapter)], capture_output=True, text=True,
                         env=env, timeout=HANG_GUARD)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.splitlines()[-1])
    assert out.get("error") == "StageError", out
    assert "creating the hub repo acme/adapter did not finish within its deadline of 1 s" in out["message"]
    assert f"at {server.url}; gave up after 2 tries" in out["message"]
    assert f"adapter is kept in {adapter}" in out["message"]
    assert server.count("trickle") == 2  # two tries of creating the repo, each cut at its deadline; no upload
    assert (adapter / "adapter_config.json").read_text() == "{}"
