"""Task rows for ``ck simulate``: the public :mod:`cruijff_kit.collab` reads them (shared with the
multi-turn eval task); re-exported here."""

from __future__ import annotations

from cruijff_kit.collab._tasks import Task, conversation_ids, load_tasks

__all__ = ["Task", "conversation_ids", "load_tasks"]
