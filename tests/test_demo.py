"""The demo a new user runs first: its fast form, end to end, from a copy of examples/."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_fast_demo_runs_end_to_end(tmp_path):
    (tmp_path / "examples").mkdir()
    for name in ("demo.py", "demo.yaml"):
        shutil.copy(ROOT / "examples" / name, tmp_path / "examples" / name)
    res = subprocess.run([sys.executable, str(tmp_path / "examples" / "demo.py"), "--fast"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    exp = tmp_path / "runs" / "capitalize-demo-fast"
    assert "Demo finished" in res.stdout
    rows = list(csv.DictReader((exp / "summary.csv").open()))
    assert {r["target"] for r in rows} == {"base", "epoch_2"}
    assert {r["train.lora.rank"] for r in rows} == {"4", "16"}
    assert all(r["state"] == "done" for r in rows)
    assert all(r["match/accuracy"] != "" for r in rows)
    assert (exp / "plots" / "loss_curves.png").stat().st_size > 10000
    assert f"Wrote {exp / 'summary.md'}" in res.stdout
