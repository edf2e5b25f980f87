"""A fake RunPod on 127.0.0.1, for the runpod scheduler's tests (standard library only).

* :class:`FakeRunPod`: an HTTP server speaking the part of RunPod's GraphQL API the plugin calls, as
  the ``runpod`` SDK sends it (``POST /graphql``, ``Authorization: Bearer <key>``, values inlined in the
  query text): ``gpuTypes``, ``myself { pods }``, ``pod``, ``podFindAndDeployOnDemand`` and
  ``podTerminate``. It parses the query text (a small GraphQL parser), answers only the selected
  fields, and logs every request with its parsed arguments. RunPod's no-capacity error, HTTP errors
  (any status and body, before or after the request is carried out) and per-pod API keys (the
  ``RUNPOD_API_KEY`` RunPod puts into each pod, valid for that pod only) are modelled.
* Fake containers: when a pod is created, its start command (``dockerArgs``) runs here in a
  subprocess with the pod's environment plus what RunPod adds (``RUNPOD_POD_ID``, the pod's own
  ``RUNPOD_API_KEY``); each container gets its own folder as ``$CK_POD_ROOT`` (a real container has
  its own filesystem). The pod is RUNNING while the process lives and EXITED when it ends;
  ``podTerminate`` kills it.
* :class:`FakeObjectStore`: an S3-compatible bucket server (path-style ``PUT/GET/HEAD /bucket/key``)
  that checks SigV4 pre-signed URLs (signature and expiry, against a clock a test may move) and the
  credential of signed requests; ``public`` makes it serve objects to anyone, as a public bucket does.

What a real RunPod does differently is not modelled: image pulls, restarts of exited containers,
billing. Error texts other than the no-capacity one are guesses.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlparse

NO_INSTANCES = ("There are no longer any instances available with the requested specifications. "
                "Please refresh and try again.")
GPUS = [
    {"id": "NVIDIA A100 80GB PCIe", "displayName": "A100 PCIe", "memoryInGb": 80, "securePrice": 1.64,
     "communityPrice": 1.19},
    {"id": "NVIDIA GeForce RTX 4090", "displayName": "RTX 4090", "memoryInGb": 24, "securePrice": 0.69,
     "communityPrice": 0.34},
]


# --------------------------------------------------------------------------- GraphQL subset
class GraphQLSyntaxError(Exception):
    """The query text is not valid GraphQL (what a real server answers with a parse error)."""


_TOKEN = re.compile(r"""
    (?P<skip>[\s,]+|\#[^\n]*)
  | (?P<punct>[{}()\[\]:])
  | (?P<name>[_A-Za-z][_0-9A-Za-z]*)
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<string>"(?:[^"\\\n\r]|\\["\\/bfnrt]|\\u[0-9A-Fa-f]{4})*")
""", re.VERBOSE)


def _tokens(text: str) -> list[tuple[str, Any]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise GraphQLSyntaxError(f"Syntax Error: Unexpected character {text[pos:pos + 10]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind == "skip":
            continue
        value: Any = m.group(kind)
        if kind == "string":
            value = json.loads(value)  # GraphQL string escapes are JSON's
        elif kind == "number":
            value = float(value) if any(c in value for c in ".eE") else int(value)
        out.append((kind, value))
    out.append(("eof", None))
    return out


class Enum(str):
    """An unquoted enum value (``cloudType: SECURE``)."""


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks, self.i = _tokens(text), 0

    def peek(self) -> tuple[str, Any]:
        return self.toks[self.i]

    def take(self, kind: str | None = None, value: Any = None) -> Any:
        tok = self.toks[self.i]
        if (kind and tok[0] != kind) or (value is not None and tok[1] != value):
            raise GraphQLSyntaxError(f"Syntax Error: Expected {value or kind}, found {tok[1]!r}")
        self.i += 1
        return tok[1]

    def document(self) -> tuple[str, list[dict[str, Any]]]:
        op = "query"
        if self.peek()[0] == "name" and self.peek()[1] in ("query", "mutation"):
            op = self.take()
            if self.peek()[0] == "name":
                self.take()
        fields = self.selection()
        self.take("eof")
        return op, fields

    def selection(self) -> list[dict[str, Any]]:
        self.take("punct", "{")
        fields = []
        while self.peek() != ("punct", "}"):
            name = self.take("name")
            args: dict[str, Any] = {}
            if self.peek() == ("punct", "("):
                self.take()
                while self.peek() != ("punct", ")"):
                    key = self.take("name")
                    self.take("punct", ":")
                    args[key] = self.value()
                self.take()
            sel = self.selection() if self.peek() == ("punct", "{") else None
            fields.append({"name": name, "args": args, "sel": sel})
        self.take("punct", "}")
        return fields

    def value(self) -> Any:
        kind, val = self.peek()
        if kind in ("string", "number"):
            self.i += 1
            return val
        if kind == "name":
            self.i += 1
            return {"true": True, "false": False, "null": None}.get(val, Enum(val))
        if (kind, val) == ("punct", "["):
            self.take()
            items = []
            while self.peek() != ("punct", "]"):
                items.append(self.value())
            self.take()
            return items
        if (kind, val) == ("punct", "{"):
            self.take()
            obj = {}
            while self.peek() != ("punct", "}"):
                key = self.take("name")
                self.take("punct", ":")
                obj[key] = self.value()
            self.take()
            return obj
        raise GraphQLSyntaxError(f"Syntax Error: Unexpected {val!r}")


def parse_graphql(text: str) -> tuple[str, list[dict[str, Any]]]:
    """(operation type, top-level fields with their arguments and selections)."""
    return _Parser(text).document()


class FieldError(Exception):
    """A GraphQL error for one field (goes into ``errors``)."""


def _select(obj: Any, sel: list[dict[str, Any]] | None, type_name: str) -> Any:
    if sel is None or obj is None:
        return obj
    if isinstance(obj, list):
        return [_select(o, sel, type_name) for o in obj]
    out = {}
    for f in sel:
        if f["name"] not in obj:
            raise FieldError(f'Cannot query field "{f["name"]}" on type "{type_name}".')
        out[f["name"]] = _select(obj[f["name"]], f["sel"], f["name"])
    return out


# --------------------------------------------------------------------------- the fake API
class FakeRunPod:
    """The API server and its pods. ``launch_containers`` runs each pod's start command here."""

    def __init__(self, api_key: str = "test-key", container_root: Path | None = None,
                 base_env: dict[str, str] | None = None) -> None:
        self.api_key = api_key
        self.container_root = container_root
        self.base_env = dict(base_env or os.environ)
        self.lock = threading.RLock()
        self.pods: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.injections: list[dict[str, Any]] = []
        self.stock = {g["id"]: 8 for g in GPUS}
        #: At most this many pods at once (None: no limit); beyond it deploys fail like RunPod's no capacity.
        self.capacity: int | None = None
        self._ids = itertools.count(1)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _api_handler(self))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> FakeRunPod:
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        with self.lock:
            for pod in self.pods.values():
                self._kill(pod)
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- test helpers
    def inject(self, op: str, status: int, body: Any = "", times: int = 1, after: bool = False,
               headers: dict[str, str] | None = None) -> None:
        """The next ``times`` calls of ``op`` ('*' = any) answer ``status``/``body``; with ``after`` the
        request is carried out first (a lost answer)."""
        with self.lock:
            self.injections.append({"op": op, "status": status, "body": body, "times": times, "after": after,
                                    "headers": headers or {}})

    def ops(self) -> list[str]:
        return [r["op"] for r in self.requests]

    def calls(self, op: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["op"] == op]

    def running(self) -> list[str]:
        """Ids of pods that exist and are not terminated."""
        with self.lock:
            return [p["id"] for p in self.pods.values() if not p["terminated"]]

    def wait_exited(self, pod_id: str, timeout: float = 60) -> None:
        proc = self.pods[pod_id].get("proc")
        if proc is not None:
            proc.wait(timeout=timeout)

    # -- pods
    def _deploy(self, inp: dict[str, Any]) -> dict[str, Any]:
        gpu = inp.get("gpuTypeId")
        if gpu not in self.stock:
            raise FieldError(f"GPU type {gpu} is not available")
        busy = sum(1 for p in self.pods.values() if not p["terminated"])
        if self.stock[gpu] < int(inp.get("gpuCount", 1)) or (self.capacity is not None and busy >= self.capacity):
            raise FieldError(NO_INSTANCES)
        pod_id = f"pod{next(self._ids):03d}x"
        env = {e["key"]: e["value"] for e in inp.get("env") or []}
        price = next(g for g in GPUS if g["id"] == gpu)
        pod = {"id": pod_id, "name": inp.get("name"), "input": inp, "env": env, "terminated": False,
               "desiredStatus": "RUNNING", "key": f"pod-key-{pod_id}", "proc": None, "gpu": gpu,
               "costPerHr": round(price["securePrice"] * int(inp.get("gpuCount", 1)), 3)}
        self.pods[pod_id] = pod
        if self.container_root is not None:
            self._launch(pod)
        return pod

    def _launch(self, pod: dict[str, Any]) -> None:
        assert self.container_root is not None
        root = self.container_root / pod["id"]
        root.mkdir(parents=True, exist_ok=True)
        env = {**self.base_env, **pod["env"], "RUNPOD_POD_ID": pod["id"], "RUNPOD_API_KEY": pod["key"],
               "RUNPOD_API_BASE_URL": self.url, "CK_POD_ROOT": str(root / "ck"), "CK_RETRY_SECONDS": "0.05",
               "CK_POLL_SECONDS": "0.2", "CK_GRACE_SECONDS": "5", "CK_AFTER_TERMINATE_SECONDS": "30"}
        argv = shlex.split(pod["input"].get("dockerArgs") or "")
        log = open(root / "container.log", "wb")  # noqa: SIM115 - owned by the child
        pod["proc"] = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root,
                                       start_new_session=True)
        log.close()
        threading.Thread(target=self._watch, args=(pod,), daemon=True).start()

    def _watch(self, pod: dict[str, Any]) -> None:
        pod["proc"].wait()
        with self.lock:
            if pod["desiredStatus"] == "RUNNING":
                pod["desiredStatus"] = "EXITED"

    def _kill(self, pod: dict[str, Any]) -> None:
        proc = pod.get("proc")
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _view(self, pod: dict[str, Any]) -> dict[str, Any]:
        inp = pod["input"]
        running = pod["desiredStatus"] == "RUNNING"
        return {"id": pod["id"], "name": pod["name"], "desiredStatus": pod["desiredStatus"],
                "imageName": inp.get("imageName"), "env": [f"{k}={v}" for k, v in pod["env"].items()],
                "dockerArgs": inp.get("dockerArgs"), "dockerId": None, "gpuCount": inp.get("gpuCount"),
                "containerDiskInGb": inp.get("containerDiskInGb"), "volumeInGb": inp.get("volumeInGb"),
                "volumeMountPath": inp.get("volumeMountPath"), "ports": inp.get("ports"), "port": None,
                "podType": "RESERVED", "costPerHr": pod["costPerHr"], "memoryInGb": 62, "vcpuCount": 8,
                "uptimeSeconds": 5 if running else 0, "lastStatusChange": "fake",
                "machineId": f"m-{pod['id']}", "machine": {"podHostId": f"{pod['id']}-host",
                                                            "gpuDisplayName": pod["gpu"]},
                "runtime": {"uptimeInSeconds": 5, "ports": []} if running else None}

    def resolve(self, op_type: str, field: dict[str, Any], caller: str | None) -> Any:
        """Answer one top-level field; ``caller`` is the pod id when a pod's own key was used."""
        name, inp = field["name"], (field["args"].get("input") or {})
        if caller is not None and (name not in ("pod", "podTerminate") or inp.get("podId") != caller):
            raise FieldError("This API key is scoped to one pod and cannot do that.")
        if op_type == "query" and name == "gpuTypes":
            gpus = [g for g in GPUS if "id" not in inp or g["id"] == inp["id"]]
            return [{**g, "maxGpuCount": 8, "manufacturer": "Nvidia", "cudaCores": 0, "secureCloud": True,
                     "communityCloud": True, "oneMonthPrice": None, "threeMonthPrice": None, "oneWeekPrice": None,
                     "communitySpotPrice": None, "secureSpotPrice": None,
                     "lowestPrice": {"minimumBidPrice": 0.2, "uninterruptablePrice": g["communityPrice"]}}
                    for g in gpus]
        if op_type == "query" and name == "myself":
            return {"id": "user-fake", "pubKey": "", "networkVolumes": [],
                    "pods": [self._view(p) for p in self.pods.values() if not p["terminated"]]}
        if op_type == "query" and name == "pod":
            pod = self.pods.get(inp.get("podId"))
            return None if pod is None or pod["terminated"] else self._view(pod)
        if op_type == "mutation" and name == "podFindAndDeployOnDemand":
            return self._view(self._deploy(inp))
        if op_type == "mutation" and name == "podTerminate":
            pod = self.pods.get(inp.get("podId"))
            if pod is None or pod["terminated"]:
                raise FieldError("Pod not found")
            pod["terminated"], pod["desiredStatus"] = True, "TERMINATED"
            pod["terminated_by"] = "pod" if caller else "user"
            threading.Timer(0.3, self._kill, args=(pod,)).start()  # after the answer is on its way
            return None
        raise FieldError(f'Cannot query field "{name}" on type "{op_type.capitalize()}".')


def _send(handler: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None,
          content_type: str = "application/json") -> None:
    raw = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(raw)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(raw)


def _api_handler(fake: FakeRunPod) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if urlparse(self.path).path != "/graphql":
                return _send(self, 404, {"error": "no such route"})
            auth = self.headers.get("Authorization", "")
            caller: str | None = None
            authorized = auth == f"Bearer {fake.api_key}"
            if not authorized:
                for pod in list(fake.pods.values()):
                    if auth == f"Bearer {pod['key']}":
                        authorized, caller = True, pod["id"]
            try:
                query = json.loads(raw)["query"]
                op_type, fields = parse_graphql(query)
                error = None
            except (GraphQLSyntaxError, ValueError, KeyError) as exc:
                query, op_type, fields, error = None, "?", [], str(exc)
            op = fields[0]["name"] if fields else "?"
            with fake.lock:
                fake.requests.append({"op": op, "op_type": op_type, "args": fields[0]["args"] if fields else None,
                                      "authorized": authorized, "caller": caller, "query": query,
                                      "parse_error": error})
                inj = next((j for j in fake.injections if j["op"] in (op, "*") and j["times"] > 0), None)
                if inj:
                    inj["times"] -= 1
            if inj and not inj["after"]:
                return _send(self, inj["status"], inj["body"], inj["headers"],
                             "application/json" if isinstance(inj["body"], dict) else "text/html")
            if not authorized:
                return _send(self, 401, {"errors": [{"message": "Unauthorized"}]})
            if error:
                return _send(self, 400, {"errors": [{"message": error}]})
            data: dict[str, Any] = {}
            errors = []
            with fake.lock:
                for f in fields:
                    try:
                        data[f["name"]] = _select(fake.resolve(op_type, f, caller), f["sel"], f["name"])
                    except FieldError as exc:
                        data[f["name"]] = None
                        errors.append({"message": str(exc), "path": [f["name"]]})
            if inj:
                return _send(self, inj["status"], inj["body"], inj["headers"], "text/html")
            _send(self, 200, {"data": data, **({"errors": errors} if errors else {})})

    return Handler


# --------------------------------------------------------------------------- the bucket
class FakeObjectStore:
    """Path-style S3 subset: PUT/GET/HEAD/DELETE objects, pre-signed URLs checked like S3 does."""

    def __init__(self, access_key: str = "AKIDFAKE", secret_key: str = "fake-secret-key",
                 region: str = "us-east-1") -> None:
        self.access_key, self.secret_key, self.region = access_key, secret_key, region
        self.objects: dict[tuple[str, str], bytes] = {}
        self.log: list[tuple[str, str, str]] = []  # (method, key, "presigned" | "signed" | "anonymous")
        #: Seconds added to the clock that pre-signed URLs are checked against (to see one expire).
        self.clock_offset = 0.0
        #: A public bucket (a public-read policy): requests without any signature may read objects.
        self.public = False
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _s3_handler(self))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> FakeObjectStore:
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def keys(self, bucket: str = "ck-bucket") -> list[str]:
        return sorted(k for b, k in self.objects if b == bucket)

    def check_presigned(self, method: str, raw_path: str, query: str, host: str) -> str | None:
        """None when the pre-signed URL is valid for this request, else the S3 error code."""
        params = dict(parse_qsl(query, keep_blank_values=True))
        if params.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
            return "AuthorizationQueryParametersError"
        cred = params.get("X-Amz-Credential", "").split("/")
        if len(cred) != 5 or cred[0] != self.access_key:
            return "InvalidAccessKeyId"
        amz_date = params.get("X-Amz-Date", "")
        start = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
        now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.clock_offset)
        if now > start + dt.timedelta(seconds=int(params.get("X-Amz-Expires", "0"))):
            return "AccessDenied"  # Request has expired
        canonical_query = "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
            for k, v in sorted((k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "X-Amz-Signature"))
        canonical = "\n".join([method, raw_path, canonical_query, f"host:{host}", "", "host", "UNSIGNED-PAYLOAD"])
        scope = "/".join(cred[1:])
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        key = ("AWS4" + self.secret_key).encode()
        for part in cred[1:]:
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        return None if hmac.compare_digest(expected, params.get("X-Amz-Signature", "")) else "SignatureDoesNotMatch"


def _s3_handler(store: FakeObjectStore) -> type[BaseHTTPRequestHandler]:
    def error(handler: BaseHTTPRequestHandler, status: int, code: str) -> None:
        body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{code}</Message></Error>'
        _send(handler, status, body, content_type="application/xml")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _target(self) -> tuple[str, str, str] | None:
            url = urlparse(self.path)
            parts = url.path.lstrip("/").split("/", 1)
            if len(parts) != 2:
                error(self, 400, "InvalidRequest")
                return None
            bucket, key = unquote(parts[0]), unquote(parts[1])
            if "X-Amz-Signature" in url.query:
                problem = store.check_presigned(self.command, url.path, url.query, self.headers.get("Host", ""))
                how = "presigned"
            else:
                auth = self.headers.get("Authorization", "")
                problem = None if auth.startswith(f"AWS4-HMAC-SHA256 Credential={store.access_key}/") \
                    else "AccessDenied"
                how = "signed"
                if problem and not auth and store.public and self.command in ("GET", "HEAD"):
                    problem, how = None, "anonymous"
            if problem:
                self._drain()
                error(self, 403, problem)
                return None
            return bucket, key, how

        def _drain(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                self.rfile.read(n)

        def do_PUT(self) -> None:  # noqa: N802
            target = self._target()
            if target is None:
                return
            bucket, key, how = target
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if "aws-chunked" in (self.headers.get("Content-Encoding") or ""):
                return error(self, 501, "NotImplemented")
            with store.lock:
                store.objects[(bucket, key)] = body
                store.log.append(("PUT", key, how))
            _send(self, 200, b"", {"ETag": f'"{hashlib.md5(body).hexdigest()}"'})  # noqa: S324

        def do_GET(self) -> None:  # noqa: N802
            self._read(True)

        def do_DELETE(self) -> None:  # noqa: N802
            target = self._target()
            if target is None:
                return
            bucket, key, how = target
            with store.lock:
                store.objects.pop((bucket, key), None)
                store.log.append(("DELETE", key, how))
            _send(self, 204, b"")

        def do_HEAD(self) -> None:  # noqa: N802
            self._read(False)

        def _read(self, with_body: bool) -> None:
            target = self._target()
            if target is None:
                return
            bucket, key, how = target
            with store.lock:
                body = store.objects.get((bucket, key))
                store.log.append((self.command, key, how))
            if body is None:
                if with_body:
                    return error(self, 404, "NoSuchKey")
                return _send(self, 404, b"")
            _send(self, 200, body, {"ETag": f'"{hashlib.md5(body).hexdigest()}"',  # noqa: S324
                                    "Last-Modified": "Mon, 23 Nov 2026 00:00:00 GMT", "Accept-Ranges": "bytes"},
                  content_type="application/octet-stream")

    return Handler
