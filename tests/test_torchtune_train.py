"""The torchtune trainer for real on CPU: tiny Llama and Qwen2 models, the train stage run in-process.

Each test runs ``ck stage RUN_DIR train`` in this process (``cruijff_kit._engine.stage.run_stage``): the real
dataset plugin, our recipe on torchtune's stock LoRA recipe, PEFT adapters read back with ``peft``.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from torchtune_fixtures import FAST_TRAIN, copy_model, lora_logits_match, write_tt_spec
from trl_fixtures import prepare_run, read_rows

from cruijff_kit import status
from cruijff_kit._base.errors import StageError
from cruijff_kit._engine.stage import Interrupted, run_stage

pytestmark = pytest.mark.integration


def train_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["train_loss"] is not None]


def val_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["val_loss"] is not None]


def test_llama_trains_writes_peft_adapter_that_loads_and_generates(tmp_path: Path, tiny_llama: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = write_tt_spec(tmp_path, tiny_llama, train={**FAST_TRAIN, "eval_steps": 3})
    run_dir = prepare_run(spec)
    run_stage(run_dir, "train")

    assert status.stage_state(run_dir, "train") == status.DONE
    rows = read_rows(run_dir)
    losses = [r["train_loss"] for r in train_rows(rows)]
    assert len(losses) == 8  # 16 rows / batch 4 = 4 steps per epoch, 2 epochs
    assert sum(losses[-3:]) / 3 < sum(losses[:2]) / 2 - 0.2  # the loss falls
    assert [r["epoch"] for r in train_rows(rows)] == [0] * 4 + [1] * 4
    assert [(r["step"], r["epoch"]) for r in val_rows(rows)] == [(3, 0), (4, 0), (6, 1), (8, 1)]
    assert all(set(r) == {"step", "epoch", "train_loss", "val_loss", "learning_rate", "tokens_per_second",
                          "peak_memory_mb"} for r in rows)

    train = run_dir / "train"
    tune_cfg = (train / "torchtune.yaml").read_text()
    assert "lora_llama3" in tune_cfg and "FullModelHFCheckpointer" in tune_cfg
    for epoch in (0, 1):
        files = sorted(p.name for p in (train / f"epoch_{epoch}").rglob("*") if p.is_file())
        assert "adapter_model.safetensors" in files and "adapter_config.json" in files
        assert not [f for f in files if f.startswith(("model", "pytorch_model", "recipe_state", "adapter_model.pt"))]
    assert not (train / "state").exists()  # resume state removed once the stage is done
    adapter = train / "epoch_1" / "adapter"
    acfg = json.loads((adapter / "adapter_config.json").read_text())
    assert acfg["base_model_name_or_path"] == str(tiny_llama)
    assert sorted(acfg["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert (acfg["r"], acfg["lora_alpha"]) == (8, 16.0)
    assert json.loads((adapter / "cruijff_kit.json").read_text())["trainer"] == "torchtune"

    tok = AutoTokenizer.from_pretrained(adapter)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": "Capitalize: dog"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids.shape[1]

    # torchtune's model with the adapter computes what transformers + PEFT compute.
    diff, effect = lora_logits_match(run_dir, 1, torch.randint(0, 700, (2, 24), generator=torch.Generator().manual_seed(0)))
    assert effect > 1e-2 and diff < 1e-4


def test_qwen2_mlp_targets_checkpointing_last_epoch_only(tmp_path: Path, tiny_qwen: Path) -> None:
    import torch

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    spec = write_tt_spec(tmp_path, tiny_qwen, train={**FAST_TRAIN, "save_epochs": "last",
                                                     "gradient_checkpointing": True, "lora": {
        "rank": 4, "alpha": 16, "dropout": 0.0, "targets": targets}})
    run_dir = prepare_run(spec)
    run_stage(run_dir, "train")
    train = run_dir / "train"
    assert not (train / "epoch_0").exists() and (train / "epoch_1" / "adapter" / "adapter_model.safetensors").exists()
    acfg = json.loads((train / "epoch_1" / "adapter" / "adapter_config.json").read_text())
    assert sorted(acfg["target_modules"]) == sorted(targets) and acfg["lora_alpha"] == 16.0
    assert len(val_rows(read_rows(run_dir))) == 2  # validation loss every epoch, saved or not
    diff, effect = lora_logits_match(run_dir, 1, torch.randint(0, 700, (2, 24), generator=torch.Generator().manual_seed(1)))
    assert effect > 1e-2 and diff < 1e-4


def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path: Path, tiny_llama: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from cruijff_kit_torchtune import recipe
    from safetensors.torch import load_file

    train = FAST_TRAIN
    reference = prepare_run(write_tt_spec(tmp_path / "ref", tiny_llama, train=train))
    run_stage(reference, "train")

    run_dir = prepare_run(write_tt_spec(tmp_path / "killed", tiny_llama, train=train))
    original = recipe.CkRecipeMixin.save_checkpoint

    def save_then_die(self, epoch: int) -> None:  # type: ignore[no-untyped-def]
        original(self, epoch)
        if epoch == 0:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, handled by `ck stage` as for a kill

    monkeypatch.setattr(recipe.CkRecipeMixin, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupted):
        run_stage(run_dir, "train")
    monkeypatch.undo()
    assert status.stage_state(run_dir, "train") == status.INTERRUPTED
    assert (run_dir / "train" / "state" / "torchtune_state.pt").exists()
    assert not (run_dir / "train" / "epoch_1").exists()
    with open(run_dir / "train" / "metrics.jsonl", "a") as fh:  # a step of epoch 1 logged before the kill
        fh.write(json.dumps({"step": 5, "epoch": 1, "train_loss": 9.9, "val_loss": None, "learning_rate": 0.0,
                             "tokens_per_second": None, "peak_memory_mb": None}) + "\n")

    run_stage(run_dir, "train")
    assert status.stage_state(run_dir, "train") == status.DONE
    steps = [r["step"] for r in train_rows(read_rows(run_dir))]
    assert steps == list(range(1, 9))  # epoch 0 from the first attempt, epoch 1 resumed; no step twice
    ref_rows, rows = train_rows(read_rows(reference)), train_rows(read_rows(run_dir))
    assert [r["train_loss"] for r in rows] == pytest.approx([r["train_loss"] for r in ref_rows], abs=1e-4)
    for epoch in (0, 1):
        ours = load_file(str(run_dir / "train" / f"epoch_{epoch}" / "adapter" / "adapter_model.safetensors"))
        theirs = load_file(str(reference / "train" / f"epoch_{epoch}" / "adapter" / "adapter_model.safetensors"))
        assert ours.keys() == theirs.keys()
        assert max(float((ours[k] - theirs[k]).abs().max()) for k in ours) < 1e-5


def test_max_steps_stops_early_and_names_unreached_epochs(tmp_path: Path, tiny_llama: Path) -> None:
    run_dir = prepare_run(write_tt_spec(tmp_path / "a", tiny_llama, train={
        **FAST_TRAIN, "max_steps": 3, "save_epochs": [0]}))
    run_stage(run_dir, "train")
    assert [r["step"] for r in train_rows(read_rows(run_dir))] == [1, 2, 3]
    info = json.loads((run_dir / "train" / "epoch_0" / "adapter" / "cruijff_kit.json").read_text())
    assert info["step"] == 3 and not (run_dir / "train" / "epoch_1").exists()

    run_dir = prepare_run(write_tt_spec(tmp_path / "b", tiny_llama, train={**FAST_TRAIN, "max_steps": 3}))
    with pytest.raises(StageError, match=r"stopped at step 3 in epoch 0.*epochs \[1\]"):
        run_stage(run_dir, "train")
    assert status.stage_state(run_dir, "train") == status.FAILED


def test_stage_errors_name_the_fix(tmp_path: Path, tiny_llama: Path) -> None:
    model = copy_model(tiny_llama, tmp_path / "no-weights", skip=("model.safetensors",))
    run_dir = prepare_run(write_tt_spec(tmp_path / "a", model, train=FAST_TRAIN))
    with pytest.raises(StageError, match="holds no model weights"):
        run_stage(run_dir, "train")
    entry = status.read(run_dir)["stages"]["train"]
    assert entry["state"] == status.FAILED and "model.safetensors" in entry["error"]

    run_dir = prepare_run(write_tt_spec(tmp_path / "b", tiny_llama, train={**FAST_TRAIN, "batch_size": 32}))
    with pytest.raises(StageError, match=r"16 usable rows, fewer than one optimizer step takes \(32"):
        run_stage(run_dir, "train")
