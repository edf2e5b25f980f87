"""Trainer plugin `torchtune`: LoRA with torchtune recipes."""

from __future__ import annotations
