"""The torchtune trainer trains exactly what torchtune's stock LoRA recipe trains on the same config.

Our recipe adds metrics rows (written off the training thread), a validation pass, PEFT adapters and
resume state around the stock training loop; none of it may change a loss. The stock recipe runs on
the ``train/torchtune.yaml`` our run wrote, with a metric logger that records its losses. Also: the
truncation count and the recipe's dataset share one tokenization of each conversation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from torchtune_fixtures import FAST_TRAIN, RecordingLogger, write_tt_spec
from trl_fixtures import prepare_run, read_rows

from cruijff_kit._engine.stage import run_stage

pytestmark = pytest.mark.integration


def test_losses_equal_the_stock_recipe_on_the_same_config(tmp_path: Path, tiny_llama: Path) -> None:
    from cruijff_kit_torchtune.compat import stock_recipe_module
    from omegaconf import OmegaConf

    spec = write_tt_spec(tmp_path, tiny_llama, train={**FAST_TRAIN, "eval_steps": 3})
    run_dir = prepare_run(spec)
    run_stage(run_dir, "train")
    ours = [(r["step"], r["train_loss"]) for r in read_rows(run_dir) if r["train_loss"] is not None]

    cfg = OmegaConf.load(run_dir / "train" / "torchtune.yaml")
    cfg.output_dir = cfg.checkpointer.output_dir = str(tmp_path / "stock")
    cfg.metric_logger = {"_component_": "torchtune_fixtures.RecordingLogger"}
    RecordingLogger.clear()
    recipe = stock_recipe_module("lora_finetune_single_device").LoRAFinetuneRecipeSingleDevice(cfg=cfg)
    recipe.setup(cfg=cfg)
    recipe.train()
    recipe.cleanup()
    stock = [(step, round(p["loss"], 6)) for step, p in RecordingLogger.logged if "loss" in p]

    assert len(ours) == 8  # 16 rows / batch 4 = 4 steps per epoch, 2 epochs, a row each
    assert ours == stock


def test_each_conversation_is_tokenized_once_per_stage(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cruijff_kit_torchtune import tokenizer as tok
    from cruijff_kit_torchtune.data import TokenizedChatDataset

    def chat(word: str) -> list[dict[str, Any]]:
        return [{"role": "user", "content": f"Capitalize: {word}"}, {"role": "assistant", "content": word.upper()}]

    rows = [chat(w) for w in ("apple", "pear", "apple", "fig", "apple", "pear")]  # repeated rows too
    expected = TokenizedChatDataset(tok.HFChatTokenizer(str(tiny_llama), max_seq_len=17), rows, "train").items
    masks = [tok.HFChatTokenizer(str(tiny_llama)).target_mask(r) for r in rows]

    calls: list[int] = []
    real = tok.HFChatTokenizer.tokens_and_mask

    def counted(self: Any, messages: list[dict[str, Any]]) -> Any:
        calls.append(1)
        return real(self, messages)

    monkeypatch.setattr(tok.HFChatTokenizer, "tokens_and_mask", counted)
    with tok.shared_tokenization():
        masker = tok.HFChatTokenizer(str(tiny_llama)).target_mask  # as the truncation count uses it
        assert [masker(r) for r in rows] == masks
        counted_then = len(calls)
        items = TokenizedChatDataset(tok.HFChatTokenizer(str(tiny_llama), max_seq_len=17), rows, "train").items
        assert tok._TOKENIZED == {}  # every remembered conversation was taken
    assert counted_then == 3 and len(calls) == 3  # each distinct row once; the dataset tokenized nothing again
    assert items == expected  # the same tokens and labels (cut at max_seq_len) as without sharing
    assert any(len(i["tokens"]) == 17 for i in items)  # the cut applies to remembered rows
