"""The two trainer-overhead benchmarks run at their smallest size and print every number they promise.

What the numbers are is not checked (they depend on the machine and its load); that each is there,
parses, and is positive and finite (a load average: finite and not negative) is.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
NUMBER = r"(\d[\d.]*|nan|inf)"

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("CK_SLOW") != "1", reason="slow tier: set CK_SLOW=1")]


def run(script: str, *args: str, timeout: float = 400) -> str:
    res = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, f"{script} {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def positive(text: str) -> float:
    value = float(text)
    assert math.isfinite(value) and value > 0, text
    return value


def load_averages(out: str) -> None:
    found = re.search(rf"load average \(1/5/15 min\): {NUMBER}/{NUMBER}/{NUMBER} before, "
                      rf"{NUMBER}/{NUMBER}/{NUMBER} after", out)
    assert found, out
    assert all(math.isfinite(float(v)) and float(v) >= 0 for v in found.groups())


def test_torchtune_overhead_smallest() -> None:
    out = run("torchtune_overhead.py", "--rows", "8", "--epochs", "1", "--batch-size", "4", "--repeats", "1")
    assert "(2 optimizer steps), validation off in ours, 1 interleaved repeats" in out
    load_averages(out)
    for path in ("stock torchtune recipe on train/torchtune.yaml", "ck stage train (torchtune plugin)"):
        positive(re.search(rf"\| {re.escape(path)} \| {NUMBER} \|", out).group(1))
    cpu = re.search(rf"median CPU \(s\): stock {NUMBER}, ours {NUMBER}; CPU ratio ours / stock: {NUMBER}", out)
    assert cpu, out
    for value in cpu.groups():
        positive(value)
    positive(re.search(rf"ratio ours / stock: {NUMBER}$", out, re.M).group(1))


def test_trl_overhead_smallest() -> None:
    out = run("trl_overhead.py", "--rows", "16", "--epochs", "1", "--batch-size", "8", "--repeats", "1")
    assert "1 interleaved repeats after a warm-up" in out
    load_averages(out)
    for path in ("plain TRL script", "ck stage train (trl plugin)"):
        cells = re.search(rf"\| {re.escape(path)} \|(.*)\|$", out, re.M).group(1).split("|")
        assert len(cells) == 6, cells
        for cell in cells:
            positive(cell.strip())
    ratios = re.search(r"ratio ours / plain: (.*)", out).group(1)
    names = re.findall(rf"([a-zA-Z/ ]+?) {NUMBER}(?:,|$)", ratios)
    assert [n.strip() for n, _ in names] == ["wall min", "wall median", "CPU", "tokens/s best", "tokens/s median",
                                             "tokens per CPU s"], ratios
    for _, value in names:
        positive(value)
