"""An OpenAI-compatible chat-completions endpoint as a participant of ``ck simulate``.

Works with any server speaking the chat-completions API (vLLM, llama.cpp server, TGI, hosted APIs):
``base_url`` picks it, ``model`` the model. The API key is read from the environment variable named
by ``api_key_env`` when the simulation starts; it is never written anywhere. The client's own
retries are off: the core retries transient failures (429, 5xx, timeouts) with backoff.

``timeout`` is each try's total deadline (:func:`cruijff_kit.within_deadline`), not only the client's
per-read timeout, so a server that trickles bytes or never closes cannot hold a call; a 200 whose
body is truncated or not JSON is a :class:`cruijff_kit.BadResponse`, retried like a 5xx.
"""

from __future__ import annotations

import math
import os
from typing import Any

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
    connection_pools: int = Field(4, gt=0, description="Clients used in turn; each keeps its own connection "
                                  "pool (a pool's bookkeeping grows with its connections).")

    @field_validator("base_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return v


#: Status codes worth retrying: rate limits, request timeouts, conflicts and server errors.
RETRY_STATUS = {408, 409, 429}


class OpenAISimulator(Simulator):
    """A chat participant behind an OpenAI-compatible chat-completions endpoint."""

    name = "openai"
    description = "Any OpenAI-compatible chat-completions endpoint, as simulated user, assistant or judge."
    Config = OpenAIConfig

    def __init__(self, config: OpenAIConfig, base_dir: Any = None) -> None:  # type: ignore[override]
        super().__init__(config, base_dir)
        self.config: OpenAIConfig = config
        self._clients: list[Any] = []
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

    def open(self) -> None:
        """Create the async clients (the key is read here, kept in memory only)."""
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient

        key = self.api_key()
        plain = (self.config.base_url or "").startswith("http://")

        def client() -> Any:
            # Plain-HTTP endpoints need no TLS: skip loading the CA bundle (tens of ms per client).
            http = DefaultAsyncHttpxClient(verify=False) if plain else None
            return AsyncOpenAI(api_key=key, base_url=self.config.base_url, max_retries=0,
                               timeout=self.config.timeout, http_client=http)

        self._clients = [client() for _ in range(self.config.connection_pools)]

    async def aclose(self) -> None:
        for client in self._clients:
            await client.close()
        self._clients = []

    async def complete(self, messages: list[dict[str, str]], **generation: Any) -> str:
        """One chat completion; raises the client's errors (the core decides on retries)."""
        if not self._clients:
            self.open()
        client = self._clients[self._next % len(self._clients)]
        self._next += 1
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
        # The client's documented request method with a plain JSON body: the same auth, base URL, timeouts
        # and typed errors as `chat.completions.create`, without its per-call schema transforms (which
        # cost more CPU than the request itself when hundreds of calls are in flight).
        try:
            data = await within_deadline(client.post("/chat/completions", body=kwargs, cast_to=object),
                                         cfg.timeout, f"a request to {self.label()}")
        except DeadlineExceeded as exc:  # counted with the client's own timeouts: the same failure
            raise _timed_out(client, str(exc)) from None
        except ValueError as exc:  # the client's JSON decoding of a truncated or invalid 200 body
            raise BadResponse(f"{self.label()} answered with a body that is not complete JSON ({exc})") from None
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


def _timed_out(client: Any, why: str) -> Exception:
    """The client's own timeout error (``APITimeoutError``, retried), saying which deadline passed."""
    import httpx
    import openai

    err = openai.APITimeoutError(request=httpx.Request("POST", f"{client.base_url}chat/completions"))
    err.message = f"Request timed out: {why} (the `timeout` option)."
    err.args = (err.message,)
    return err


class EmptyReply(Exception):
    """The endpoint answered without message content (retried)."""
