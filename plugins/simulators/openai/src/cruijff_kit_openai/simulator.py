"""An OpenAI-compatible chat-completions endpoint as a participant of ``ck simulate``.

Works with any server speaking the chat-completions API (vLLM, llama.cpp server, TGI, hosted APIs):
``base_url`` picks it, ``model`` the model. The API key is read from the environment variable named
by ``api_key_env`` when the simulation starts; it is never written anywhere. Neither transport retries on
its own: the core retries transient failures (429, 5xx, timeouts) with backoff.

Two transports send the requests (``transport``): the built-in lean HTTP/1.1 client
(:mod:`cruijff_kit_openai.http`, a tenth of the CPU per call), or the ``openai`` package's client
(which honours ``HTTPS_PROXY``); ``auto`` takes the built-in one unless the environment names a proxy
for the endpoint. Both raise the ``openai`` package's error classes, so retries and messages match.

``timeout`` is each try's total deadline, not only a per-read timeout, so a server that trickles
bytes or never closes cannot hold a call; a 200 whose body is truncated or not JSON is a
:class:`cruijff_kit.BadResponse`, retried like a 5xx.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from cruijff_kit import BadResponse, CkError, DeadlineExceeded, Simulator, SimulatorConfig, within_deadline


class OpenAIConfig(SimulatorConfig):
    """Options of the ``openai`` simulator."""

    model: str = Field(..., min_length=1, description="Model name the endpoint serves.")
    base_url: str | None = Field(None, description="Endpoint, e.g. http://localhost:8000/v1 (default: "
                                 "$OPENAI_BASE_URL, else the client's default).")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="Environment variable holding the API "
                                    "key; null for endpoints without keys.")
    timeout: float = Field(60.0, gt=0, description="Seconds per request, in total (connecting, waiting and "
                           "reading the whole reply), before it counts as timed out and is retried.")
    top_p: float | None = Field(None, gt=0, le=1)
    extra_body: dict[str, Any] = Field(default_factory=dict, description="Extra request fields the "
                                       "endpoint understands (e.g. top_k, repetition_penalty).")
    send_seed: bool = Field(True, description="Send a per-call seed (reproducible sampling where supported).")
    transport: Literal["auto", "builtin", "openai"] = Field(
        "auto", description="How requests are sent: `builtin` (a lean HTTP/1.1 client with keep-alive "
        "connections, no proxies), `openai` (the openai package's client, which honours HTTPS_PROXY), "
        "`auto` (builtin unless the environment names a proxy for the endpoint).")
    connection_pools: int = Field(4, gt=0, description="transport openai: clients used in turn, each with its "
                                  "own connection pool (a pool's bookkeeping grows with its connections).")

    @field_validator("base_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return v


#: Status codes worth retrying: rate limits, request timeouts, conflicts and server errors.
RETRY_STATUS = {408, 409, 429}

#: Where the openai client sends requests when neither ``base_url`` nor $OPENAI_BASE_URL says.
DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAISimulator(Simulator):
    """A chat participant behind an OpenAI-compatible chat-completions endpoint."""

    name = "openai"
    description = "Any OpenAI-compatible chat-completions endpoint, as simulated user, assistant or judge."
    Config = OpenAIConfig

    def __init__(self, config: OpenAIConfig, base_dir: Any = None) -> None:  # type: ignore[override]
        super().__init__(config, base_dir)
        self.config: OpenAIConfig = config
        self._clients: list[Any] = []
        self._http: Any = None  # the built-in transport's HTTPClient
        self._url = ""
        self._next = 0
        self._usage = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0}

    def label(self) -> str:
        return f"openai:{self.config.model}" + (f"@{self.config.base_url}" if self.config.base_url else "")

    def api_key(self) -> str:
        """The API key from the environment (a placeholder when the endpoint needs none)."""
        var = self.config.api_key_env
        if var is None:
            return "none"
        value = os.environ.get(var)
        if not value:
            raise CkError(f"the `openai` simulator ({self.label()}) reads its API key from the environment "
                          f"variable {var}, which is not set. Export it, or set `api_key_env` to the variable "
                          "that holds the key (null for endpoints that need none).")
        return value

    def endpoint(self) -> str:
        """The base URL requests go to: ``base_url``, else $OPENAI_BASE_URL, else OpenAI's."""
        return (self.config.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")

    def uses_builtin(self) -> bool:
        """True when requests go through the built-in HTTP client (see ``transport``)."""
        if self.config.transport != "auto":
            return self.config.transport == "builtin"
        return not proxied(self.endpoint())

    def open(self) -> None:
        """Create the transport (the key is read here, kept in memory only)."""
        key = self.api_key()
        import openai  # noqa: F401 - its error classes: importing it at the first error would block every call

        _httpx()
        if self.uses_builtin():
            from cruijff_kit_openai.http import HTTPClient

            headers = {} if self.config.api_key_env is None else {"Authorization": f"Bearer {key}"}
            for var, header in (("OPENAI_ORG_ID", "OpenAI-Organization"), ("OPENAI_PROJECT_ID", "OpenAI-Project")):
                if os.environ.get(var):  # as the openai client sends them
                    headers[header] = os.environ[var]
            try:
                self._http = HTTPClient(self.endpoint(), headers)
                self._url = self._http.url("/chat/completions")
            except UnicodeEncodeError:
                raise CkError(f"the API key in ${self.config.api_key_env} (or $OPENAI_ORG_ID, $OPENAI_PROJECT_ID) has "
                              "characters an HTTP header cannot carry. Check the variable's value.") from None
            return
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient

        plain = self.endpoint().startswith("http://")

        def client() -> Any:
            # Plain-HTTP endpoints need no TLS: skip loading the CA bundle (tens of ms per client).
            http = DefaultAsyncHttpxClient(verify=False) if plain else None
            return AsyncOpenAI(api_key=key, base_url=self.config.base_url, max_retries=0,
                               timeout=self.config.timeout, http_client=http)

        self._clients = [client() for _ in range(self.config.connection_pools)]

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        for client in self._clients:
            await client.close()
        self._clients = []

    def request_body(self, messages: list[dict[str, str]], generation: dict[str, Any]) -> dict[str, Any]:
        """The chat-completions request body of one call."""
        cfg = self.config
        kwargs: dict[str, Any] = {"model": cfg.model, "messages": messages}
        temperature = generation.get("temperature", cfg.temperature)
        max_tokens = generation.get("max_tokens", cfg.max_tokens)
        if temperature is not None:
            kwargs["temperature"] = temperature
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        if cfg.top_p is not None:
            kwargs["top_p"] = cfg.top_p
        if cfg.send_seed and generation.get("seed") is not None:
            kwargs["seed"] = int(generation["seed"])
        kwargs.update(cfg.extra_body)
        return kwargs

    async def complete(self, messages: list[dict[str, str]], **generation: Any) -> str:
        """One chat completion; raises the openai package's errors (the core decides on retries)."""
        if self._http is None and not self._clients:
            self.open()
        body = self.request_body(messages, generation)
        data = await (self._post_builtin(body) if self._http is not None else self._post_openai(body))
        self._usage["calls"] += 1
        usage = data.get("usage") if isinstance(data, dict) else None
        if isinstance(usage, dict):
            self._usage["prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
            self._usage["completion_tokens"] += int(usage.get("completion_tokens") or 0)
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise EmptyReply(f"{self.label()} returned no message content")
        return content

    async def _post_builtin(self, body: dict[str, Any]) -> Any:
        """The parsed JSON reply through the built-in client; errors as the openai client raises them."""
        from cruijff_kit_openai.http import json_bytes

        http = self._http
        url = self._url
        try:
            response = await http.post_json("/chat/completions", json_bytes(body), self.config.timeout,
                                            f"a request to {self.label()}")
        except DeadlineExceeded as exc:
            raise _timed_out(url, str(exc)) from None
        except BadResponse:
            raise
        except (ConnectionError, OSError) as exc:  # refused, reset, TLS failures: retried
            raise _connection_error(url, f"{type(exc).__name__}: {exc}") from None
        if not 200 <= response.status < 300:
            raise _status_error(url, response.status, response.headers, response.body)
        try:
            return json.loads(response.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadResponse(f"{self.label()} answered with a body that is not complete JSON ({exc}; "
                              f"{len(response.body)} bytes)") from None

    async def _post_openai(self, body: dict[str, Any]) -> Any:
        """The parsed JSON reply through the openai package's client."""
        client = self._clients[self._next % len(self._clients)]
        self._next += 1
        # The client's documented request method with a plain JSON body: the same auth, base URL, timeouts
        # and typed errors as `chat.completions.create`, without its per-call schema transforms.
        try:
            return await within_deadline(client.post("/chat/completions", body=body, cast_to=object),
                                         self.config.timeout, f"a request to {self.label()}")
        except DeadlineExceeded as exc:  # counted with the client's own timeouts: the same failure
            raise _timed_out(f"{client.base_url}chat/completions", str(exc)) from None
        except ValueError as exc:  # the client's JSON decoding of a truncated or invalid 200 body
            raise BadResponse(f"{self.label()} answered with a body that is not complete JSON ({exc})") from None

    def is_retryable(self, exc: BaseException) -> bool:
        import openai

        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError | openai.NotFoundError):
            raise CkError(f"{self.label()} refused the request ({type(exc).__name__}: {exc}). Check "
                          f"`model`, `base_url` and the key in ${self.config.api_key_env}.") from exc
        if isinstance(exc, openai.APITimeoutError | openai.APIConnectionError | EmptyReply):
            return True
        if isinstance(exc, openai.APIStatusError):
            return exc.status_code in RETRY_STATUS or exc.status_code >= 500
        return super().is_retryable(exc)

    def retry_after(self, exc: BaseException) -> float | None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
        if not headers:
            return None
        for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
            value = headers.get(name)
            if value:
                try:
                    seconds = float(value) * scale
                except ValueError:
                    return None
                return seconds if math.isfinite(seconds) and seconds >= 0 else None
        return None

    def stats(self) -> dict[str, Any]:
        return dict(self._usage)


def proxied(url: str) -> bool:
    """True when the environment names a proxy for ``url`` (HTTP(S)_PROXY / ALL_PROXY, not NO_PROXY)."""
    from urllib.request import getproxies, proxy_bypass

    parts = urlsplit(url)
    proxies = getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not proxy_bypass(parts.hostname or "")


def _httpx() -> Any:
    """The httpx module the openai package's errors carry requests and responses of."""
    try:
        import httpx2 as httpx
    except ImportError:  # pragma: no cover - openai versions built on httpx itself
        import httpx
    return httpx


def _timed_out(url: str, why: str) -> Exception:
    """The client's own timeout error (``APITimeoutError``, retried), saying which deadline passed."""
    import openai

    err = openai.APITimeoutError(request=_httpx().Request("POST", url))
    err.message = f"Request timed out: {why} (the `timeout` option)."
    err.args = (err.message,)
    return err


def _connection_error(url: str, why: str) -> Exception:
    """``APIConnectionError`` (retried), as the openai client raises for a refused or dropped connection."""
    import openai

    return openai.APIConnectionError(message=f"Connection error: {why}", request=_httpx().Request("POST", url))


def _status_error(url: str, status: int, headers: dict[str, str], body: bytes) -> Exception:
    """The openai package's error for an HTTP error status (``RateLimitError`` for 429...)."""
    import openai

    classes: dict[int, type[openai.APIStatusError]] = {
        400: openai.BadRequestError, 401: openai.AuthenticationError, 403: openai.PermissionDeniedError,
        404: openai.NotFoundError, 409: openai.ConflictError, 422: openai.UnprocessableEntityError,
        429: openai.RateLimitError}
    cls = classes.get(status) or (openai.InternalServerError if status >= 500 else openai.APIStatusError)
    httpx = _httpx()
    response = httpx.Response(status, headers=headers, content=body, request=httpx.Request("POST", url))
    try:
        parsed: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        parsed = body.decode("utf-8", "replace")[:2000] or None
    error = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
    message = error.get("message") if isinstance(error, dict) else None
    return cls(f"Error code: {status} - {message or parsed}", response=response, body=error)


class EmptyReply(Exception):
    """The endpoint answered without message content (retried)."""
