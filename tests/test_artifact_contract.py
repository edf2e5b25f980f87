"""One artifact contract for every trainer: the same spec through `ck run`, only `train.plugin` differs.

Whatever the backend, a finished run folder holds ``train/metrics.jsonl`` rows of the shared schema,
one PEFT adapter folder per saved epoch that loads with ``PeftModel`` on the base model and
generates, no merged weights or optimizer state next to the adapters, and every stage done.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml
from torchtune_fixtures import FAST_TRAIN, write_tt_spec

from cruijff_kit.training._adapters import METRIC_KEYS

pytestmark = pytest.mark.integration

TRAINERS = ["trl", "torchtune"]
#: Files that would mean the trainer left base weights or optimizer/trainer state next to an adapter.
FORBIDDEN = ("model.safetensors", "model-0", "pytorch_model", "optimizer", "scheduler", "rng_state",
             "trainer_state", "recipe_state", "adapter_model.pt", "training_args")


@cache
def registered_trainers() -> frozenset[str]:
    out = subprocess.run([sys.executable, "-m", "cruijff_kit", "plugins", "--json"], capture_output=True,
                         text=True, check=True).stdout
    return frozenset(p["name"] for p in json.loads(out)["plugins"] if p["kind"] == "trainer")


@pytest.mark.parametrize("trainer", TRAINERS)
def test_same_spec_same_artifacts(trainer: str, tmp_path: Path, tiny_llama: Path, ck) -> None:
    if trainer not in registered_trainers():
        pytest.skip(f"trainer plugin `{trainer}` is not installed")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = write_tt_spec(tmp_path, tiny_llama, plugin=trainer, experiment="contract",
                         train={**FAST_TRAIN, "save_epochs": [0, 1]})
    res = ck("run", str(spec), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr

    runs = sorted((tmp_path / "out" / "contract" / "runs").iterdir())
    assert len(runs) == 1
    run = runs[0]
    stages = json.loads((run / "status.json").read_text())["stages"]
    assert stages and all(s["state"] == "done" for s in stages.values()), stages
    assert yaml.safe_load((run / "spec.yaml").read_text())["train"]["plugin"] == trainer

    rows = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(tuple(r) == METRIC_KEYS for r in rows)
    assert any(r["train_loss"] is not None for r in rows)
    assert {r["epoch"] for r in rows if r["val_loss"] is not None} == {0, 1}  # validation loss each epoch
    steps = [r["step"] for r in rows if r["train_loss"] is not None]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Capitalize: dog"}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)["input_ids"]
    for epoch in (0, 1):
        epoch_dir = run / "train" / f"epoch_{epoch}"
        adapter = epoch_dir / "adapter"
        assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
        names = [p.relative_to(epoch_dir).as_posix() for p in epoch_dir.rglob("*") if p.is_file()]
        assert not [n for n in names if Path(n).name.startswith(FORBIDDEN)], names
        cfg = json.loads((adapter / "adapter_config.json").read_text())
        assert cfg["peft_type"] == "LORA" and cfg["base_model_name_or_path"] == str(tiny_llama)
        assert sorted(cfg["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
        base = AutoModelForCausalLM.from_pretrained(cfg["base_model_name_or_path"], dtype=torch.float32)
        model = PeftModel.from_pretrained(base, str(adapter)).eval()
        out = model.generate(prompt, max_new_tokens=3, do_sample=False)
        assert out.shape[1] > prompt.shape[1]
