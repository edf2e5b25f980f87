"""``ck simulate``: multi-turn conversations between a simulated user and an assistant.

Read top-down: :mod:`.config` (the ``simulate:`` section of a run spec), :mod:`.tasks` (task rows),
:mod:`.prompts` (user, grader and judge prompts), :mod:`.user` (the user simulator's JSON protocol),
:mod:`.retry` (backoff), :mod:`.metrics` and :mod:`.scoring` (the multiturn-aware reward),
:mod:`.loop` (the asyncio loop, resume, JSONL output) and :mod:`.command` (what ``ck simulate SPEC``
runs). The participants are simulator plugins (``openai``, ``local``: ``plugins/simulators/``).
Nothing here imports torch at import time.
"""

from __future__ import annotations
