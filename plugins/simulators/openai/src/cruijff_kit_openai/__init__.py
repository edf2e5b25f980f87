"""Simulator plugin `openai`: any OpenAI-compatible endpoint as simulated user or assistant."""

from __future__ import annotations
