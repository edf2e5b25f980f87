"""A full disk: the stage ends failed or the command errors clearly, and nothing is marked done.

In-process tests make the file system answer ENOSPC (through ``os.write`` / ``os.replace``, which the
core's appends and atomic writes use); where a small tmpfs can be mounted (root, a kernel that allows
it), `ck run` also meets a real full file system.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_spec

from cruijff_kit import status

SPEC = """
experiment: full
model: {path: org/model}
dataset: {plugin: toy-data}
train: {plugin: toy, epochs: 1, steps_per_epoch: 3}
eval: [{plugin: toy-eval, task: t}]
"""


def enospc(path: object = None) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), None if path is None else str(path))


def prepare(tmp_path: Path) -> Path:
    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.runner import write_experiment
    from cruijff_kit._engine.spec import load_spec

    plan = make_plan(load_spec(write_spec(tmp_path, SPEC)))
    write_experiment(plan)
    return plan.runs[0].layout.root


def test_metrics_append_hits_full_disk_stage_fails(tmp_path, with_toy, monkeypatch):
    from cruijff_kit._engine.stage import run_stage

    run_dir = prepare(tmp_path)

    def full(fd: int, data: bytes) -> int:
        raise enospc()

    with monkeypatch.context() as m, pytest.raises(OSError, match="No space left"):
        m.setattr(os, "write", full)  # append_jsonl's single write
        run_stage(run_dir, "train")
    st = status.read(run_dir)["stages"]["train"]
    assert st["state"] == "failed" and "No space left on device" in st["error"]
    assert not (run_dir / "train" / "epoch_0").exists()  # no adapter, nothing for the evals to use
    assert not (run_dir / "train" / "metrics.jsonl").exists() or \
        (run_dir / "train" / "metrics.jsonl").read_bytes() == b""


def test_results_write_hits_full_disk_stage_not_done_results_intact(tmp_path, with_toy, monkeypatch):
    from cruijff_kit._engine.damage import record_results
    from cruijff_kit._engine.stage import run_stage

    run_dir = prepare(tmp_path)
    layout_results = run_dir / "eval" / "results.json"
    record_results(type("L", (), {"results": layout_results})(), "other", "base", {"accuracy": 0.25})
    before = layout_results.read_bytes()
    real_replace = os.replace

    def replace(src: str, dst: str, *a: object, **kw: object) -> None:
        if Path(dst).name == "results.json":
            raise enospc(dst)
        real_replace(src, dst, *a, **kw)

    with monkeypatch.context() as m, pytest.raises(OSError, match="No space left"):
        m.setattr(os, "replace", replace)
        run_stage(run_dir, "eval.t.base")
    st = status.read(run_dir)["stages"]["eval.t.base"]
    assert st["state"] == "failed" and "No space left" in st["error"]
    assert layout_results.read_bytes() == before  # the old results stay whole
    assert json.loads(before) == {"other": {"base": {"accuracy": 0.25}}}
    assert not [p for p in layout_results.parent.iterdir() if p.name.endswith(".tmp")]  # no temp litter


def test_status_cannot_be_written_stage_never_marked_done(tmp_path, with_toy, monkeypatch):
    """When even the status file cannot be replaced the stage errors out and is never `done`."""
    from cruijff_kit._engine.stage import run_stage

    run_dir = prepare(tmp_path)
    real_replace = os.replace
    calls = {"status": 0}

    def replace(src: str, dst: str, *a: object, **kw: object) -> None:
        if Path(dst).name == "status.json":
            calls["status"] += 1
            if calls["status"] > 1:  # `running` gets written; the disk is full from then on
                raise enospc(dst)
        real_replace(src, dst, *a, **kw)

    with monkeypatch.context() as m, pytest.raises(OSError, match="No space left"):
        m.setattr(os, "replace", replace)
        run_stage(run_dir, "train")
    st = status.read(run_dir)["stages"]["train"]
    assert st["state"] == "running" and st["pid"] == os.getpid()
    # this process lives on here; once it is gone, `ck status` reports the stage interrupted, not done
    from cruijff_kit._base.layout import ExperimentLayout
    from cruijff_kit._engine.runner import experiment_status

    rows = experiment_status(ExperimentLayout(run_dir.parents[1]))
    assert {r["stage"]: r["state"] for r in rows}["train"] != "done"
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def fill(folder: Path) -> None:
    """Write until the file system is full."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_ck_run_on_a_full_file_system_fails_clearly(tmp_path, with_toy, small_tmpfs):
    spec_text = SPEC.replace("experiment: full", f"experiment: full\noutput_dir: {small_tmpfs}")
    spec = write_spec(tmp_path, spec_text)
    dry = subprocess.run([sys.executable, "-m", "cruijff_kit", "run", str(spec), "--dry-run"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    (run_dir,) = (small_tmpfs / "full" / "runs").iterdir()
    fill(small_tmpfs)
    # ck run changes plan.md (a new time) and status: both need space that is not there
    (small_tmpfs / "full" / "plan.md").write_text("")
    res = subprocess.run([sys.executable, "-m", "cruijff_kit", "run", str(spec)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr
    assert "No space left on device" in res.stderr and str(small_tmpfs) in res.stderr
    assert all(e["state"] != "done" for e in status.read(run_dir)["stages"].values())
    assert not (run_dir / "train" / "epoch_0").exists()
    assert not list(small_tmpfs.rglob("*.tmp"))  # no temp files left behind
