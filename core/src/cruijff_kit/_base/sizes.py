"""Byte counts as people read them: binary units with their IEC names (1 KiB = 1024 bytes, the units
``resources.memory`` and sbatch use), one format for every message, table and plan."""

from __future__ import annotations

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: float | None) -> str:
    """A byte count in binary units with IEC names: ``1536`` -> ``"1.5 KiB"``, ``512`` -> ``"512 B"``,
    ``3 * 2**30`` -> ``"3.0 GiB"``; one decimal above a kibibyte, ``"?"`` for ``None`` (not known)."""
    if n is None:
        return "?"
    size = float(n)
    for unit in UNITS:
        shown = round(abs(size)) if unit == "B" else round(abs(size), 1)
        if shown < 1024 or unit == UNITS[-1]:  # 1023.96 KiB shows as 1.0 MiB, never as 1024.0 KiB
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
