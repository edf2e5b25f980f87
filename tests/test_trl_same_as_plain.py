"""The trl trainer trains exactly what a plain TRL script trains: same batches, same losses.

Our stage adds the dataset plugin, metrics rows (written off the training thread), the nan/inf
watch, epoch adapters and resumable state around ``SFTTrainer``; none of it may change a loss. The
plain script below is what a researcher would write with TRL directly for the same rows and options.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trl_fixtures import prepare_run, read_rows, write_trl_spec

from cruijff_kit._engine.stage import run_stage

pytestmark = pytest.mark.integration

TRAIN = {"epochs": 2, "batch_size": 4, "learning_rate": 0.003, "max_seq_length": 64, "logging_steps": 1,
         "lr_scheduler": "linear", "lora": {"rank": 8, "dropout": 0.0}}


def plain_losses(model: Path, data_file: Path, out: Path) -> list[tuple[int, float]]:
    """(step, loss) of every step of SFTTrainer run directly, with the options the spec above means."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    data = json.loads(data_file.read_text())

    def chat(split: str) -> Dataset:
        return Dataset.from_list([{"messages": [{"role": "user", "content": f"Capitalize: {r['input']}"},
                                                {"role": "assistant", "content": r["output"]}]} for r in data[split]])

    args = SFTConfig(output_dir=str(out), seed=7, data_seed=7, num_train_epochs=2, per_device_train_batch_size=4,
                     per_device_eval_batch_size=4, learning_rate=0.003, lr_scheduler_type="linear", max_length=64,
                     assistant_only_loss=True, activation_checkpointing=False, use_cpu=True, bf16=False,
                     eval_strategy="epoch", save_strategy="epoch", logging_steps=1, report_to="none",
                     disable_tqdm=True, dataloader_num_workers=0)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32), args=args,
                         train_dataset=chat("train"), eval_dataset=chat("validation"),
                         processing_class=AutoTokenizer.from_pretrained(model),
                         peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    trainer.train()
    return [(h["step"], round(h["loss"], 6)) for h in trainer.state.log_history if "loss" in h]


def test_losses_equal_a_plain_trl_script(tmp_path: Path, tiny_llama: Path) -> None:
    spec = write_trl_spec(tmp_path / "ours", tiny_llama, train=TRAIN)
    run_dir = prepare_run(spec)
    run_stage(run_dir, "train")
    ours = [(r["step"], r["train_loss"]) for r in read_rows(run_dir) if r["train_loss"] is not None]

    plain = plain_losses(tiny_llama, tmp_path / "ours" / "capitalize.json", tmp_path / "plain")
    assert len(ours) == 16  # 32 rows / batch 4 = 8 steps per epoch, 2 epochs, a row each
    assert ours == plain
