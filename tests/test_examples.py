"""Every example spec under examples/ is accepted by `ck validate` (with the demo data in place)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.yaml"))
#: The shape of SmolLM2-135M-Instruct (its config.json on the hub).
SMOLLM2_CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 49152,
                  "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                  "intermediate_size": 1536, "tie_word_embeddings": True}



@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of examples/ with the demo data beside it, as `make demo` leaves it."""
    from cruijff_kit._datatools.capitalize import write_capitalize

    root = tmp_path_factory.mktemp("examples-tree")
    shutil.copytree(ROOT / "examples", root / "examples")
    shutil.copytree(ROOT / "tests" / "data" / "census", root / "tests" / "data" / "census")  # tabular example
    write_capitalize(root / ".cache" / "data" / "capitalize.json")
    # the model folder the examples name (`ck validate` refuses a local model path that does not exist):
    # SmolLM2-135M-Instruct's config.json, all that validating reads of it
    model = root / ".cache" / "models" / "smollm2-135m-instruct"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    return root


def test_there_are_examples():
    assert {"demo.yaml", "llama-3.2-1b-lora.yaml", "llama-3.2-1b-slurm.yaml", "qlora-runpod.yaml",
            "simulate-sft-dpo.yaml", "tabular-classifier.yaml"} <= set(EXAMPLES)


# qlora-runpod.yaml also needs a RunPod profile with a bucket: tests/test_runpod_limits.py validates it
@pytest.mark.parametrize("name", [n for n in EXAMPLES if n != "qlora-runpod.yaml"])
def test_example_validates(tree, ck, name):
    res = ck("validate", str(tree / "examples" / name), cwd=tree)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in res.stdout


def test_gpu_example_sweeps_both_trainers(tree, ck):
    res = ck("plan", str(tree / "examples" / "llama-3.2-1b-lora.yaml"), "--no-write", cwd=tree, check=True)
    assert "torchtune" in res.stdout and "trl" in res.stdout
