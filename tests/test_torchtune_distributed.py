"""torchtune's distributed LoRA recipe for real: two CPU processes over gloo under torchrun.

``resources.processes: 2`` makes the train stage relaunch itself under torchrun; each worker runs our
recipe on ``LoRAFinetuneRecipeDistributed`` (FSDP over a CPU mesh), rank 0 writes the adapters.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torchtune_fixtures import FAST_TRAIN, write_tt_spec
from trl_fixtures import prepare_run, read_rows

from cruijff_kit import status
from cruijff_kit._engine.stage import run_stage

pytestmark = pytest.mark.integration


def test_two_ranks_over_gloo_write_each_adapter_once(tmp_path: Path, tiny_llama: Path,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    run_dir = prepare_run(write_tt_spec(tmp_path, tiny_llama, train=FAST_TRAIN, resources={"processes": 2}))
    run_stage(run_dir, "train")
    out = capfd.readouterr()
    log = out.out + out.err

    assert status.stage_state(run_dir, "train") == status.DONE
    for rank in (0, 1):
        assert f"rank {rank}/2 recipe=CkLoRARecipeDistributed backend=gloo" in log
    rows = read_rows(run_dir)
    # 16 rows, 2 ranks x batch 4 = 8 rows per optimizer step: 2 steps per epoch instead of 4.
    assert [r["step"] for r in rows if r["train_loss"] is not None] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if r["val_loss"] is not None] == [2, 4]
    train = run_dir / "train"
    for epoch in (0, 1):
        assert log.count(f"epoch {epoch}: adapter written") == 1
        info = json.loads((train / f"epoch_{epoch}" / "adapter" / "cruijff_kit.json").read_text())
        assert info["world_size"] == 2 and info["step"] == 2 * (epoch + 1)
        assert sorted(p.name for p in (train / f"epoch_{epoch}").iterdir()) == ["adapter"]
    assert not [p for p in train.rglob("*") if ".tmp-" in p.name]
