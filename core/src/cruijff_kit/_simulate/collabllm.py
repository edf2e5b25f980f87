"""The ``collabllm`` scoring preset (microsoft/CollabLLM's multiturn-aware reward, computed the same way):
moved to the public :mod:`cruijff_kit.collab` (shared with the multi-turn eval task); every name is
re-exported here."""

from __future__ import annotations

import importlib.util  # noqa: F401  (tests patch collabllm.importlib.util.find_spec, as before the move)

from cruijff_kit.collab._collabllm import *  # noqa: F403
