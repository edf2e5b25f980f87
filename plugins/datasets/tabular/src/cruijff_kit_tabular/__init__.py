"""Dataset plugin `tabular`: social data tables rendered as LLM tasks."""

from __future__ import annotations
