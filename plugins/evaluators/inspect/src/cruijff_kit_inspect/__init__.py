"""Evaluator plugin `inspect`: inspect-ai evals of base models and checkpoints."""

from __future__ import annotations
