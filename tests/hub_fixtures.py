"""A model hub on 127.0.0.1 speaking the protocol the hub client uses for downloads: model info with
file hashes (``/api/models/ORG/NAME/revision/REV``) and files (``HEAD``/``GET /ORG/NAME/resolve/REV/PATH``
with ``X-Repo-Commit``, ``ETag`` and ``Content-Length``)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


@contextmanager
def fake_hub(repo_id: str, files: dict[str, bytes], commit: str, *, served: dict[str, bytes] | None = None,
             large: tuple[str, ...] = (".safetensors",)) -> Iterator[dict[str, Any]]:
    """Serve ``files`` of ``repo_id`` at ``commit`` (``served`` overrides what GET returns, to tamper).
    Yields ``{"url": ..., "requests": [...]}``."""
    served = {**files, **(served or {})}
    state: dict[str, Any] = {"requests": []}

    def meta(path: str, data: bytes) -> dict[str, Any]:
        row: dict[str, Any] = {"rfilename": path, "size": len(data), "blobId": _blob_id(data)}
        if path.endswith(large):
            row["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 130}
        return row

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _file(self, head: bool) -> None:
            prefix = f"/{repo_id}/resolve/"
            rest = self.path.split("?")[0][len(prefix):]
            _rev, _, name = rest.partition("/")
            if not self.path.startswith(prefix) or name not in files:
                self.send_error(404)
                return
            data = served[name]
            m = meta(name, files[name])
            etag = m["lfs"]["sha256"] if "lfs" in m else m["blobId"]
            self.send_response(200)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", f'"{etag}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not head:
                self.wfile.write(data)

        def _json(self, obj: Any) -> None:
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_HEAD(self) -> None:  # noqa: N802 - http.server API
            state["requests"].append(("HEAD", self.path))
            self._file(head=True)

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            state["requests"].append(("GET", self.path))
            if self.path.startswith(f"/api/models/{repo_id}/tree/"):
                tree = []
                for p, d in files.items():
                    m = meta(p, d)
                    entry = {"type": "file", "oid": m["blobId"], "size": len(d), "path": p}
                    if "lfs" in m:
                        entry["lfs"] = {"oid": m["lfs"]["sha256"], "size": len(d), "pointerSize": 130}
                    tree.append(entry)
                self._json(tree)
                return
            if self.path.startswith(f"/api/models/{repo_id}"):
                body = json.dumps({"id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                                   "siblings": [meta(p, d) for p, d in files.items()]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self._file(head=False)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
        yield state
    finally:
        server.shutdown()
        server.server_close()


def model_files(model_dir: Path) -> dict[str, bytes]:
    """The files of a model folder, by name."""
    return {f.name: f.read_bytes() for f in sorted(model_dir.iterdir()) if f.is_file() and not f.name.startswith(".")}
