"""Trainer plugin `trl`: LoRA and QLoRA SFT (and DPO) with TRL."""

from __future__ import annotations
