"""One loaded base model per process, shared by every ``ck/`` model of the process; adapters swapped.

Evaluating the base and every checkpoint of a run in one process loads the base weights once: each
``ck/`` model (one per target) asks :data:`BASES` for the model under its own adapter, and the cache
puts the base into that state first:

* the cache key is everything that decides the loaded weights (model path, revision and the other
  ``from_pretrained`` arguments, device, dtype, quantization); another key drops the held base
  before loading the next one, so at most one base is held (bounded memory);
* the adapter of the previous owner is removed with PEFT's ``unload()`` (its LoRA layers are taken
  out; the base weights were never changed), then the new owner's adapter is applied with
  ``PeftModel.from_pretrained``; the ``base`` target gets the bare base model;
* an adapter merged into the weights (``merge: true``) changed them: the next owner gets a fresh
  load, never the merged model.

Every call that reads or changes the held model runs under one lock, and generation runs on one
worker thread (see :mod:`cruijff_kit_inspect.batching`), so no owner ever generates with another
owner's adapter.
"""

from __future__ import annotations

import gc
import itertools
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

__all__ = ["BASES", "BaseModelCache", "Holder"]

_TOKENS = itertools.count(1)


@dataclass(frozen=True)
class Holder:
    """What one ``ck/`` model needs from the cache: its identity, base, adapter and merge mode."""

    key: Hashable
    """Everything that decides the base's loaded weights."""
    load: Callable[[], Any]
    """Loads the base model (in eval mode, on its device) when the cache does not hold it."""
    adapter: str | None = None
    merge: bool = False
    token: int = 0

    @classmethod
    def new(cls, key: Hashable, load: Callable[[], Any], adapter: str | None = None, merge: bool = False) -> Holder:
        """A holder with a token of its own (two models with the same settings are still two owners)."""
        return cls(key, load, adapter, merge, next(_TOKENS))


class BaseModelCache:
    """The one base model held in this process and the adapter currently applied on it."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._key: Hashable | None = None
        self._base: Any = None
        self._current: Any = None
        self._peft: Any = None
        self._owner = 0
        self._merged = False
        #: Base models loaded by this cache (a test and benchmark counter).
        self.loads = 0

    @property
    def held_key(self) -> Hashable | None:
        """The key of the held base (None when nothing is held)."""
        return self._key

    def model(self, holder: Holder) -> Any:
        """The model of ``holder``: the held base under its adapter (loaded or swapped as needed)."""
        with self.lock:
            if self._owner == holder.token and self._current is not None:
                return self._current
            if self._key != holder.key or self._merged:
                self.clear()
            if self._base is None:
                self._base = holder.load()
                self._key = holder.key
                self.loads += 1
            elif self._peft is not None:
                self._base = self._peft.unload()  # takes the LoRA layers out; base weights untouched
            self._peft = None
            self._current = self._base
            self._owner = 0
            if holder.adapter is not None:
                from peft import PeftModel

                peft = PeftModel.from_pretrained(self._base, holder.adapter)
                peft.eval()
                if holder.merge:
                    self._merged = True  # the weights now hold the adapter: the next owner reloads
                    self._current = peft.merge_and_unload()
                    self._current.eval()
                else:
                    self._peft = peft
                    self._current = peft
            self._owner = holder.token
            return self._current

    def release(self, holder: Holder) -> None:
        """``holder`` is done: drop a merged model now (it can serve no one else)."""
        with self.lock:
            if self._owner == holder.token and self._merged:
                self.clear()

    def clear(self) -> None:
        """Drop the held model (the next request loads again) and free its memory."""
        with self.lock:
            had = self._base is not None
            self._key = self._base = self._current = self._peft = None
            self._owner = 0
            self._merged = False
            if had:
                gc.collect()
                try:
                    import torch

                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                except Exception:  # only freeing memory: never fails an eval
                    pass


BASES = BaseModelCache()
"""The process-wide cache every ``ck/`` model uses."""
