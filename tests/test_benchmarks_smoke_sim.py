"""`benchmarks/simulate_throughput.py` at its smallest size: exit 0 and every promised number printed.

The numbers themselves depend on the machine and are not judged; they must be there (in the printed
table and the JSON file), parse, and be positive and finite.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration

#: The columns of the printed table whose values must be positive numbers (the waiting shares may be 0% or "-").
PROMISED = ("convs", "seconds", "conv/min", "ideal", "ratio", "cpu ms/call")


def positive(text: str | float) -> float:
    value = float(text)
    assert math.isfinite(value) and value > 0, text
    return value


def test_simulate_throughput_smallest_with_repeats(tmp_path: Path) -> None:
    out_file = tmp_path / "sim.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "simulate_throughput.py"), "--concurrency", "2",
                          "--waves", "4", "--latency", "0.01", "--repeats", "2", "--json", str(out_file)],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "latency 10 ms per call, 5 calls per conversation, median of 2 interleaved runs"
    header = lines[1].split()
    assert " ".join(header) == "concurrency convs seconds conv/min ideal ratio cpu ms/call waited server waited"
    cells = lines[2].split()
    assert len(cells) == 9 and cells[0] == "2", lines[2]
    columns = ["concurrency", "convs", "seconds", "conv/min", "ideal", "ratio", "cpu ms/call", "waited", "server waited"]
    row = dict(zip(columns, cells, strict=True))
    for name in PROMISED:
        positive(row[name])
    assert float(row["ideal"]) == pytest.approx(2 * 60 / (5 * 0.01))
    for name in ("waited", "server waited"):
        assert row[name] == "-" or row[name].endswith("%") and 0 <= float(row[name][:-1]) < 1000
    assert lines[3].startswith("concurrency 2: ratio ") and lines[3].endswith(" over 2 runs")

    data = json.loads(out_file.read_text())
    (result,) = data["results"]
    assert (result["concurrency"], result["conversations"], result["calls_per_conversation"]) == (2, 8, 5)
    for key in ("seconds", "per_minute", "ideal_per_minute", "ratio", "cpu_ms_per_call"):
        positive(result[key])
    assert len(data["runs"]["2"]) == 2
    for run in data["runs"]["2"]:
        assert run["ratio"] > 0 and run["cpu_ms_per_call"] > 0
    # the printed median is the median of the runs (of two: their mean)
    assert result["ratio"] == pytest.approx(sum(r["ratio"] for r in data["runs"]["2"]) / 2, abs=1e-3)
