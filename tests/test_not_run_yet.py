"""Commands that read an experiment, given a spec that has not been run: one clear error (exit 2) that
says to run it, no empty table with "damaged" warnings, and no folder or summary written for it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_spec

SPEC = """
experiment: never
output_dir: out
model: {path: some-org/some-model}
dataset: {plugin: toy-data}
train: {plugin: toy, epochs: 1, steps_per_epoch: 2}
eval: []
"""


@pytest.mark.parametrize("command", [["status"], ["summarize"], ["report"], ["cancel"]])
def test_a_spec_not_run_yet_is_named_as_such(tmp_path: Path, with_toy: Path, ck, command: list[str]) -> None:
    spec = write_spec(tmp_path, SPEC)
    res = ck(*command, str(spec))
    assert res.returncode == 2, res.stdout + res.stderr
    err = " ".join(res.stderr.split())
    assert "has not been run yet" in err and f"`ck run {spec}`" in err, err
    assert "damaged" not in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()  # nothing written for an experiment that does not exist


def test_after_a_dry_run_status_lists_the_pending_stages(tmp_path: Path, with_toy: Path, ck) -> None:
    spec = write_spec(tmp_path, SPEC)
    assert ck("run", str(spec), "--dry-run").returncode == 0
    res = ck("status", str(spec), "--json")
    assert res.returncode == 0, res.stderr
    assert '"stage": "train"' in res.stdout and '"pending"' in res.stdout
