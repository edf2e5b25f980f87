"""``benchmarks/data_convert.py`` at its smallest size prints every number it promises.

What the numbers are is not checked (they depend on the machine); that they are there, parse, and are
positive and finite is. The official CollabLLM package is not installed here: one run skips it, one
says it is missing, and one uses a stand-in package in a stand-in environment to check the reference
lines and the ratios.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "data_convert.py"

pytestmark = pytest.mark.integration

NUMBER = r"([0-9][0-9,]*(?:\.[0-9]+)?)"


def run(*args: str) -> str:
    res = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def positive(text: str) -> float:
    value = float(text.replace(",", ""))
    assert math.isfinite(value) and value > 0, text
    return value


def multiturn_rows(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| multiturn"):
            rows[cells[0]] = cells[1:]
    return rows


def check_ours(out: str) -> None:
    rows = multiturn_rows(out)
    assert [name.split(" from ")[1].split()[0] for name in rows] == ["JSONL", "save_to_disk"], rows
    for cells in rows.values():
        rows_in, mb, sft, rss, peak, cpu, wall, per_s = cells
        assert rows_in == "120"
        for value in (mb, sft.split()[0], rss, peak, cpu, wall, per_s):
            positive(value)
        assert sft.endswith("SFT rows") and float(peak) >= float(rss) * 0.5
    assert re.search(r"load average \d", out)


def test_without_the_reference() -> None:
    out = run("--rows", "120", "--repeats", "1", "--only", "multiturn", "--no-reference")
    check_ours(out)
    assert "reference: not measured: --no-reference" in out


def test_a_missing_reference_environment_is_said_and_ours_still_measured(tmp_path: Path) -> None:
    out = run("--rows", "120", "--repeats", "1", "--only", "multiturn", "--reference-env", str(tmp_path / "none"))
    check_ours(out)
    assert f"reference: not measured: no reference environment at {tmp_path / 'none'}" in out


STAND_IN = '''
import json
from datasets import Dataset, DatasetDict, load_from_disk


class MultiturnDataset:
    def __init__(self, data, *, seed=42, add_system_prompt=True):
        self.data = data if isinstance(data, list) else [dict(r) for r in load_from_disk(data)]

    def to_sft_dataset(self, *, eval_ratio=0.0, lower_bound_metric=None, lower_bound=0.0):
        best = {}
        for row in self.data:
            prev = best.get(row["conv_id"])
            if prev is None or (row["turn_id"], row["score"]) > (prev["turn_id"], prev["score"]):
                best[row["conv_id"]] = row
        rows = [r["prompt"] + [{"role": "assistant", "content": r["completion"]}] for r in best.values()
                if r["score"] >= lower_bound]
        return DatasetDict({"train": Dataset.from_dict({"messages": rows})})
'''


def test_reference_lines_and_ratios_with_a_stand_in_package(tmp_path: Path) -> None:
    env, site = tmp_path / "env", tmp_path / "site"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec "{sys.executable}" "$@"\n')
    (env / "bin" / "python").chmod(0o755)
    (env / ".ck-ready").write_text("stand-in\n")
    (site / "collabllm" / "datasets").mkdir(parents=True)
    (site / "collabllm" / "__init__.py").write_text("")
    (site / "collabllm" / "datasets" / "__init__.py").write_text("")
    (site / "collabllm" / "datasets" / "multiturn.py").write_text(STAND_IN)
    (site / "collabllm-0.0.8.dist-info").mkdir()
    (site / "collabllm-0.0.8.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: collabllm\n"
                                                                   "Version: 0.0.8\n")
    out = run("--rows", "120", "--repeats", "1", "--only", "multiturn", "--reference-env", str(env))
    check_ours(out)
    for source in ("JSONL", "save_to_disk"):
        ref = re.search(rf"reference collabllm 0\.0\.8 from {source}: {NUMBER} SFT rows, RSS at start {NUMBER} MB, "
                        rf"peak {NUMBER} MB, CPU {NUMBER} s, wall {NUMBER} s, {NUMBER} rows/s", out)
        assert ref, out
        for value in ref.groups():
            positive(value)
        ratio = re.search(rf"ratio ours / reference from {source}: rows/s {NUMBER}x, CPU {NUMBER}x, peak MB "
                          rf"{NUMBER}, peak above start MB {NUMBER}", out)
        assert ratio, out
        for value in ratio.groups()[:3]:
            positive(value)
        assert float(ratio.group(4)) >= 0  # tiny inputs may add next to nothing
