"""The program a RunPod pod runs (standard library only; shipped to the pod in its environment).

1. Download the run's bundle (pre-signed URL) and unpack it under ``$CK_POD_ROOT/files`` (every local
   path keeps its absolute form below that folder); rewrite the run's ``spec.yaml`` so its paths
   point there.
2. ``pip install`` the cruijff-kit distributions the run needs (unless the image has them).
3. Run ``python -m cruijff_kit stage RUN_DIR STAGE`` for each stage in order (a stage whose
   dependency failed is skipped), logs in ``logs/<stage>.out|.err``; with the manifest's
   ``group_evals``, consecutive evaluations whose dependencies are done run in one
   ``python -m cruijff_kit stage RUN_DIR E1 E2 ...`` (each keeps its own logs, state and results);
   ``status.json`` is sent to the bucket while stages run.
4. Stop the process that is running when the pod's deadline (``$CK_DEADLINE``) comes near.
5. Send back the files of the run folder that changed, then a ``done`` marker with each stage's exit
   code, and terminate this pod (``runpodctl remove pod``, else the pod-scoped ``$RUNPOD_API_KEY``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

ENV_PREFIX = "CK_"
#: ``ck stage``'s exit code when its stages are claimed by another process (``ExitCode.CLAIMED``; this
#: program imports only the standard library)
CLAIMED_EXIT = 75
T = TypeVar("T")


def log(msg: str) -> None:
    """A line in the pod's log (the RunPod console shows it)."""
    print(f"[ck-pod {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _retry_seconds() -> float:
    return float(os.environ.get("CK_RETRY_SECONDS", "2"))


#: A transfer is given up on (and retried) when fewer than this many bytes arrive within the stall window.
STALL_MIN_BYTES = 1024


def _stall_seconds() -> float:
    """The stall window of uploads and downloads (``$CK_STALL_SECONDS``, default 120)."""
    return float(os.environ.get("CK_STALL_SECONDS") or "120")


def _call_seconds() -> float:
    """The total deadline of one small request (``$CK_CALL_SECONDS``, default 120)."""
    return float(os.environ.get("CK_CALL_SECONDS") or "120")


def _within(seconds: float, what: str, fn: Callable[[], T]) -> T:
    """``fn()`` in a worker thread, given up on after ``seconds`` in total (the standard library's
    socket timeouts are per read: a server that trickles bytes would hold the call forever). The pod
    cannot import cruijff_kit before its install step, so this mirrors ``cruijff_kit.call_with_deadline``."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError(f"{what} did not finish within {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _copy(resp: Any, out: Any) -> int:
    """Copy a response body into ``out`` in small reads; a stall (under STALL_MIN_BYTES within the stall
    window) raises TimeoutError, a body shorter than its Content-Length raises ConnectionError."""
    stall, got = _stall_seconds(), 0
    window_start, window_bytes = time.monotonic(), 0
    while True:
        chunk = resp.read1(1 << 20)
        if not chunk:
            break
        out.write(chunk)
        got += len(chunk)
        window_bytes += len(chunk)
        if window_bytes >= STALL_MIN_BYTES:
            window_start, window_bytes = time.monotonic(), 0
        elif time.monotonic() - window_start > stall:
            raise TimeoutError(f"transfer stalled: under {STALL_MIN_BYTES} bytes in {stall:g} s")
    length = resp.headers.get("Content-Length")
    if length and length.isdigit() and got < int(length):
        raise ConnectionError(f"the body ended after {got} of {length} bytes")
    return got


def http(method: str, url: str, data: bytes | None = None, path: str | None = None,
         headers: dict[str, str] | None = None, attempts: int = 5) -> bytes:
    """One HTTP request with retries; ``path`` uploads a file's content. A small request has a total
    deadline per try; a file upload has a stall window (its socket writes and reads time out after it)."""
    last: Exception | None = None
    for i in range(attempts):
        try:
            hdrs = dict(headers or {})
            if path is not None:
                with open(path, "rb") as fh:
                    hdrs["Content-Length"] = str(os.path.getsize(path))
                    req = urllib.request.Request(url, data=fh, method=method, headers=hdrs)
                    with urllib.request.urlopen(req, timeout=_stall_seconds()) as resp:
                        return _body(resp)
            req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
            return _within(_call_seconds(), f"{method} {url.split('?')[0]}", lambda r=req: _small(r))
        except Exception as exc:  # noqa: BLE001 - network errors of every kind are retried
            last = exc
            if i + 1 < attempts:
                time.sleep(_retry_seconds() * (2 ** i))
    assert last is not None
    raise last


def _small(req: urllib.request.Request) -> bytes:
    with urllib.request.urlopen(req, timeout=_call_seconds()) as resp:
        return _body(resp)


def _body(resp: Any) -> bytes:
    buf = io.BytesIO()
    _copy(resp, buf)
    return buf.getvalue()


def download(url: str, dest: str, attempts: int = 5) -> None:
    """Stream a GET into ``dest`` with retries; a try that stalls is resumed where it stopped (an HTTP
    Range request) when the server allows it. A body shorter than announced is never taken as whole."""
    last: Exception | None = None
    for i in range(attempts):
        have = os.path.getsize(dest) if os.path.exists(dest) else 0
        try:
            req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
            with urllib.request.urlopen(req, timeout=_stall_seconds()) as resp:
                resumed = have > 0 and resp.status == 206
                with open(dest, "ab" if resumed else "wb") as out:
                    _copy(resp, out)
            return
        except urllib.error.HTTPError as exc:
            last = exc
            if exc.code == 416:  # the range is past the end: start again from the beginning
                os.remove(dest)
        except Exception as exc:  # noqa: BLE001
            last = exc
        if i + 1 < attempts:
            time.sleep(_retry_seconds() * (2 ** i))
    assert last is not None
    raise last


def safe_extract(archive: str, dest: str) -> None:
    """Unpack a tar.gz below ``dest`` only (no absolute names, no ``..``, no links out)."""
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
            return
        root = os.path.realpath(dest)
        for member in tar.getmembers():
            target = os.path.realpath(os.path.join(dest, member.name))
            if not (target == root or target.startswith(root + os.sep)) or member.issym() or member.islnk():
                raise ValueError(f"unsafe path in bundle: {member.name}")
        tar.extractall(dest)  # noqa: S202 - checked above


class Agent:
    """One pod's work: the stages of one run."""

    def __init__(self) -> None:
        env = os.environ
        self.root = env["CK_POD_ROOT"]
        self.files = os.path.join(self.root, "files")
        deadline = float(env.get("CK_DEADLINE") or "inf")
        reserve = float(env.get("CK_RESERVE_SECONDS") or "120")
        self.stop_at = deadline - reserve
        self.grace = float(env.get("CK_GRACE_SECONDS") or "60")
        self.poll = float(env.get("CK_POLL_SECONDS") or "30")
        self.codes: dict[str, int | None] = {}
        self.group_evals = False
        self.reason = "finished"
        self.run_dir: str | None = None
        self.snapshot: dict[str, tuple[int, float]] = {}
        self.sent: dict[str, tuple[int, float]] = {}
        self.last_status: bytes | None = None
        self.started = time.time()

    # ------------------------------------------------------------------ main
    def main(self) -> int:
        os.makedirs(self.root, exist_ok=True)
        marker = os.path.join(self.root, ".ck-finished")
        if os.path.exists(marker):
            log("this pod already finished its stages (the container was restarted); terminating it")
            self.terminate()
            return 0
        stages: list[dict] = []
        try:
            manifest = self.fetch()
            stages = manifest["stages"]
            self.prepare(manifest)
            self.run_stages(stages)
        except Exception as exc:  # noqa: BLE001 - whatever happens, report and terminate
            self.reason = f"{type(exc).__name__}: {exc}"
            log("failed: " + self.reason)
            traceback.print_exc()
        finally:
            for st in stages:
                self.codes.setdefault(st["name"], None)
            self.finish()
            with open(marker, "w", encoding="utf-8") as fh:
                fh.write(self.reason)
        self.terminate()
        return 0

    def fetch(self) -> dict:
        log("downloading the run's bundle")
        archive = os.path.join(self.root, "bundle.tar.gz")
        download(os.environ["CK_BUNDLE_URL"], archive)
        safe_extract(archive, self.root)
        os.remove(archive)
        with open(os.path.join(self.root, "ck", "manifest.json"), encoding="utf-8") as fh:
            manifest = json.load(fh)
        self.prefixes = [p.rstrip("/") for p in manifest.get("prefixes", []) if p.startswith("/") and p != "/"]
        self.exact = manifest.get("exact", {})
        self.run_dir = self.files + manifest["run_dir"]
        self.group_evals = bool(manifest.get("group_evals"))
        self.snapshot = self._scan()
        return manifest

    def prepare(self, manifest: dict) -> None:
        spec = self.rewrite(manifest["spec"])
        assert self.run_dir is not None
        with open(os.path.join(self.run_dir, "spec.yaml"), "w", encoding="utf-8") as fh:
            json.dump(spec, fh, indent=1)  # JSON is YAML: `ck stage` reads it as the run's spec
        install = [self.rewrite(r) for r in manifest.get("install") or []]
        if install:
            logs = os.path.join(self.run_dir, "logs")
            os.makedirs(logs, exist_ok=True)
            cmd = [sys.executable, "-m", "pip", "install", *manifest.get("pip_args", []), *install]
            log("installing: " + " ".join(install))
            with open(os.path.join(logs, "pod-install.log"), "ab") as out:
                code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
            if code != 0:
                raise RuntimeError(f"pip install failed with exit code {code} (see logs/pod-install.log)")

    def rewrite(self, obj):  # type: ignore[no-untyped-def]
        """Local absolute paths (and ``~`` paths) that were sent along -> their place on this pod."""
        if isinstance(obj, dict):
            return {k: self.rewrite(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.rewrite(v) for v in obj]
        if isinstance(obj, str):
            path = self.exact.get(obj, obj)
            if path.startswith("/") and any(path == p or path.startswith((p + "/", p + "@")) for p in self.prefixes):
                return self.files + path
        return obj

    # ------------------------------------------------------------------ stages
    def run_stages(self, stages: list[dict]) -> None:
        """Each stage in order (one whose dependency did not finish is skipped); with ``group_evals``,
        consecutive evaluations whose dependencies are done run in one ``ck stage`` process."""
        names = {st["name"] for st in stages}
        i = 0
        while i < len(stages):
            name = stages[i]["name"]
            bad = [d for d in stages[i].get("depends_on", []) if d in self.codes and self.codes[d] != 0]
            if bad:
                log(f"skipping {name}: {', '.join(bad)} did not finish")
                self.codes[name] = None
                i += 1
                continue
            if time.time() >= self.stop_at:
                self.reason = "time limit reached"
                log(f"skipping {name}: the pod's time limit is reached")
                self.codes[name] = None
                i += 1
                continue
            group = self.eval_group(stages, i, names) if self.group_evals else [name]
            if len(group) > 1:
                self.codes.update(self.run_group(group))
            else:
                self.codes[name] = self.run_stage(name)
            for n in group:
                log(f"stage {n} exited with code {self.codes[n]}")
            self.upload_results()
            i += len(group)

    def eval_group(self, stages: list[dict], start: int, names: set[str]) -> list[str]:
        """The evaluations from ``stages[start]`` on, one after another, whose dependencies on this pod
        all finished with code 0 (a dependency not on this pod was done before it started)."""
        group: list[str] = []
        for st in stages[start:]:
            ready = all(d not in names or self.codes.get(d) == 0 for d in st.get("depends_on", []))
            if st.get("kind") != "eval" or not ready:
                break
            group.append(st["name"])
        return group or [stages[start]["name"]]

    def run_stage(self, name: str) -> int:
        """``python -m cruijff_kit stage RUN_DIR NAME``; returns its exit code."""
        return self.run_process([name])

    def run_group(self, names: list[str]) -> dict[str, int | None]:
        """``python -m cruijff_kit stage RUN_DIR E1 E2 ...`` (one process, the stages in turn; its output
        starts in the first stage's logs and ``ck stage`` moves it to each stage's own); each stage's
        code from its state in ``status.json`` afterwards: 0 done, non-zero failed or interrupted, None
        not started."""
        before = {n: self._entry(n) for n in names}
        code = self.run_process(names)
        stopped = self.reason == "time limit reached" or code == CLAIMED_EXIT
        if code != 0 and not stopped and all(self._entry(n) == before[n] for n in names):
            # the process failed before any stage began (a broken install, a damaged spec): every stage of
            # the group failed with it; its output is in the first one's log. One the pod stopped at its
            # time limit, or that found the stages claimed elsewhere, ran none of them: not run (None)
            return {n: code for n in names}
        out: dict[str, int | None] = {}
        for n in names:
            entry = self._entry(n)
            state = entry.get("state")
            if state == "done":
                out[n] = 0
            elif entry == before[n]:
                out[n] = None  # never started (the process ended before it)
            else:
                mine = entry.get("exit_code")
                out[n] = mine if isinstance(mine, int) and mine != 0 else (code or 1)
        return out

    def _entry(self, name: str) -> dict:
        """The stage's entry in the run's ``status.json`` (empty when there is none)."""
        assert self.run_dir is not None
        try:
            with open(os.path.join(self.run_dir, "status.json"), encoding="utf-8") as fh:
                entry = (json.load(fh).get("stages") or {}).get(name)
        except (OSError, ValueError, AttributeError):
            return {}
        return dict(entry) if isinstance(entry, dict) else {}

    def run_process(self, names: list[str]) -> int:
        """One ``ck stage`` process for ``names``, output in the first stage's logs; stopped when the
        pod's time limit comes near; ``status.json`` is sent while it runs. Returns its exit code."""
        assert self.run_dir is not None
        logs = os.path.join(self.run_dir, "logs")
        os.makedirs(logs, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX) and k != "RUNPOD_API_KEY"}
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [sys.executable, "-m", "cruijff_kit", "stage", self.run_dir, *names]
        log("running " + " ".join(cmd[1:]))
        first = names[0]
        with open(os.path.join(logs, f"{first}.out"), "ab") as out, \
                open(os.path.join(logs, f"{first}.err"), "ab") as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True)
        while True:
            wait = max(0.05, min(self.poll, self.stop_at - time.time()))
            try:
                code = proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                pass
            self.push_status()
            if time.time() >= self.stop_at:
                self.reason = "time limit reached"
                log(f"time limit: stopping {' '.join(names)}")
                code = self.stop(proc)
                break
        self.push_status()
        return code

    def stop(self, proc: subprocess.Popen) -> int:
        """SIGTERM the stage's process group (``ck stage`` records it as interrupted), then SIGKILL."""
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            return proc.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return proc.wait()

    # ------------------------------------------------------------------ results
    def _scan(self) -> dict[str, tuple[int, float]]:
        out: dict[str, tuple[int, float]] = {}
        if not self.run_dir or not os.path.isdir(self.run_dir):
            return out
        for base, _dirs, names in os.walk(self.run_dir):
            for n in names:
                p = os.path.join(base, n)
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                out[os.path.relpath(p, self.run_dir)] = (st.st_size, st.st_mtime)
        return out

    def push_status(self) -> None:
        """Send ``status.json`` when it changed (``ck status`` shows which stage runs)."""
        if not self.run_dir:
            return
        try:
            with open(os.path.join(self.run_dir, "status.json"), "rb") as fh:
                raw = fh.read()
        except OSError:
            return
        if raw == self.last_status:
            return
        try:
            http("PUT", os.environ["CK_STATUS_URL"], data=raw, headers={"Content-Type": "application/json"},
                 attempts=2)
            self.last_status = raw
        except Exception as exc:  # noqa: BLE001 - progress reports are best effort
            log(f"could not send status: {exc}")

    def upload_results(self) -> None:
        """Send every file of the run folder that is new or changed since the bundle was unpacked."""
        if not self.run_dir or not os.path.isdir(self.run_dir):
            return
        now = self._scan()
        if now == self.sent:
            return
        changed = sorted(p for p, sig in now.items()
                         if p != "spec.yaml" and (p == "status.json" or self.snapshot.get(p) != sig)
                         and not p.endswith(".lock"))
        fd, tmp = tempfile.mkstemp(suffix=".tar.gz", dir=self.root)
        os.close(fd)
        try:
            with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
                for rel in changed:
                    tar.add(os.path.join(self.run_dir, rel), arcname=rel, recursive=False)
            http("PUT", os.environ["CK_RESULTS_URL"], path=tmp, headers={"Content-Type": "application/gzip"})
            self.sent = now
            log(f"sent {len(changed)} file(s) of the run folder")
        except Exception as exc:  # noqa: BLE001
            log(f"could not send the run folder: {exc}")
        finally:
            os.remove(tmp)

    def finish(self) -> None:
        self.upload_results()
        self.push_status()
        done = {"reason": self.reason, "codes": self.codes, "started": self.started, "ended": time.time(),
                "pod": os.environ.get("RUNPOD_POD_ID")}
        try:
            http("PUT", os.environ["CK_DONE_URL"], data=json.dumps(done).encode(),
                 headers={"Content-Type": "application/json"})
        except Exception as exc:  # noqa: BLE001
            log(f"could not send the done marker: {exc}")
        log(f"done ({self.reason}): {json.dumps(self.codes)}")

    # ------------------------------------------------------------------ terminate
    def terminate(self) -> None:
        """Terminate this pod; keep trying (slowly) if RunPod does not accept it."""
        pod = os.environ.get("RUNPOD_POD_ID")
        if not pod:
            log("no RUNPOD_POD_ID: not on a RunPod pod, nothing to terminate")
            return
        tries = 0
        while True:
            tries += 1
            if self._terminate_once(pod):
                log("terminating this pod")
                time.sleep(float(os.environ.get("CK_AFTER_TERMINATE_SECONDS") or "60"))
                return
            wait = _retry_seconds() * 2 ** min(tries, 5) if tries < 6 else 300.0
            log(f"could not terminate this pod (attempt {tries}); trying again in {wait:.0f} s. "
                "`ck status` or `ck cancel` on your machine also terminates it.")
            time.sleep(wait)

    def _terminate_once(self, pod: str) -> bool:
        if shutil.which("runpodctl"):
            try:
                res = subprocess.run(["runpodctl", "remove", "pod", pod], capture_output=True, text=True,
                                     timeout=60)
                if res.returncode == 0:
                    return True
                log(f"runpodctl remove pod failed: {(res.stderr or res.stdout).strip()[:200]}")
            except (OSError, subprocess.TimeoutExpired) as exc:
                log(f"runpodctl failed: {exc}")
        key = os.environ.get("RUNPOD_API_KEY")
        if not key:
            return False
        base = (os.environ.get("RUNPOD_API_BASE_URL") or "https://api.runpod.io").rstrip("/")
        query = "mutation { podTerminate(input: { podId: " + json.dumps(pod) + " }) }"
        try:
            raw = http("POST", f"{base}/graphql", data=json.dumps({"query": query}).encode(),
                       headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"}, attempts=1)
            body = json.loads(raw or b"{}")
        except Exception as exc:  # noqa: BLE001
            log(f"terminate request failed: {exc}")
            return False
        if body.get("errors"):
            log(f"terminate refused: {body['errors'][0].get('message')}")
            return False
        return True


if __name__ == "__main__":
    sys.exit(Agent().main())
