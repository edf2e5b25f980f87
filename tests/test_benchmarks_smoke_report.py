"""`benchmarks/report_html.py` runs at its smallest size and prints every number it promises.

What the numbers are is not checked (they depend on the machine); that they are there, positive and
finite is, and so is the count that does not depend on it: one table row per run x target."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration


def test_report_html_benchmark_smoke() -> None:
    runs = 2
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report_html.py"), "--runs", str(runs),
                          "--steps", "20", "--repeat", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    lines = [line for line in res.stdout.splitlines() if line.startswith(f"| {runs} |")]
    assert len(lines) == 1, res.stdout
    cells = [c.strip() for c in lines[0].strip().strip("|").split("|")]
    assert len(cells) == 5, cells
    for text in cells:
        value = float(text)
        assert math.isfinite(value) and value > 0, (text, res.stdout)
    _, rows, wall, cpu, size = (float(c) for c in cells)
    assert rows == runs * 3  # base (shared), epoch_0 and epoch_1 of each run
    assert size > 1_000_000  # the page holds the packed charts library
