"""Dataset plugins json-instruct, json-chat, parquet and hf."""

from __future__ import annotations
