"""Scheduler times and memory sizes, read with the meanings SLURM's ``sbatch`` gives them.

One reading for every scheduler (``Resources.time`` and ``Resources.memory`` are checked with these
when a spec is loaded; the slurm scheduler writes them into ``#SBATCH`` lines, the runpod scheduler
turns them into pod time limits), so ``"30:00"`` is thirty minutes everywhere, as it is to ``sbatch``.

- :func:`parse_slurm_time`: sbatch's ``--time`` formats, ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``,
  ``D-HH:MM`` and ``D-HH:MM:SS``, to seconds. The first field may be any count; the ones after it
  stay within their clock range (hours 0-23 after days, minutes and seconds 0-59). A limit of zero
  (which SLURM reads as "no limit") and SLURM's ``UNLIMITED``/``INFINITE``/``-1`` are refused: write
  the limit you mean.
- :func:`parse_memory`: sbatch's ``--mem`` sizes, a number with a unit ``K``, ``M``, ``G`` or ``T``
  (binary multiples, as SLURM means them: 1G = 1024M; ``B`` or ``iB`` may follow, as in ``32GB``), to
  bytes; a bare number is megabytes, as it is to sbatch. Zero (all of a node's memory, to SLURM) is
  refused.

An integer is read as the same text would be (``30`` minutes, ``512`` megabytes). A YAML file cannot
hand over a misread one: the loader refuses an unquoted ``30:00``, which YAML 1.1 reads as the
base-60 integer 1800 (:mod:`cruijff_kit._base.parsing`).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

#: The formats of sbatch's ``--time``, for messages.
TIME_FORMATS = "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
_DAYS = re.compile(r"^(\d+)-(\d+)(?::(\d+)(?::(\d+))?)?$", re.ASCII)
_CLOCK = re.compile(r"^(\d+)(?::(\d+)(?::(\d+))?)?$", re.ASCII)
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)\s*(?:([KMGT])(?:i?B)?)?$", re.IGNORECASE | re.ASCII)
_POWERS = {"K": 1, "M": 2, "G": 3, "T": 4}
_DIGITS = 12  # longest field accepted (more than any real limit; keeps int() cheap)


def _text(value: str | int, what: str, example: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{what} must be text such as {example}, not the {type(value).__name__} {value!r}")
    return str(value).strip()


def parse_slurm_time(value: str | int) -> int:
    """A wall-time limit in one of sbatch's ``--time`` formats -> seconds.

    ``"90"`` and ``90`` are 90 minutes, ``"30:00"`` 30 minutes, ``"1:30:00"`` 90 minutes, ``"2-12"``
    60 hours, ``"2-12:30"`` and ``"2-12:30:00"`` 60.5 hours. Raises ``ValueError`` naming the formats
    for anything else, and for a limit of zero.
    """
    text = _text(value, "time", '"01:00:00" (or a whole number of minutes)')
    bad = (f"time {text!r} is not HH:MM:SS nor another of sbatch's --time formats ({TIME_FORMATS}; "
           "\"30:00\" is 30 minutes)")
    if len(text) > 4 * _DIGITS:
        raise ValueError(bad)
    days = _DAYS.match(text)
    clock = None if days else _CLOCK.match(text)
    if days:
        d, h, m, s = (int(g) if g else 0 for g in days.groups())
        if h > 23 or m > 59 or s > 59:
            raise ValueError(f"time {text!r}: after D- come hours 0-23, minutes and seconds 0-59 (D-HH:MM:SS)")
    elif clock:
        fields = [int(g) for g in clock.groups() if g is not None]
        d, h, m, s = 0, 0, 0, 0
        if len(fields) == 1:
            m = fields[0]
        elif len(fields) == 2:
            m, s = fields
        else:
            h, m, s = fields
        if s > 59 or (len(fields) == 3 and m > 59):
            raise ValueError(f"time {text!r}: minutes and seconds after the first field are 0-59 "
                             f"({TIME_FORMATS})")
    else:
        raise ValueError(bad)
    seconds = ((d * 24 + h) * 60 + m) * 60 + s
    if seconds == 0:
        raise ValueError(f"time {text!r} is zero, which SLURM reads as no time limit at all; write the limit "
                         "you need, e.g. \"7-00:00:00\" for seven days")
    return seconds


def parse_memory(value: str | int) -> int:
    """A memory size as sbatch's ``--mem`` reads it -> bytes (a bare number is megabytes).

    Units are binary, as SLURM means them: ``"1K"`` is 1024 bytes, ``"1.5G"`` 1536 MiB, ``"32GB"``
    32 GiB, ``"512"`` and ``512`` 512 MiB. A fraction of a byte is rounded up. Raises ``ValueError``
    for anything else, and for zero.
    """
    text = _text(value, "memory", '"32GB" (or a whole number of megabytes)')
    m = _MEMORY.match(text) if len(text) <= 3 * _DIGITS else None
    if not m:
        raise ValueError(f"memory {text!r} is not a size like 32GB, 1.5G, 800M or 512 (megabytes); units K, M, "
                         "G, T are binary (1G = 1024M), as sbatch --mem reads them")
    size = math.ceil(Decimal(m.group(1)) * 1024 ** _POWERS[(m.group(2) or "M").upper()])
    if size == 0:
        raise ValueError(f"memory {text!r} is zero, which SLURM reads as all of a node's memory; write the "
                         "size you need")
    return size
