"""Scheduler times and sizes mean what SLURM means, for every scheduler.

The time table is sbatch's own (``man sbatch``, ``--time``: "Acceptable time formats include
"minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours", "days-hours:minutes" and
"days-hours:minutes:seconds""), one row per format with the seconds computed by hand; SLURM books
whole minutes, rounded up. Memory follows ``--mem``: "Default units are megabytes. Different units
can be specified using the suffix [K|M|G|T]", binary multiples (1G = 1024M).

Each table goes through a real ``ck run --dry-run`` that writes the slurm job scripts (one run per
value, by a sweep), and through the runpod scheduler's dry run, whose pod time limit is read from the
same formats (priced at $3,600 per GPU-hour, its maximum cost in dollars is the limit in seconds).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from runpod_fixtures import (
    run_ck,
    run_dirs,
    running_fake_runpod,
    running_fake_store,
    write_profile,
    write_toy_spec,
)
from slurm_fixtures import slurm_env_fixture, slurm_plugin_site_fixture, slurm_spec

FIXTURES = (slurm_env_fixture, slurm_plugin_site_fixture)
fake_runpod = pytest.fixture(running_fake_runpod, name="fake_runpod")
fake_store = pytest.fixture(running_fake_store, name="fake_store")

#: (value as written in the spec, its sbatch format, seconds by hand).
SBATCH_TIMES: list[tuple[str | int, str, int]] = [
    ("90", "minutes", 90 * 60),                                  # 5400
    (45, "minutes (a YAML integer)", 45 * 60),                   # 2700
    ("30:00", "minutes:seconds", 30 * 60),                       # 1800, not 30 hours
    ("45:30", "minutes:seconds", 45 * 60 + 30),                  # 2730
    ("0:30", "minutes:seconds", 30),
    ("1:30:00", "hours:minutes:seconds", 3600 + 30 * 60),        # 5400
    ("26:03:00", "hours:minutes:seconds", 26 * 3600 + 3 * 60),   # 93780
    ("2-12", "days-hours", 2 * 86400 + 12 * 3600),               # 216000
    ("2-12:30", "days-hours:minutes", 2 * 86400 + 12 * 3600 + 30 * 60),  # 217800
    ("1-02:03:04", "days-hours:minutes:seconds", 86400 + 2 * 3600 + 3 * 60 + 4),  # 93784
]
#: ``#SBATCH --time=`` of each row: whole minutes, rounded up, by hand.
SBATCH_MINUTES = [90, 45, 30, 46, 1, 90, 1563, 3600, 3630, 1564]

#: (``resources.memory``, ``--mem`` in whole megabytes by hand).
MEMORY: list[tuple[str | int, int]] = [
    ("512", 512),           # a bare number is megabytes
    (2048, 2048),           # so is a YAML integer
    ("800M", 800),
    ("1.5G", 1536),         # 1.5 x 1024
    ("32GB", 32768),        # 32 x 1024
    ("2GiB", 2048),
    ("1T", 1048576),        # 1024 x 1024
    ("1536K", 2),           # 1.5 MiB, rounded up
]


def _sbatch_options(text: str) -> list[str]:
    return [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("#SBATCH ")]


def _variants(key: str, values: list[Any]) -> list[dict[str, Any]]:
    """One run per value: runs differing only in ``scheduler`` are one run, so each also gets its own LoRA rank."""
    return [{key: value, "train.lora.rank": i + 1} for i, value in enumerate(values)]


def _add_variants(spec: Path, variants: list[dict[str, Any]]) -> None:
    data = yaml.safe_load(spec.read_text())
    data["variants"] = variants
    spec.write_text(yaml.safe_dump(data, sort_keys=False))


def _train_scripts(tmp_path: Path, experiment: str, key: str) -> dict[str, list[str]]:
    """``resources.<key>`` of each run (from its resolved spec) -> the options of its train script."""
    out = {}
    for run in (tmp_path / "out" / experiment / "runs").iterdir():
        spec = yaml.safe_load((run / "spec.yaml").read_text())
        out[str(spec["scheduler"]["resources"][key])] = _sbatch_options((run / "slurm" / "train.sbatch").read_text())
    return out


def test_sbatch_time_formats_reach_the_job_scripts(slurm_env: dict[str, str], ck: Any, tmp_path: Path) -> None:
    spec = slurm_spec(tmp_path, experiment="times", scheduler={"signal_seconds": 120})
    _add_variants(spec, _variants("scheduler.resources.time", [v for v, _, _ in SBATCH_TIMES]))
    res = ck("run", str(spec), "--dry-run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    scripts = _train_scripts(tmp_path, "times", "time")
    assert len(scripts) == len(SBATCH_TIMES)
    for (value, fmt, seconds), minutes in zip(SBATCH_TIMES, SBATCH_MINUTES, strict=True):
        assert -(-seconds // 60) == minutes  # the two hand tables agree
        opts = scripts[str(value)]
        assert f"--time={minutes}" in opts, (value, fmt, [o for o in opts if o.startswith("--time")])
    # the time-limit warning never comes in the first half of a job: 30 seconds before the end of a 1-minute one
    assert "--signal=B:USR2@30" in scripts["0:30"] and "--signal=B:USR2@120" in scripts["30:00"]


def test_the_public_readers_give_the_seconds_and_bytes_of_the_tables() -> None:
    from cruijff_kit import parse_memory, parse_slurm_time

    assert [parse_slurm_time(v) for v, _, _ in SBATCH_TIMES] == [s for _, _, s in SBATCH_TIMES]
    assert [-(-parse_memory(v) // 2**20) for v, _ in MEMORY] == [mb for _, mb in MEMORY]
    assert parse_memory("1536K") == 1536 * 1024 and parse_memory("1.5G") == 1536 * 2**20
    assert parse_memory("1K") == 1024 and parse_memory("1g") == 1024 ** 3


def test_memory_units_reach_the_job_scripts(slurm_env: dict[str, str], ck: Any, tmp_path: Path) -> None:
    spec = slurm_spec(tmp_path, experiment="mem")
    _add_variants(spec, _variants("scheduler.resources.memory", [v for v, _ in MEMORY]))
    res = ck("run", str(spec), "--dry-run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    scripts = _train_scripts(tmp_path, "mem", "memory")
    for value, mb in MEMORY:
        assert f"--mem={mb}M" in scripts[str(value)], (value, [o for o in scripts[str(value)] if "--mem" in o])


def _spec_with_time(tmp_path: Path, line: str) -> Path:
    path = slurm_spec(tmp_path, experiment="quoted")
    text = path.read_text().replace("time: 00:10:00", line)
    assert text != path.read_text()
    path.write_text(text)
    return path


@pytest.mark.parametrize(("line", "fix"), [("time: 30:00", 'time: "30:00"'), ("time: 1:30:00", 'time: "1:30:00"')])
def test_an_unquoted_base_60_time_is_refused(slurm_env: dict[str, str], ck: Any, tmp_path: Path, line: str,
                                             fix: str) -> None:
    # YAML 1.1 reads an unquoted 30:00 as the integer 1800 (and 1:30:00 as 5400): 1800 minutes would be 30 hours
    assert yaml.safe_load(line)["time"] in (1800, 5400)
    spec = _spec_with_time(tmp_path, line)
    res = ck("run", str(spec), "--dry-run", cwd=tmp_path)
    assert res.returncode == 2, res.stdout
    assert f"Quote it: {fix}" in res.stderr and "spec.yaml" in res.stderr and "scheduler.resources.time" in res.stderr
    assert "Traceback" not in res.stderr
    assert not list(tmp_path.rglob("*.sbatch"))
    # the same value given on the command line
    ok = slurm_spec(tmp_path, experiment="quoted")
    res = ck("validate", str(ok), "--set", "scheduler.resources.time=30:00", cwd=tmp_path)
    assert res.returncode == 2 and 'Quote it: "30:00"' in res.stderr, res.stderr


@pytest.mark.parametrize(("field", "value", "message"), [
    ("time", "0", "SLURM reads as no time limit"),
    ("time", "00:00:00", "SLURM reads as no time limit"),
    ("time", "UNLIMITED", "is not HH:MM:SS nor another of sbatch's --time formats"),
    ("time", "1:60", "0-59"),
    ("time", "1-24:00:00", "hours 0-23"),
    ("memory", "0", "all of a node's memory"),
    ("memory", "512B", "is not a size"),
])
def test_zero_and_malformed_values_are_refused(slurm_env: dict[str, str], ck: Any, tmp_path: Path, field: str,
                                               value: str, message: str) -> None:
    spec = slurm_spec(tmp_path, experiment="bad", scheduler={"resources": {"cpus": 1, field: value}})
    res = ck("run", str(spec), "--dry-run", cwd=tmp_path)
    assert res.returncode == 2, res.stdout
    assert message in res.stderr and f"scheduler.resources.{field}" in res.stderr, res.stderr
    assert not list(tmp_path.rglob("*.sbatch"))


def test_the_local_scheduler_holds_the_same_formats(with_toy: Path, ck: Any, tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    base = {"experiment": "local", "model": {"path": "model"}, "dataset": {"plugin": "toy-data"},
            "train": {"plugin": "toy"}, "scheduler": {"plugin": "local"}}
    for time, code in (("30:00", 0), ("2-12", 0), ("90 minutes", 2)):
        base["scheduler"]["resources"] = {"time": time}
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(base))
        res = ck("validate", "spec.yaml", cwd=tmp_path)
        assert res.returncode == code, (time, res.stdout, res.stderr)
    assert "scheduler.resources.time" in res.stderr and "sbatch's --time formats" in res.stderr


def test_runpod_time_limits_read_the_same_formats(fake_runpod: Any, fake_store: Any, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    for i, (value, fmt, seconds) in enumerate(SBATCH_TIMES):
        folder = tmp_path / f"limit-{i}"
        folder.mkdir()
        spec = write_toy_spec(folder, scheduler=f"time_limit: {json.dumps(value)}\n")
        # $3,600 per GPU-hour on one GPU: the maximum cost in dollars is the pod's time limit in seconds
        write_profile(folder, fake_store, prices_from_api=False, prices={"NVIDIA A100 80GB PCIe": 3600.0})
        code, out = run_ck(capsys, "run", "--dry-run", str(spec))
        assert code == 0, out
        (run,) = run_dirs(folder)
        request = json.loads((run / "logs" / "runpod-dry-run.json").read_text())
        assert request["max_cost"] == pytest.approx(seconds), (value, fmt)
