"""Each script in benchmarks/ runs at its smallest size and prints the numbers it promises.

What the numbers are is not checked (they depend on the machine); that they are there, parse, and are
positive and finite is, so a benchmark cannot rot between measurements."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"

pytestmark = pytest.mark.integration
#: the training benchmarks take a minute or more each on a busy 2-core machine: the slow tier
slow_tier = pytest.mark.skipif(os.environ.get("CK_SLOW") != "1", reason="slow tier: set CK_SLOW=1")


def run(script: str, *args: str, timeout: float = 240) -> str:
    """Run ``benchmarks/<script>`` with ``args``; its stdout (fails on a non-zero exit)."""
    res = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, f"{script} {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def table(out: str) -> dict[str, list[str]]:
    """The body rows of the markdown tables in ``out``: first cell -> the other cells."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and not set(line) <= set("|- ") and cells[0] not in ("command", "path", "mode",
                                                                                       "conversion"):
            rows[cells[0]] = cells[1:]
    return rows


def positive(text: str) -> float:
    """A positive finite number (thousands separators allowed)."""
    value = float(text.replace(",", ""))
    assert math.isfinite(value) and value > 0, text
    return value


def test_benchmark_scripts_all_covered() -> None:
    """Every script under benchmarks/ (benchmarks/gpu/ included) is run by a smoke test: this file or a
    tests/test_benchmarks_smoke_*.py / test_gpu_check_dry_run.py beside it names it."""
    smoke = "".join(p.read_text() for p in [*Path(__file__).parent.glob("test_benchmarks_smoke*.py"),
                                            *Path(__file__).parent.glob("test_gpu_check*.py")])
    scripts = sorted(p.relative_to(BENCH).as_posix() for p in BENCH.rglob("*.py"))
    assert "experiment_loop.py" in scripts  # the glob finds them
    missing = [s for s in scripts if Path(s).name not in smoke]
    assert not missing, f"a benchmark needs a smoke run: {missing}"


@pytest.mark.slow
@slow_tier
@pytest.mark.timeout(900)
def test_experiment_loop() -> None:
    out = run("experiment_loop.py", "--repeats", "1", "--rows", "16", timeout=850)
    floor = re.search(r"import floor \(.*\): (\S+) s;", out)
    positive(floor.group(1))
    rows = {m.group(1): m.group(2).split() for m in re.finditer(r"^(default|serial) +(\d.*)$", out, re.MULTILINE)}
    assert set(rows) == {"default", "serial"}, out
    assert rows["serial"][0] == "7" and int(rows["default"][0]) < 7  # stage processes: grouped evaluations
    for cells in rows.values():
        assert all(positive(c) for c in cells[1:]), cells
    positive(re.search(r"serial / default: (\S+)", out).group(1))


def test_cli_startup() -> None:
    out = run("cli_startup.py", "--values", "2", "--repeat", "1")
    rows = table(out)
    assert set(rows) == {"python -c 'import torch'", "ck --help", "ck plan (8 runs)",
                         "ck status (8 runs x 2 stages)"}, rows
    for (seconds,) in rows.values():
        positive(seconds)
    total, distinct = map(int, re.search(r"ck status: (\d+) opens of (\d+) distinct files", out).groups())
    assert total >= distinct >= 2 * 8 + 1  # the spec given, and each run's spec.yaml and status.json


def test_cli_startup_default_sweep_is_unchanged() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import cli_startup
    finally:
        sys.path.remove(str(BENCH))
    import yaml

    sweep = yaml.safe_load(cli_startup.sweep_spec(10))["sweep"]
    assert sweep == {"train.lora.rank": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
                     "train.learning_rate": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                     "seed": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}


def test_data_convert() -> None:
    rows = table(run("data_convert.py", "--rows", "120", "--no-reference"))
    assert len(rows) == 3, rows
    for name, cells in rows.items():
        assert cells[0] == "120", (name, cells)
        positive(cells[-1])  # rows per second
    sft = next(cells for name, cells in rows.items() if name.startswith("multiturn candidates"))
    assert positive(sft[2].split()[0])  # SFT rows built


def test_simulate_throughput(tmp_path: Path) -> None:
    out_file = tmp_path / "sim.json"
    out = run("simulate_throughput.py", "--concurrency", "2", "--waves", "4", "--latency", "0.01",
              "--json", str(out_file))
    assert "latency 10 ms per call, 5 calls per conversation" in out
    (result,) = json.loads(out_file.read_text())["results"]
    assert result["concurrency"] == 2 and result["conversations"] == 8
    for key in ("seconds", "per_minute", "ideal_per_minute", "ratio", "cpu_ms_per_call"):
        positive(str(result[key]))
    assert result["ideal_per_minute"] == pytest.approx(2 * 60 / (5 * 0.01))


@pytest.mark.slow
@slow_tier
def test_torchtune_overhead() -> None:
    out = run("torchtune_overhead.py", "--rows", "8", "--epochs", "1", "--batch-size", "4", "--repeats", "1")
    rows = table(out)
    assert len(rows) == 2, rows
    for (seconds,) in rows.values():
        positive(seconds)
    assert "(2 optimizer steps)" in out  # 8 rows, batch 4, 1 epoch
    positive(re.search(r"ratio ours / stock: (\S+)", out).group(1))


@pytest.mark.slow
@slow_tier
def test_trl_overhead() -> None:
    out = run("trl_overhead.py", "--rows", "16", "--epochs", "1", "--batch-size", "8", "--repeats", "1")
    rows = table(out)
    assert set(rows) == {"plain TRL script", "ck stage train (trl plugin)"}, rows
    for cells in rows.values():
        assert len(cells) == 6 and all(positive(c) for c in cells), cells
    ratios = re.search(r"ratio ours / plain: (.*)", out).group(1)
    names = re.findall(r"([a-zA-Z/ ]+?) (\d[\d.]*|nan|inf)(?:,|$)", ratios)
    assert [n.strip() for n, _ in names] == ["wall min", "wall median", "CPU", "tokens/s best", "tokens/s median",
                                             "tokens per CPU s"], ratios
    for _, value in names:
        positive(value)


@pytest.mark.slow
@slow_tier
def test_packing() -> None:
    out = run("packing.py", "--rows", "16", "--repeats", "1")
    rows = table(out)
    assert set(rows) == {"padded", "packing", "packing + padding_free"}, rows
    for cells in rows.values():
        assert len(cells) == 6 and all(positive(c) for c in cells), cells
    assert rows["padded"][-1] == "1.00"
