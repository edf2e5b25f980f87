"""What a train stage does around the training loop, kept cheap: ``env.json``'s package versions read
from the few distributions that matter, and metrics rows written off the training thread."""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from cruijff_kit._engine import envinfo
from cruijff_kit.training import MetricsRow, MetricsWriter


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_package_versions_are_those_importlib_metadata_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    # Expected: every installed distribution, walked with importlib.metadata itself (first on sys.path wins).
    expected: dict[str, str] = {}
    seen: set[str] = set()
    for dist in md.distributions():
        name = dist.metadata["Name"] or ""
        if _norm(name) in seen or not (_norm(name) in envinfo.PACKAGES or _norm(name).startswith("cruijff-kit")):
            continue
        seen.add(_norm(name))
        expected[name] = dist.version
    assert {"torch", "trl", "cruijff-kit-trl", "cruijff-kit-torchtune"} <= {_norm(n) for n in expected}

    reads: list[str] = []
    real = md.PathDistribution.read_text

    def counted(self: md.PathDistribution, filename: str) -> str | None:
        if filename in ("METADATA", "PKG-INFO"):
            reads.append(filename)
        return real(self, filename)

    monkeypatch.setattr(md.PathDistribution, "read_text", counted)
    envinfo.package_versions.cache_clear()
    try:
        found = envinfo.package_versions()
    finally:
        envinfo.package_versions.cache_clear()
    assert found == dict(sorted(expected.items()))
    # only the metadata of the distributions recorded (and of a duplicate or two) is read, not all installed
    assert len(reads) <= 3 * len(found) < len(list(md.distributions()))


class SlowContext:
    """A stage context whose ``log_metrics`` waits until the test lets it go (a slow disk or tracker)."""

    def __init__(self, path: Path, fail_at: int | None = None) -> None:
        self.path, self.fail_at = path, fail_at
        self.release = threading.Event()
        self.threads: set[str] = set()

    def log_metrics(self, step: int, **values: Any) -> None:
        self.release.wait(10)
        self.threads.add(threading.current_thread().name)
        if step == self.fail_at:
            raise OSError(28, "No space left on device")
        with self.path.open("a") as fh:
            fh.write(json.dumps({"step": step, **values}) + "\n")


def test_metrics_writer_logs_rows_in_order_off_the_calling_thread(tmp_path: Path) -> None:
    ctx = SlowContext(tmp_path / "metrics.jsonl")
    writer = MetricsWriter(ctx)
    for step in range(1, 6):
        writer.log(MetricsRow(step=step, epoch=0, train_loss=1.0 / step))  # returns while the disk is "slow"
    assert not ctx.path.exists()
    ctx.release.set()
    writer.flush()
    rows = [json.loads(line) for line in ctx.path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[2]["train_loss"] == pytest.approx(1 / 3) and set(rows[0]) == {
        "step", "epoch", "train_loss", "val_loss", "learning_rate", "tokens_per_second", "peak_memory_mb"}
    assert threading.current_thread().name not in ctx.threads
    writer.log(MetricsRow(step=6, val_loss=0.5))
    writer.close()
    assert json.loads(ctx.path.read_text().splitlines()[-1])["val_loss"] == 0.5


def test_metrics_writer_raises_a_failed_row_in_the_training_thread(tmp_path: Path) -> None:
    ctx = SlowContext(tmp_path / "metrics.jsonl", fail_at=2)
    ctx.release.set()
    writer = MetricsWriter(ctx)
    for step in (1, 2, 3):
        writer.log(MetricsRow(step=step, train_loss=1.0))
    with pytest.raises(OSError, match="No space left"):
        writer.flush()
    writer.close()  # the error was reported once; the thread ends
    assert [json.loads(line)["step"] for line in ctx.path.read_text().splitlines()] == [1]
