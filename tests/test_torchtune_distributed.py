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


def test_saving_gathers_only_the_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    """At each saved epoch only the LoRA parameters are gathered (each once, every rank in the same
    order), not the whole base model parameter by parameter; what comes back is each LoRA weight whole."""
    import importlib

    import torch
    from cruijff_kit_torchtune import recipe

    # after the recipe module, which makes torchtune importable with the pinned torchao
    LoRALinear = importlib.import_module("torchtune.modules.peft").LoRALinear  # noqa: N806

    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"q": LoRALinear(8, 8, rank=2, alpha=4), "k": LoRALinear(8, 8, rank=2, alpha=4),
                                 "mlp": torch.nn.Linear(8, 32), "norm": torch.nn.LayerNorm(8)})
    gathered: list[int] = []
    real = recipe.full_tensor
    monkeypatch.setattr(recipe, "full_tensor", lambda p, d: gathered.append(p.numel()) or real(p, d))
    state = recipe.gather_adapter_state(model, True, None)
    expected = {f"{m}.lora_{ab}.weight" for m in ("q", "k") for ab in ("a", "b")}
    assert set(state) == expected
    # 4 LoRA matrices of 2x8 / 8x2 = 16 elements each; the base (8x8 weights, 8x32 MLP, norm) never gathered
    assert gathered == [16, 16, 16, 16]
    for name in expected:
        module, part = name.split(".", 1)
        assert torch.equal(state[name], model[module].state_dict()[part]) and state[name].device.type == "cpu"
    assert recipe.gather_adapter_state(model, False, None) == {}  # other ranks keep nothing
