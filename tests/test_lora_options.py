"""``train.lora``: ``targets: all-linear``, ``modules_to_save``, ``use_rslora`` and ``use_dora``.

trl passes them to PEFT; torchtune maps all-linear to its attention and MLP switches, trains DoRA and
exports the magnitudes in PEFT's layout, and refuses what its LoRA recipes cannot train. The saved
adapters load with PEFT and through the inference API with the logits of the trained model.
"""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from trl_fixtures import plan_spec, prepare_run, write_trl_spec

from cruijff_kit import SpecError
from cruijff_kit._api.kinds import LoraOptions

ALL_LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def _tokens(seed: int) -> Any:
    import torch

    return torch.randint(0, 700, (2, 24), generator=torch.Generator().manual_seed(seed))


def _inference_logits(run_dir: Path, epoch: int, tokens: Any) -> Any:
    import torch

    from cruijff_kit.inference import load

    m = load(run_dir, epoch=epoch, device="cpu", dtype="float32", progress=False)
    with torch.no_grad():
        return m.model(input_ids=tokens).logits


# --------------------------------------------------------------------------- options and plan time
def test_options_validate() -> None:
    lo = LoraOptions.model_validate({"targets": "all-linear", "use_dora": True, "modules_to_save": ["lm_head"]})
    assert lo.all_linear and lo.use_dora and not lo.use_rslora
    with pytest.raises(ValueError, match="all-linear"):
        LoraOptions.model_validate({"targets": "all_linear"})
    with pytest.raises(ValueError):
        LoraOptions.model_validate({"modules_to_save": []})


def test_all_linear_estimate_counts_every_linear_layer(tmp_path: Path, tiny_llama: Path) -> None:
    def trainable(targets: Any) -> int:
        spec = write_trl_spec(tmp_path / str(len(targets)), tiny_llama, train={"lora": {"targets": targets}})
        return plan_spec(spec, estimate=True).runs[0].estimate.trainable_parameters  # type: ignore[no-any-return]

    assert trainable("all-linear") == trainable(ALL_LINEAR) > trainable(["q_proj", "v_proj"])


def test_torchtune_maps_all_linear_and_refuses_what_it_cannot_train(tmp_path: Path, tiny_llama: Path) -> None:
    from cruijff_kit_torchtune.families import map_targets
    from torchtune_fixtures import write_tt_spec

    t = map_targets("all-linear")
    assert (t.attn, t.mlp, t.output) == (["q_proj", "k_proj", "v_proj", "output_proj"], True, False)
    assert sorted(t.hf_names()) == ALL_LINEAR
    assert map_targets("all-linear", apply_lora_to_output=True).output
    with pytest.raises(SpecError, match="apply_lora_to_mlp: false"):
        map_targets("all-linear", apply_lora_to_mlp=False)
    for lora, path, reason in [({"use_rslora": True}, "train.lora.use_rslora", "alpha / rank"),
                               ({"modules_to_save": ["lm_head"]}, "train.lora.modules_to_save", "adapter's parameters only")]:
        spec = write_tt_spec(tmp_path / path, tiny_llama, train={"epochs": 1, "lora": lora})
        with pytest.raises(SpecError) as err:
            plan_spec(spec)
        assert err.value.path == path and reason in str(err.value) and "plugin: trl" in str(err.value)
        assert str(spec) in str(err.value)


NO_VLLM = pytest.mark.skipif(importlib.util.find_spec("vllm") is not None,
                             reason="vllm is installed here: the spec would pass the vllm package check")


@NO_VLLM
def test_vllm_plan_refuses_trained_modules_to_save_and_serves_all_linear(ck: Any, tmp_path: Path,
                                                                         tiny_llama: Path) -> None:
    pytest.importorskip("inspect_ai")
    (tmp_path / "data.json").write_text(json.dumps({"train": [{"input": "a", "output": "A"}] * 4,
                                                    "validation": [{"input": "c", "output": "C"}] * 2,
                                                    "test": [{"input": "b", "output": "B"}] * 2}))

    def validate(lora: str) -> str:
        (tmp_path / "spec.yaml").write_text(textwrap.dedent(f"""
            experiment: vllm
            model: {{path: {tiny_llama}}}
            dataset: {{plugin: json-instruct, path: data.json}}
            train: {{plugin: trl, epochs: 1, lora: {lora}}}
            eval:
              - {{plugin: inspect, task: includes, backend: vllm}}
        """).lstrip())
        res = ck("validate", "spec.yaml", cwd=tmp_path)
        return " ".join((res.stdout + res.stderr).split())

    out = validate("{modules_to_save: [lm_head]}")
    assert "modules_to_save ['lm_head']" in out and "merge_adapter: disk" in out, out
    out = validate("{targets: all-linear}")  # past the adapter check: only the missing vllm package remains
    assert "cannot serve" not in out and "needs the vllm package" in out, out


# --------------------------------------------------------------------------- trl, real training
@pytest.mark.integration
def test_trl_dora_rslora_all_linear_modules_to_save_reload_with_the_trained_logits(tmp_path: Path,
                                                                                  tiny_llama: Path) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from cruijff_kit._engine.stage import run_stage

    lora = {"rank": 4, "dropout": 0.0, "targets": "all-linear", "use_dora": True, "use_rslora": True,
            "modules_to_save": ["lm_head"]}
    spec = write_trl_spec(tmp_path, tiny_llama, train={"epochs": 1, "batch_size": 8, "learning_rate": 1e-2,
                                                       "keep_state": True, "validation": False, "lora": lora})
    run_dir = prepare_run(spec)
    run_stage(run_dir, "train")
    adapter = run_dir / "train" / "epoch_0" / "adapter"
    acfg = json.loads((adapter / "adapter_config.json").read_text())
    assert (acfg["use_dora"], acfg["use_rslora"]) == (True, True)
    assert sorted({m.rsplit(".", 1)[-1] for m in acfg["target_modules"]}) == ALL_LINEAR  # PEFT lists them in full
    assert "lm_head" in acfg["modules_to_save"]
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    assert any(k.endswith("lora_magnitude_vector") for k in saved)
    assert any("lm_head" in k and "lora" not in k for k in saved)  # the fully trained head is in the adapter

    # The trainer's own checkpoint of the same step is the trained model; the epoch adapter, loaded by PEFT
    # and by the inference API, gives its logits.
    (ckpt,) = sorted((run_dir / "train" / "state").glob("checkpoint-*"))
    tokens = _tokens(0)
    with torch.no_grad():
        trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32),
                                            str(ckpt)).eval()
        want = trained(input_ids=tokens).logits
        with trained.disable_adapter():
            plain = trained(input_ids=tokens).logits
        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32),
                                             str(adapter)).eval()
        got = reloaded(input_ids=tokens).logits
    assert float((want - plain).abs().max()) > 1e-2  # the adapter changes the model
    assert float((got - want).abs().max()) < 1e-5
    assert float((_inference_logits(run_dir, 0, tokens) - want).abs().max()) < 1e-5


# --------------------------------------------------------------------------- torchtune, real training
@pytest.mark.integration
def test_torchtune_dora_all_linear_adapter_reloads_with_the_trained_logits(tmp_path: Path, tiny_llama: Path) -> None:
    import torch
    from cruijff_kit_torchtune.compat import import_torchtune
    from omegaconf import OmegaConf
    from peft import PeftModel
    from safetensors.torch import load_file
    from torchtune_fixtures import write_tt_spec
    from transformers import AutoModelForCausalLM

    from cruijff_kit._engine.stage import run_stage

    spec = write_tt_spec(tmp_path, tiny_llama, train={
        "epochs": 1, "batch_size": 4, "learning_rate": 1e-2, "max_seq_length": 64, "keep_state": True,
        "lora": {"rank": 4, "dropout": 0.0, "targets": "all-linear", "use_dora": True}})
    run_dir = prepare_run(spec)
    run_stage(run_dir, "train")
    cfg = OmegaConf.load(run_dir / "train" / "torchtune.yaml")
    assert cfg.model.use_dora is True and cfg.model.apply_lora_to_mlp is True
    assert cfg.model.apply_lora_to_output is False
    adapter = run_dir / "train" / "epoch_0" / "adapter"
    acfg = json.loads((adapter / "adapter_config.json").read_text())
    assert acfg["use_dora"] is True and sorted(acfg["target_modules"]) == ALL_LINEAR
    peft_sd = load_file(str(adapter / "adapter_model.safetensors"))
    assert sum(k.endswith("lora_magnitude_vector") for k in peft_sd) == 7 * int(cfg.model.num_layers)

    # torchtune's own model with the trained weights: the adapter state the recipe kept (keep_state), in
    # torchtune's names and layout, never through the export
    import_torchtune()
    from torchtune import config, training

    model = config.instantiate(cfg.model)
    model.load_state_dict(config.instantiate(cfg.checkpointer).load_checkpoint()[training.MODEL_KEY], strict=False)
    trained = torch.load(run_dir / "train" / "state" / "torchtune_state.pt", weights_only=False)["adapter"]
    assert sum(k.endswith("magnitude") for k in trained) == 7 * int(cfg.model.num_layers)
    result = model.load_state_dict(trained, strict=False)
    assert not result.unexpected_keys and not [k for k in result.missing_keys if "lora" in k or "magnitude" in k]
    model.eval()
    tokens = _tokens(1)
    with torch.no_grad():
        ours = model(tokens)
        peft_model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), str(adapter)).eval()
        theirs = peft_model(input_ids=tokens).logits
        with peft_model.disable_adapter():
            plain = peft_model(input_ids=tokens).logits
    assert float((theirs - plain).abs().max()) > 1e-2  # DoRA changed the model
    assert float((ours - theirs).abs().max()) < 1e-4
    # Module by module too (the attention scores of a tiny random model hide most of q and k): torchtune's
    # q/k rows are in its rotary order, put back in Hugging Face's before comparing.
    heads, kv, head_dim = cfg.model.num_heads, cfg.model.num_kv_heads, cfg.model.embed_dim // cfg.model.num_heads
    pairs = {"attn.q_proj": ("self_attn.q_proj", heads), "attn.k_proj": ("self_attn.k_proj", kv),
             "attn.v_proj": ("self_attn.v_proj", 0), "attn.output_proj": ("self_attn.o_proj", 0),
             "mlp.w1": ("mlp.gate_proj", 0), "mlp.w2": ("mlp.down_proj", 0), "mlp.w3": ("mlp.up_proj", 0)}
    hf_layers = peft_model.base_model.model.model.layers
    with torch.no_grad():
        for i in range(int(cfg.model.num_layers)):
            for tt_name, (hf_name, n) in pairs.items():
                tt_mod, hf_mod = model.layers[i].get_submodule(tt_name), hf_layers[i].get_submodule(hf_name)
                x = torch.randn(3, tt_mod.in_dim, generator=torch.Generator().manual_seed(i))
                out = tt_mod(x)
                if n:
                    out = out.reshape(3, n, head_dim // 2, 2).transpose(2, 3).reshape(3, n * head_dim)
                assert float((out - hf_mod(x)).abs().max()) < 1e-5, (i, hf_name)
    assert float((_inference_logits(run_dir, 0, tokens) - theirs).abs().max()) < 1e-5


def test_plan_counts_dora_magnitudes_and_saved_modules_as_peft_does(tmp_path: Path, tiny_llama: Path) -> None:
    """`ck plan`'s trainable parameters equal PEFT's own count on the same model and options."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    for i, lora in enumerate([{"targets": ["q_proj", "v_proj"], "use_dora": True},
                              {"targets": "all-linear", "use_dora": True, "modules_to_save": ["lm_head"]},
                              {"targets": ["k_proj"], "modules_to_save": ["down_proj"]}]):
        spec = write_trl_spec(tmp_path / str(i), tiny_llama, train={"lora": {"rank": 4, **lora}})
        planned = plan_spec(spec, estimate=True).runs[0].estimate.trainable_parameters
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_llama)
        peft = get_peft_model(model, LoraConfig(r=4, target_modules=lora["targets"], use_dora=lora.get("use_dora", False),
                                                modules_to_save=lora.get("modules_to_save"), task_type="CAUSAL_LM"))
        expected = sum(p.numel() for p in peft.parameters() if p.requires_grad)
        assert planned == expected, (lora, planned, expected)
