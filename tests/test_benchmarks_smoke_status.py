"""`benchmarks/status_at_scale.py` runs at its smallest size and prints every number it promises.

What the times are is not checked (they depend on the machine); that they are there, positive and
finite is, and so are the counts that do not depend on the machine: the scheduler calls of the first
`ck status`, and its writes (each run's status.json once, each stage's sacct record once)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration


def test_status_at_scale_smoke() -> None:
    runs = 3
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "status_at_scale.py"), "--runs", str(runs),
                          "--repeat", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    lines = [line for line in res.stdout.splitlines() if line.startswith("| this checkout |")]
    assert len(lines) == 1, res.stdout
    cells = [c.strip() for c in lines[0].strip().strip("|").split("|")][1:]
    assert len(cells) == 7, cells
    for text in cells:
        value = float(text)
        assert math.isfinite(value) and value > 0, (text, res.stdout)
    first_wall, first_cpu, second_wall, second_cpu, calls, written, fsyncs = (float(c) for c in cells)
    assert calls == 2  # one squeue, one sacct
    assert written == runs + 2 * runs  # each status.json once, each stage's slurm/<stage>.sacct.json
    assert fsyncs >= written  # every file written is synced before it replaces the old one
