"""Scheduler plugin `runpod`: run stages on RunPod pods."""

from __future__ import annotations
