"""Quiet logs on a real library: a tiny trl train stage run by `ck run` leaves no known third-party
noise in its logs; what it hid is in its side file, counted right."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from trl_fixtures import write_capitalize_data, write_trl_spec

from cruijff_kit._base import noise

pytestmark = pytest.mark.integration


def test_a_real_trl_stage_log_holds_no_line_of_the_noise_list(tiny_llama: Path, tmp_path: Path, ck) -> None:
    data = {"plugin": "json-instruct", "path": str(write_capitalize_data(tmp_path, n_train=8))}
    train = {"epochs": 1, "batch_size": 4, "logging_steps": 1, "validation": False}
    spec = write_trl_spec(tmp_path, tiny_llama, train=train, data=data, experiment="quiet-trl")
    res = ck("run", str(spec))
    assert res.returncode == 0, res.stdout + res.stderr
    (run,) = (tmp_path / "out" / "quiet-trl" / "runs").iterdir()
    logs = run / "logs"
    err = (logs / "train.err").read_text()
    assert "[trl] step=" in err, err  # the trainer's own lines are there
    for stream in ("out", "err"):
        for line in (logs / f"train.{stream}").read_text().splitlines():
            assert noise.match(line) is None, f"train.{stream}: {line}"
    for line in (res.stdout + res.stderr).splitlines():  # what `ck run` printed
        assert noise.match(line) is None, line
    side = logs / "train.noise.log"
    counted = re.findall(r"^ck: hid (\d+) known third-party messages? \(full text: (.+)\)$", err, re.M)
    if not side.exists():  # this machine's libraries printed none of the list
        assert counted == [], err
        return
    assert counted == [(str(noise.count_records(side)), str(side))], err
    records = side.read_text().split(noise.RECORD_START)[1:]
    for record in records:  # each is a whole message of the list
        head, first = record.split("\n", 2)[:2]
        assert noise.match(first) is not None and head.split(" ", 1)[0] == noise.match(first).name, record
