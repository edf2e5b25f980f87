"""Dataset plugin `multiturn`: best response per turn from simulated conversations."""

from __future__ import annotations
