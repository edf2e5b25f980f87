"""The trl trainer trains a tiny model for real through `ck stage`, and its adapters reload with peft.

One LoRA run (module fixture, in this process) is shared by most tests; a short QLoRA run checks
4-bit quantization on CPU; a run killed twice (SIGKILL) and resumed with `ck stage` ends with the
weights of an uninterrupted one.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kill_fixtures import KILL_AFTER
from trl_fixtures import learnable_tiny_model, prepare_run, read_rows, write_trl_spec

from cruijff_kit import status
from cruijff_kit._engine.stage import run_stage
from cruijff_kit.training import _adapters as training

pytestmark = pytest.mark.integration

EPOCHS = 3
TRAIN = {"epochs": EPOCHS, "learning_rate": 2e-2, "batch_size": 8, "logging_steps": 2,
         "lora": {"rank": 8, "dropout": 0.0}, "save_epochs": "all"}


@pytest.fixture(scope="module")
def model_dir(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return learnable_tiny_model(tiny_llama, tmp_path_factory.mktemp("learnable") / "tiny-llama")


@pytest.fixture(scope="module")
def trained(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-epoch LoRA run on the capitalization task."""
    spec = write_trl_spec(tmp_path_factory.mktemp("trl-lora"), model_dir, train=TRAIN)
    run_dir = prepare_run(spec)
    run_stage(run_dir, "train")
    return run_dir


def test_stage_is_done_and_state_removed(trained: Path) -> None:
    assert status.stage_state(trained, "train") == status.DONE
    assert not (trained / "train" / "state").exists()  # removed after success (keep_state is false)


def test_loss_falls(trained: Path) -> None:
    rows = read_rows(trained)
    train = [r["train_loss"] for r in rows if r["train_loss"] is not None]
    val = [r["val_loss"] for r in rows if r["val_loss"] is not None]
    assert len(val) == EPOCHS  # validation loss once per epoch
    assert train[-1] < 0.75 * train[0], train
    assert val[-1] < val[0] and val[-1] < 0.6 * train[0], (train, val)  # far below the untrained loss


def test_metrics_rows(trained: Path) -> None:
    rows = read_rows(trained)
    assert all(list(r) == list(training.METRIC_KEYS) for r in rows)
    train_rows = [r for r in rows if r["train_loss"] is not None]
    steps = [r["step"] for r in train_rows]
    assert steps == sorted(set(steps)) and steps[0] == 1 and steps[-1] == 4 * EPOCHS  # 32 rows / 8 per step
    assert [r["epoch"] for r in rows if r["val_loss"] is not None] == list(range(EPOCHS))
    assert all(r["learning_rate"] > 0 and r["peak_memory_mb"] > 0 for r in train_rows)
    assert all(r["tokens_per_second"] and r["tokens_per_second"] > 0 for r in train_rows)


def test_adapter_layout(trained: Path) -> None:
    for epoch in range(EPOCHS):
        adapter = trained / "train" / f"epoch_{epoch}" / "adapter"
        names = {p.name for p in adapter.iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json",
                "tokenizer.json", training.ADAPTER_INFO} <= names
        assert not any(n.startswith("model") for n in names)  # never a copy of the base weights
        assert (adapter / "adapter_model.safetensors").stat().st_size < 200_000
    assert sorted(p.name for p in (trained / "train").iterdir()) == [
        "epoch_0", "epoch_1", "epoch_2", "metrics.jsonl"]


def test_adapter_names_local_base_and_export_names_hub_id(trained: Path, model_dir: Path, tmp_path: Path) -> None:
    adapter = trained / "train" / "epoch_2" / "adapter"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(model_dir)
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16 and set(cfg["target_modules"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj"}
    info = training.adapter_info(adapter)
    assert info["base_model"] == str(model_dir) and info["base_model_path"] == str(model_dir)
    assert info["epoch"] == 2 and info["step"] == 12 and info["world_size"] == 1
    shared = training.export_adapter(adapter, tmp_path / "share", base_model="my-org/tiny-llama")
    assert json.loads((shared / "adapter_config.json").read_text())["base_model_name_or_path"] == "my-org/tiny-llama"
    res = subprocess.run([sys.executable, "-m", "cruijff_kit", "export", str(adapter), str(tmp_path / "cli")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    cfg = json.loads((tmp_path / "cli" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(model_dir)  # the name the spec gave (here a folder)
    assert (tmp_path / "cli" / "adapter_model.safetensors").read_bytes() == (
        adapter / "adapter_model.safetensors").read_bytes()


def _generate(model: Any, tok: Any, word: str) -> tuple[str, Any]:
    import torch

    prompt = tok.apply_chat_template([{"role": "user", "content": f"Capitalize: {word}"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=6, do_sample=False)
        logits = model(**prompt).logits[0, -1]
    return tok.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True), logits


def test_reload_base_plus_adapter_and_generate(trained: Path, model_dir: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = trained / "train" / "epoch_2" / "adapter"
    tok = AutoTokenizer.from_pretrained(adapter)  # tokenizer files travel with the adapter
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    _, base_logits = _generate(base, tok, "the")
    tuned = PeftModel.from_pretrained(base, adapter)  # base named by adapter_config.json loads offline
    text, tuned_logits = _generate(tuned, tok, "the")
    assert isinstance(text, str)
    assert not torch.allclose(base_logits, tuned_logits)  # the adapter changes the model
    # The trained model ranks the first token of the right answer higher than the base model does.
    first = tok("THE", add_special_tokens=False)["input_ids"][0]
    rank = lambda lg: int((lg > lg[first]).sum())  # noqa: E731
    assert rank(tuned_logits) < rank(base_logits)


def test_estimate_matches_torch_parameter_count(trained: Path, model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from cruijff_kit.training._estimate import model_shape

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    shape = model_shape(model_dir)
    assert shape is not None and shape.parameters() == sum(p.numel() for p in model.parameters())
    tensors = __import__("safetensors.torch", fromlist=["load_file"]).load_file(
        str(trained / "train" / "epoch_0" / "adapter" / "adapter_model.safetensors"))
    assert sum(t.numel() for t in tensors.values()) == shape.lora_parameters(
        ["q_proj", "k_proj", "v_proj", "o_proj"], 8)


def test_qlora_quantizes_and_trains_on_cpu(model_dir: Path, tmp_path: Path) -> None:
    from bitsandbytes.nn import Linear4bit
    from cruijff_kit_trl.config import TrlConfig
    from cruijff_kit_trl.sft import load_model

    options = {"method": "qlora", "epochs": 1, "batch_size": 8, "learning_rate": 2e-2, "save_epochs": "last",
               "validation": False, "logging_steps": 1, "max_steps": 3}  # stops inside epoch 0 (4 steps)
    cfg = TrlConfig(**options)
    model = load_model(str(model_dir), cfg, "fp32", "cpu")
    quantized = [n for n, m in model.named_modules() if isinstance(m, Linear4bit)]
    assert len(quantized) == 2 * 7  # every linear layer of both decoder layers is 4-bit
    assert model.model.layers[0].self_attn.q_proj.weight.quant_state.quant_type == "nf4"

    spec = write_trl_spec(tmp_path, model_dir, train=options)
    run_dir = prepare_run(spec)
    run_stage(run_dir, "train")
    adapter = run_dir / "train" / "epoch_0" / "adapter"
    info = training.adapter_info(adapter)
    assert info["method"] == "qlora" and info["step"] == 3  # saved where max_steps stopped
    losses = [r["train_loss"] for r in read_rows(run_dir) if r["train_loss"] is not None]
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_loss_masking_modes_and_chat_template(tiny_llama: Path, tmp_path: Path) -> None:
    from cruijff_kit_trl.config import TrlConfig
    from cruijff_kit_trl.plugin import TrlTrainer
    from cruijff_kit_trl.sft import load_tokenizer, prepare_data
    from datasets import Dataset, DatasetDict

    from cruijff_kit._base.errors import DataError

    chat = [{"messages": [{"role": "user", "content": "apple"}, {"role": "assistant", "content": "APPLE"}]}]
    data = DatasetDict({"train": Dataset.from_list(chat), "validation": Dataset.from_list(chat)})
    tok = load_tokenizer(str(tiny_llama), None)  # its template marks assistant turns with {% generation %}
    assert prepare_data(data, tok, TrlConfig())[2] == "assistant"
    assert prepare_data(data, tok, TrlConfig(assistant_only_loss=False))[2] == "all"

    plain = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    (tmp_path / "plain.jinja").write_text(plain)
    trainer = TrlTrainer(TrlConfig(chat_template="plain.jinja"), base_dir=tmp_path)
    assert trainer.chat_template() == plain  # a .jinja path is read relative to the spec
    tok = load_tokenizer(str(tiny_llama), trainer.chat_template())
    train, val, mode = prepare_data(data, tok, TrlConfig())
    assert mode == "completion"  # TRL cannot patch this template: loss on the last assistant turn
    assert train[0] == {"prompt": [{"role": "user", "content": "apple"}],
                        "completion": [{"role": "assistant", "content": "APPLE"}]}
    with pytest.raises(DataError, match="no `messages` column"):
        prepare_data(DatasetDict({"train": Dataset.from_list([{"text": "x"}])}), tok, TrlConfig(validation=False))


def _ck_stage_killed(run_dir: Path, module: str, attr: str, after: int) -> None:
    """`ck stage RUN_DIR train` in a subprocess that SIGKILLs itself after the ``after``-th call of ``attr``."""
    res = subprocess.run([sys.executable, "-c", KILL_AFTER, module, attr, str(after), "stage", str(run_dir), "train"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stdout + res.stderr[-3000:]


def test_resume_after_kills_matches_an_uninterrupted_run(model_dir: Path, tmp_path: Path) -> None:
    """Two real trainings killed with SIGKILL, then resumed with `ck stage`: the same weights as one run.

    The first dies right after the epoch-0 state save, before that epoch's adapter is written (the
    resume writes it from the checkpoint); the second dies in epoch 1 after logging steps 5 and 6,
    which the resume must not report twice.
    """
    import torch
    from safetensors.torch import load_file

    train = {**TRAIN, "epochs": 2, "validation": False, "logging_steps": 1}  # 4 steps per epoch
    reference = prepare_run(write_trl_spec(tmp_path / "ref", model_dir, train=train))
    run_stage(reference, "train")
    run_dir = prepare_run(write_trl_spec(tmp_path / "killed", model_dir, train=train))
    adapter = run_dir / "train" / "epoch_0" / "adapter"

    _ck_stage_killed(run_dir, "transformers", "Trainer._save_checkpoint", 1)
    assert (run_dir / "train" / "state" / "checkpoint-4" / "trainer_state.json").exists()
    assert not adapter.exists()
    assert [r["step"] for r in read_rows(run_dir)] == [1, 2, 3, 4]

    # killed on the writer's thread right after row 6 is on disk (rows are written off the training thread)
    _ck_stage_killed(run_dir, "cruijff_kit.training._adapters", "MetricsRow.log", 2)
    assert training.adapter_info(adapter)["step"] == 4  # written on resume, from the saved state
    assert [r["step"] for r in read_rows(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert not (run_dir / "train" / "state" / "checkpoint-8").exists()

    res = subprocess.run([sys.executable, "-m", "cruijff_kit", "stage", str(run_dir), "train"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    entry = status.read(run_dir)["stages"]["train"]
    assert entry["state"] == status.DONE and entry["attempts"] == 3
    rows, ref_rows = read_rows(run_dir), read_rows(reference)
    assert [r["step"] for r in rows] == list(range(1, 9))  # no step twice, none lost
    assert "resuming from checkpoint-4 (step 4); dropped 2 metrics rows" in res.stderr
    for epoch in (0, 1):
        ours = load_file(str(run_dir / "train" / f"epoch_{epoch}" / "adapter" / "adapter_model.safetensors"))
        theirs = load_file(str(reference / "train" / f"epoch_{epoch}" / "adapter" / "adapter_model.safetensors"))
        assert ours.keys() == theirs.keys()
        assert all(torch.allclose(ours[k], theirs[k], rtol=0, atol=1e-6) for k in ours), epoch
    assert [r["train_loss"] for r in rows] == pytest.approx([r["train_loss"] for r in ref_rows], abs=1e-5)
