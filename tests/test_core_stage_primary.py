"""Which process of a distributed stage keeps the books."""

from __future__ import annotations

import pytest

from cruijff_kit._engine.stage import is_primary_process


@pytest.mark.parametrize(("env", "primary"), [
    ({}, True),
    ({"RANK": "0"}, True),
    ({"RANK": "1"}, False),
    ({"CK_STAGE_CHILD": "1", "RANK": "0"}, False),
    ({"SLURM_PROCID": "0"}, True),
    ({"SLURM_PROCID": "1"}, False),
])
def test_primary_process(monkeypatch, env, primary):
    for key in ("RANK", "CK_STAGE_CHILD", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert is_primary_process() is primary
