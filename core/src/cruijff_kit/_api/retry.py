"""Calls to a simulator (or any model behind a :class:`Simulator`) with bounded concurrency and retries
with exponential backoff: ``ck simulate`` and dataset plugins that rewrite rows with a model use it."""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cruijff_kit._api.kinds import Simulator
from cruijff_kit._base.errors import CkError


class RetryPolicy(BaseModel):
    """Backoff for transient failures (HTTP 429, 5xx, timeouts, dropped connections)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    attempts: int = Field(6, gt=0, description="Tries per call, the first included.")
    initial_delay: float = Field(0.5, ge=0.0, description="Seconds before the first retry.")
    max_delay: float = Field(30.0, ge=0.0, description="Longest wait between tries.")
    multiplier: float = Field(2.0, ge=1.0, description="Each wait is this times the previous one.")
    jitter: float = Field(0.25, ge=0.0, le=1.0, description="Random extra wait, as a fraction of the wait.")


class CallFailed(Exception):
    """A call failed for good (not retryable, or out of tries); fails one conversation, not the run."""


def backoff_delay(policy: RetryPolicy, attempt: int, rng: random.Random, hint: float | None = None) -> float:
    """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 1)."""
    try:
        delay = min(policy.max_delay, policy.initial_delay * policy.multiplier ** (attempt - 1))
    except OverflowError:  # multiplier ** attempt past the floats: the cap applies
        delay = policy.max_delay
    delay *= 1.0 + policy.jitter * rng.random()
    if hint is not None and math.isfinite(hint):  # a server's Retry-After of nan or inf is ignored
        delay = max(delay, min(hint, policy.max_delay))
    return delay


@dataclass
class Caller:
    """Wraps one participant: a shared request limit, retries, and counters of what happened."""

    plugin: Simulator
    policy: RetryPolicy
    limit: asyncio.Semaphore
    rng: random.Random = field(default_factory=random.Random)
    retries: int = 0
    calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    async def __call__(self, messages: list[dict[str, str]], **generation: Any) -> str:
        """The participant's reply; transient errors retried with backoff, others raise CallFailed."""
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self.limit:
                    self.calls += 1
                    return await self.plugin.complete(messages, **generation)
            except CkError:
                raise
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                kind = type(exc).__name__
                self.errors[kind] = self.errors.get(kind, 0) + 1
                if not self.plugin.is_retryable(exc):
                    raise CallFailed(f"{self.plugin.label()}: {kind}: {exc}") from exc
                if attempt >= self.policy.attempts:
                    raise CallFailed(f"{self.plugin.label()}: gave up after {attempt} tries; last error "
                                     f"{kind}: {exc}") from exc
                self.retries += 1
                await asyncio.sleep(backoff_delay(self.policy, attempt, self.rng, self.plugin.retry_after(exc)))
