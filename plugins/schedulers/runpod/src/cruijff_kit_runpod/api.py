"""The RunPod API calls the scheduler makes, with escaping, bounded retries and clear errors.

The GraphQL documents are the official ``runpod`` SDK's own (``runpod.api.queries`` /
``runpod.api.mutations``), so requests look exactly like the SDK's. They are posted here rather
than through ``runpod.create_pod`` & co. because the SDK's transport loses the HTTP status (a 429
or 500 surfaces as a JSON decode error), never retries, and pastes values into the query unescaped.
Every value is escaped with :func:`gql_str` before it reaches a document.

The base URL is ``$RUNPOD_API_BASE_URL`` (default ``https://api.runpod.io``), as in the SDK.

Each try has a total deadline of ``timeout`` seconds (:func:`cruijff_kit.call_with_deadline`), not only
a per-read timeout: a server that trickles bytes or never closes is given up on, and a 200 whose body
is truncated or not JSON is retried like a 5xx; so a call ends within ``timeout x attempts`` plus backoff.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cruijff_kit import (
    BadResponse,
    CkError,
    Deadline,
    DeadlineExceeded,
    call_with_deadline,
    json_body,
    read_body,
)

DEFAULT_BASE_URL = "https://api.runpod.io"
NO_CAPACITY_MARKERS = ("no longer any instances", "not enough free gpus", "no instances available")


class RunPodError(CkError):
    """A RunPod API call failed; the message says why and what to do."""


class NoCapacityError(RunPodError):
    """RunPod has no machine with the requested GPUs right now."""


class AmbiguousError(RunPodError):
    """The request may or may not have been carried out (timeout, 5xx, lost connection)."""


def gql_str(value: Any) -> str:
    """Escape a value for the inside of a GraphQL string literal (the SDK pastes values unescaped)."""
    return json.dumps(str(value))[1:-1]


def api_key_from_env() -> str:
    """``$RUNPOD_API_KEY``, or a CkError saying how to set it."""
    key = os.environ.get("RUNPOD_API_KEY", "").strip()
    if not key:
        raise RunPodError(
            "RUNPOD_API_KEY is not set. The runpod scheduler needs a RunPod API key in the environment: create "
            "one in the RunPod console (Settings > API Keys) and `export RUNPOD_API_KEY=...` before `ck run`; "
            "it is never written to the run folder.")
    return key


def base_url() -> str:
    """Where the GraphQL endpoint lives (``$RUNPOD_API_BASE_URL``, as the SDK reads it)."""
    return os.environ.get("RUNPOD_API_BASE_URL", DEFAULT_BASE_URL).rstrip("/")


@dataclass
class PodRequest:
    """What one pod is created with (values are escaped when the document is built)."""

    name: str
    image: str
    gpu_type: str
    gpu_count: int
    cloud_type: str
    container_disk_gb: int
    volume_gb: int
    volume_mount_path: str
    docker_args: str
    env: dict[str, str]
    network_volume_id: str | None = None
    data_center_id: str | None = None
    #: A public IP and SSH on the pod: for debugging only, off by default (batch stages need neither).
    public_access: bool = False


class RunPodApi:
    """Pod calls against the RunPod GraphQL API.

    Transient failures (HTTP 429, 5xx, timeouts, refused connections, truncated or invalid JSON) are
    retried ``attempts`` times, each try within ``timeout`` seconds in total, with exponential backoff
    (``Retry-After`` honoured); everything else raises :class:`RunPodError` at once. Creating a pod is
    not repeated blindly: after an ambiguous failure the pod is looked up by its unique name first, so
    a retry never starts a second pod.
    """

    #: Seconds before the first retry; doubles each time (tests lower it).
    backoff: float = 2.0
    attempts: int = 5
    #: Seconds one try may take in total (connecting, waiting and reading the whole answer).
    timeout: float = 30.0

    def __init__(self, api_key: str | None = None, *, quick: bool = False) -> None:
        self.api_key = api_key or api_key_from_env()
        self.url = f"{base_url()}/graphql"
        if quick:  # for look-ups with a fallback (prices in `ck plan`): one try, short timeout
            self.attempts, self.timeout = 1, 10.0

    # ------------------------------------------------------------------ transport
    def _post_once(self, query: str) -> dict[str, Any]:
        import requests

        # Private: the SDK's User-Agent string, from an SDK module outside runpod's top-level API (none exports it);
        # runpod is pinned to 1.12.x (plugin pyproject, constraints.txt).
        from runpod.user_agent import USER_AGENT

        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                   "Authorization": f"Bearer {self.api_key}"}
        payload = json.dumps({"query": query})

        def attempt(deadline: Deadline) -> _Answer:
            per_read = max(0.05, min(self.timeout, deadline.left()))
            with requests.post(self.url, headers=headers, data=payload, timeout=per_read, stream=True) as resp:
                resp.raw.decode_content = True  # gzip, if the server sends it, is undone by read1
                length = resp.headers.get("Content-Length", "")
                encoded = resp.headers.get("Content-Encoding", "identity").lower() != "identity"
                body = read_body(resp.raw, deadline, length=int(length) if length.isdigit() and not encoded else None)
                return _Answer(resp.status_code, resp.headers, body)

        try:
            answer = call_with_deadline(attempt, self.timeout, f"the RunPod API at {self.url}")
        except (requests.Timeout, DeadlineExceeded) as exc:
            raise AmbiguousError(f"RunPod API at {self.url} did not send its whole answer within {self.timeout:g} s, "
                                 f"the limit for one try ({type(exc).__name__}).") from None
        except BadResponse as exc:
            raise AmbiguousError(f"RunPod API at {self.url} sent an incomplete answer ({exc}).") from None
        except requests.ConnectionError as exc:
            raise AmbiguousError(f"cannot reach the RunPod API at {self.url} ({_short(exc)}). Check your network "
                                 "connection (and RUNPOD_API_BASE_URL if you set it).") from None
        return self._data(answer)

    def _data(self, resp: _Answer) -> dict[str, Any]:
        """The ``data`` of a GraphQL answer, or the error that fits its status and body."""
        code = resp.status_code
        if code in (401, 403):
            raise RunPodError(
                f"RunPod rejected the API key (HTTP {code}). Check RUNPOD_API_KEY: it must be a valid key with "
                "read/write access (RunPod console > Settings > API Keys). Nothing was started.")
        if code == 429 or code >= 500:
            retry_after = resp.headers.get("Retry-After")
            err = AmbiguousError(f"RunPod API answered HTTP {code}" +
                                 (" (rate limit: too many requests)" if code == 429 else " (server error)") +
                                 f": {_body_snippet(resp.text)}")
            err.status = code  # type: ignore[attr-defined]
            err.retry_after = _seconds(retry_after)  # type: ignore[attr-defined]
            raise err
        try:
            body = json_body(resp.content, "the RunPod API")
        except BadResponse:
            if code < 300:  # a 200 cut short (or mangled on the way) is transient: retried
                raise AmbiguousError(f"RunPod API answered HTTP {code} with a body that is not complete JSON: "
                                     f"{_body_snippet(resp.text)}") from None
            raise RunPodError(f"RunPod API answered HTTP {code} with something that is not JSON: "
                              f"{_body_snippet(resp.text)}") from None
        errors = body.get("errors") if isinstance(body, dict) else None
        if errors:
            msg = str(errors[0].get("message", errors[0])) if isinstance(errors[0], dict) else str(errors[0])
            if any(m in msg.lower() for m in NO_CAPACITY_MARKERS):
                raise NoCapacityError(msg)
            raise RunPodError(f"RunPod API refused the request: {msg}")
        if code >= 400 or not isinstance(body, dict) or "data" not in body:
            raise RunPodError(f"RunPod API answered HTTP {code} without data: {_body_snippet(resp.text)}")
        return body["data"] or {}

    def _post(self, query: str, *, retry: bool = True) -> dict[str, Any]:
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                return self._post_once(query)
            except AmbiguousError as exc:
                if not retry or attempt == self.attempts:
                    raise AmbiguousError(f"{exc} Gave up after {attempt} attempt(s); try again in a few "
                                         "minutes.") from None
                wait = getattr(exc, "retry_after", None) or delay
                time.sleep(min(wait, 60.0))
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ GPUs and prices
    def gpu(self, gpu_type: str, gpu_count: int = 1) -> dict[str, Any]:
        """The GPU type's record (prices included), or a RunPodError listing the known ids."""
        # Private: the SDK's GraphQL document, from an SDK module outside runpod's top-level API (none exports it);
        # runpod is pinned to 1.12.x (plugin pyproject, constraints.txt).
        from runpod.api.queries.gpus import generate_gpu_query

        data = self._post(generate_gpu_query(gql_str(gpu_type), int(gpu_count)))
        found = data.get("gpuTypes") or []
        if not found:
            known = self.gpu_ids()
            from cruijff_kit import did_you_mean

            raise RunPodError(f"RunPod has no GPU type `{gpu_type}`. {did_you_mean(gpu_type, known)} "
                              "Set `gpu_type` (profile or spec) to one of RunPod's GPU type ids.")
        return found[0]

    def gpu_ids(self) -> list[str]:
        """Every GPU type id RunPod knows."""
        # Private: the SDK's GraphQL document, from an SDK module outside runpod's top-level API (none exports it);
        # runpod is pinned to 1.12.x (plugin pyproject, constraints.txt).
        from runpod.api.queries.gpus import QUERY_GPU_TYPES

        return [g["id"] for g in self._post(QUERY_GPU_TYPES).get("gpuTypes") or []]

    def price_per_gpu_hour(self, gpu_type: str, cloud_type: str, gpu_count: int = 1) -> float | None:
        """USD per GPU-hour for on-demand pods of this type in this cloud (None when RunPod gives none)."""
        g = self.gpu(gpu_type, gpu_count)
        secure, community = g.get("securePrice"), g.get("communityPrice")
        if cloud_type == "SECURE":
            return _num(secure)
        if cloud_type == "COMMUNITY":
            return _num(community)
        lowest = (g.get("lowestPrice") or {}).get("uninterruptablePrice")
        candidates = [p for p in (_num(lowest), _num(secure), _num(community)) if p]
        return min(candidates) if candidates else None

    # ------------------------------------------------------------------ pods
    def create_pod(self, req: PodRequest) -> dict[str, Any]:
        """Start a pod; returns ``{id, ...}``. Never leaves a second pod behind after a retry."""
        # Private: the SDK's GraphQL document, from an SDK module outside runpod's top-level API (none exports it);
        # runpod is pinned to 1.12.x (plugin pyproject, constraints.txt).
        from runpod.api.mutations.pods import generate_pod_deployment_mutation

        query = generate_pod_deployment_mutation(
            name=gql_str(req.name), image_name=gql_str(req.image), gpu_type_id=gql_str(req.gpu_type),
            cloud_type=req.cloud_type, support_public_ip=req.public_access, start_ssh=req.public_access,
            data_center_id=gql_str(req.data_center_id) if req.data_center_id else None,
            gpu_count=int(req.gpu_count), volume_in_gb=int(req.volume_gb),
            container_disk_in_gb=int(req.container_disk_gb), min_vcpu_count=1, min_memory_in_gb=1,
            docker_args=gql_str(req.docker_args), volume_mount_path=gql_str(req.volume_mount_path),
            env={gql_str(k): gql_str(v) for k, v in req.env.items()},
            network_volume_id=gql_str(req.network_volume_id) if req.network_volume_id else None,
        )
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                data = self._post(query, retry=False)
                pod = data.get("podFindAndDeployOnDemand")
                if not pod or not pod.get("id"):
                    raise RunPodError("RunPod accepted the pod request but returned no pod id; check the RunPod "
                                      f"console for a pod named {req.name} and terminate it.")
                return pod
            except NoCapacityError as exc:
                raise NoCapacityError(
                    f"RunPod has no {req.gpu_count}x {req.gpu_type} available in {req.cloud_type} cloud right now "
                    f"(\"{exc}\"). Nothing was started. Try `cloud_type: ALL`, another `gpu_type`, fewer GPUs, "
                    "or again later.") from None
            except AmbiguousError as exc:
                existing = self._find_by_name(req.name)
                if existing is not None:
                    return existing
                if attempt == self.attempts:
                    raise AmbiguousError(f"{exc} Gave up creating pod {req.name} after {attempt} attempt(s); no "
                                         "pod of that name exists. Try again in a few minutes.") from None
                time.sleep(min(getattr(exc, "retry_after", None) or delay, 60.0))
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _find_by_name(self, name: str) -> dict[str, Any] | None:
        try:
            pods = self.list_pods()
        except RunPodError:
            return None
        same = [p for p in pods if p.get("name") == name]
        return same[0] if same else None

    def list_pods(self) -> list[dict[str, Any]]:
        """The account's pods (id, name, desiredStatus, costPerHr, ...)."""
        # Private: the SDK's GraphQL document, from an SDK module outside runpod's top-level API (none exports it);
        # runpod is pinned to 1.12.x (plugin pyproject, constraints.txt).
        from runpod.api.queries.pods import QUERY_POD

        return (self._post(QUERY_POD).get("myself") or {}).get("pods") or []

    def get_pod(self, pod_id: str) -> dict[str, Any] | None:
        """The pod's record, or None when it no longer exists."""
        # Private: the SDK's GraphQL document, from an SDK module outside runpod's top-level API (none exports it);
        # runpod is pinned to 1.12.x (plugin pyproject, constraints.txt).
        from runpod.api.queries.pods import generate_pod_query

        try:
            return self._post(generate_pod_query(gql_str(pod_id))).get("pod")
        except RunPodError as exc:
            if "not found" in str(exc).lower():
                return None
            raise

    def terminate_pod(self, pod_id: str) -> None:
        """Terminate a pod (idempotent: a pod that is already gone is fine)."""
        # Private: the SDK's GraphQL document, from an SDK module outside runpod's top-level API (none exports it);
        # runpod is pinned to 1.12.x (plugin pyproject, constraints.txt).
        from runpod.api.mutations.pods import generate_pod_terminate_mutation

        try:
            self._post(generate_pod_terminate_mutation(gql_str(pod_id)))
        except RunPodError as exc:
            if "not found" in str(exc).lower():
                return
            raise


# --------------------------------------------------------------------------- helpers
@dataclass
class _Answer:
    """One HTTP answer, read in full within its deadline."""

    status_code: int
    headers: Mapping[str, str]  # case-insensitive, as requests gives them
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f > 0 else None


def _seconds(v: str | None) -> float | None:
    try:
        return max(0.0, float(v)) if v is not None else None
    except ValueError:
        return None


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + "..."


def _body_snippet(text: str) -> str:
    text = " ".join((text or "").split())
    if not text:
        return "(empty body)"
    return repr(text[:200] + ("..." if len(text) > 200 else ""))

