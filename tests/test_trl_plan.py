"""Plan-time behaviour of the trl trainer and the shared estimate/distributed/training helpers.

Nothing here imports torch: these are the checks and numbers `ck plan` gives.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from trl_fixtures import plan_spec, write_trl_spec

from cruijff_kit._api.kinds import Resources
from cruijff_kit._base.errors import SpecError, StageError
from cruijff_kit.training import _adapters as training
from cruijff_kit.training import _distributed as distributed
from cruijff_kit.training import _estimate as estimate

LLAMA3_8B = {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
             "tie_word_embeddings": False}
QWEN25_05B = {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "num_hidden_layers": 24,
              "num_attention_heads": 14, "num_key_value_heads": 2, "intermediate_size": 4864,
              "tie_word_embeddings": True}


def fake_model(folder: Path, cfg: dict) -> Path:
    """A model folder holding only config.json (all `ck plan` reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


# --------------------------------------------------------------------------- estimate
def test_parameter_counts_match_published_sizes() -> None:
    llama = estimate.ModelShape.from_config(LLAMA3_8B)
    assert llama.parameters() == 8_030_261_248  # Llama-3-8B
    assert llama.lora_parameters(["q_proj", "v_proj"], 8) == 3_407_872  # PEFT's count for r=8 on q,v
    qwen = estimate.ModelShape.from_config(QWEN25_05B)
    assert qwen.parameters() == 494_032_768  # Qwen2.5-0.5B (tied embeddings, q/k/v biases)


def test_estimate_in_plan_memory_and_tokens(tmp_path: Path) -> None:
    model = fake_model(tmp_path / "llama8b", LLAMA3_8B)
    train = {"batch_size": 2, "max_seq_length": 1024, "lora": {"rank": 16}}
    lora = plan_spec(write_trl_spec(tmp_path / "a", model, train=train, resources={"gpus": 1}),
                     estimate=True).runs[0].estimate
    assert lora.parameters == 8_030_261_248
    assert lora.trainable_parameters == 13_631_488
    # bf16 weights on a GPU: 2 bytes per parameter, plus optimizer state and activations on top.
    assert lora.memory_bytes > 2 * lora.parameters
    assert lora.tokens_per_epoch and lora.tokens_per_epoch > 0
    assert any("characters / 4" in n for n in lora.notes)
    qlora = plan_spec(write_trl_spec(tmp_path / "b", model, train={**train, "method": "qlora"},
                                     resources={"gpus": 1}), estimate=True).runs[0].estimate
    assert qlora.memory_bytes < lora.memory_bytes - 8e9  # 4-bit linear layers save > 8 GB
    gc = plan_spec(write_trl_spec(tmp_path / "c", model, train={**train, "gradient_checkpointing": True},
                                  resources={"gpus": 1}), estimate=True).runs[0].estimate
    assert gc.memory_bytes < lora.memory_bytes
    fp32 = plan_spec(write_trl_spec(tmp_path / "d", model, train=train), estimate=True).runs[0].estimate
    assert fp32.memory_bytes > lora.memory_bytes  # precision auto on CPU is fp32


def test_hub_id_without_local_config_gives_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    est = plan_spec(write_trl_spec(tmp_path, "some-org/some-model"), estimate=True).runs[0].estimate
    assert est.parameters is None and est.memory_bytes is None
    assert any("no readable config.json" in n for n in est.notes)
    # ...but a hub id already in the local hub cache is read from there.
    snap = tmp_path / "empty-cache" / "models--some-org--some-model" / "snapshots" / "abc"
    fake_model(snap, QWEN25_05B)
    est = plan_spec(write_trl_spec(tmp_path / "again", "some-org/some-model"), estimate=True).runs[0].estimate
    assert est.parameters == 494_032_768


def test_config_reads_are_cached(tmp_path: Path) -> None:
    model = fake_model(tmp_path / "m", QWEN25_05B)
    estimate._read_json.cache_clear()
    for _ in range(3):
        estimate.read_model_config(model)
    assert estimate._read_json.cache_info().hits == 2


# --------------------------------------------------------------------------- clear errors at plan time
def _plan_error(tmp_path: Path, train: dict, model_cfg: dict = QWEN25_05B, **kw) -> SpecError:
    model = fake_model(tmp_path / "m", model_cfg)
    with pytest.raises(SpecError) as err:
        plan_spec(write_trl_spec(tmp_path, model, train=train, **kw))
    return err.value


def test_rank_zero_is_a_spec_error(tmp_path: Path) -> None:
    err = _plan_error(tmp_path, {"lora": {"rank": 0}})
    assert "train.lora.rank" in str(err) and "greater than 0" in str(err)


def test_unknown_target_module_is_named_with_a_suggestion(tmp_path: Path) -> None:
    err = _plan_error(tmp_path, {"lora": {"targets": ["q_proj", "v_prj"]}})
    text = str(err)
    assert "train.lora.targets" in text and "v_prj" in text and "Did you mean `v_proj`" in text
    assert "gate_proj" in text  # lists what exists
    assert "never train" in str(_plan_error(tmp_path / "head", {"lora": {"targets": ["q_proj", "lm_head"]}}))


def test_qlora_without_bitsandbytes_fails_at_plan_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cruijff_kit_trl.checks as checks

    real = checks.find_spec
    monkeypatch.setattr(checks, "find_spec", lambda name: None if name == "bitsandbytes" else real(name))
    err = _plan_error(tmp_path, {"method": "qlora"})
    assert "train.method" in str(err) and "bitsandbytes" in str(err) and "method: lora" in str(err)


def test_qlora_without_a_backend_for_the_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cruijff_kit_trl.checks as checks

    monkeypatch.setattr(checks, "bitsandbytes_backends", lambda: {"cuda"})
    err = _plan_error(tmp_path, {"method": "qlora"})
    assert "quantize on this CPU" in str(err)
    assert checks.quantization_problem("cpu") is not None
    monkeypatch.undo()
    assert checks.quantization_problem("cpu") is None  # the installed bitsandbytes has a CPU backend


def test_other_option_errors(tmp_path: Path) -> None:
    assert "padding_free" in str(_plan_error(tmp_path / "a", {"padding_free": True}))
    assert "fp16 needs a GPU" in str(_plan_error(tmp_path / "b", {"precision": "fp16"}))
    assert "train.objective" in str(_plan_error(tmp_path / "c", {"objective": "ppo"}))
    assert "train.lora.rnak" in str(_plan_error(tmp_path / "d", {"lora": {"rnak": 4}}))


def test_missing_validation_split_is_reported(tmp_path: Path) -> None:
    data_file = tmp_path / "d.json"
    data_file.write_text(json.dumps({"train": [{"input": "a", "output": "A"}]}))
    err = _plan_error(tmp_path, {}, data={"plugin": "json-instruct", "path": str(data_file)})
    assert "train.validation" in str(err)


def test_defaults_resolved_into_the_spec(tmp_path: Path) -> None:
    model = fake_model(tmp_path / "m", QWEN25_05B)
    run = plan_spec(write_trl_spec(tmp_path, model, train={"lora": {"rank": 4}})).runs[0]
    t = run.spec["train"]
    assert t["lora"]["alpha"] == 8.0 and t["lora"]["targets"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert t["objective"] == "sft" and t["assistant_only_loss"] is True and t["push_to_hub"] is None
    assert run.spec["model"]["path"] == str(model) and run.spec["model"]["local_path"] == str(model)


# --------------------------------------------------------------------------- distributed commands
def test_world_size() -> None:
    assert distributed.world_size(Resources()) == 1
    assert distributed.world_size(Resources(gpus=4)) == 4
    assert distributed.world_size(Resources(gpus=4, nodes=2)) == 8
    assert distributed.world_size(Resources(processes=2)) == 2
    assert not distributed.needs_launch(Resources(gpus=1), env={})
    assert distributed.needs_launch(Resources(gpus=2), env={})
    assert not distributed.needs_launch(Resources(gpus=2), env={"CK_STAGE_CHILD": "1"})
    assert not distributed.needs_launch(Resources(gpus=2), env={"LOCAL_RANK": "0"})


def test_accelerate_command_on_gpus(tmp_path: Path) -> None:
    cmd = distributed.launch_command(tmp_path, "train", Resources(gpus=2), launcher="accelerate",
                                     python="py", env={}, port=29999)
    assert cmd.argv[:6] == ["py", "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    assert cmd.argv[-5:] == ["-m", "cruijff_kit", "stage", str(tmp_path.resolve()), "train"]
    assert "--main_process_port" in cmd.argv and "29999" in cmd.argv
    assert cmd.env["CK_STAGE_CHILD"] == "1" and "ACCELERATE_USE_CPU" not in cmd.env
    assert cmd.world_size == 2


def test_cpu_processes_get_gloo_env(tmp_path: Path) -> None:
    cmd = distributed.launch_command(tmp_path, "train", Resources(processes=2), launcher="accelerate", env={})
    assert cmd.env["ACCELERATE_USE_CPU"] == "true"  # without it the ranks train unsynchronised copies
    assert "--cpu" not in cmd.argv  # `--cpu --num_processes 2` silently starts one process
    assert cmd.argv[0] == sys.executable


def test_multi_node_rendezvous_from_slurm(tmp_path: Path) -> None:
    env = {"SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NODEID": "1", "SLURM_JOB_ID": "4242"}
    cmd = distributed.launch_command(tmp_path, "train", Resources(gpus=4, nodes=2), launcher="torchrun", env=env)
    argv = cmd.argv
    assert argv[argv.index("--nnodes") + 1] == "2" and argv[argv.index("--node_rank") + 1] == "1"
    assert argv[argv.index("--nproc_per_node") + 1] == "4"
    assert argv[argv.index("--rdzv_endpoint") + 1] == f"gpu07:{20000 + 4242}"
    assert cmd.world_size == 8
    acc = distributed.launch_command(tmp_path, "train", Resources(gpus=4, nodes=2), launcher="accelerate", env=env)
    assert acc.argv[acc.argv.index("--machine_rank") + 1] == "1"
    assert acc.argv[acc.argv.index("--num_processes") + 1] == "8"
    assert distributed.first_host("cpu1,cpu2") == "cpu1"
    assert distributed.first_host("n[3,5-9]") == "n3"
    with pytest.raises(StageError, match="MASTER_ADDR"):
        distributed.launch_command(tmp_path, "train", Resources(nodes=2), env={})


# --------------------------------------------------------------------------- training helpers (no torch)
class FakePeft:
    """Writes what PeftModel.save_pretrained writes, without torch."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def save_pretrained(self, path: str, **kw: object) -> None:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        (p / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": None, "r": 4}))
        if self.fail:
            raise RuntimeError("disk full")
        (p / "adapter_model.safetensors").write_bytes(b"x")


def test_save_adapter_is_atomic_and_names_the_base(tmp_path: Path) -> None:
    out = tmp_path / "train" / "epoch_0" / "adapter"
    (out.parent / ".adapter.tmp-999").mkdir(parents=True)  # left by a killed process
    training.save_adapter(FakePeft(), None, out, base_model="org/model", base_model_path="/models/m",
                          extra={"epoch": 0})
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "/models/m"
    assert training.adapter_info(out) == {"base_model": "org/model", "base_model_path": "/models/m", "epoch": 0}
    assert sorted(p.name for p in out.parent.iterdir()) == ["adapter"]
    with pytest.raises(RuntimeError):
        training.save_adapter(FakePeft(fail=True), None, out, base_model="org/model")
    assert (out / "adapter_model.safetensors").exists()  # the earlier adapter survives a failed save
    assert sorted(p.name for p in out.parent.iterdir()) == ["adapter"]
    shared = training.export_adapter(out, tmp_path / "share")
    assert json.loads((shared / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/model"
    assert not (shared / training.ADAPTER_INFO).exists()  # no local paths in a shared copy


def test_metrics_rows_and_truncation(tmp_path: Path) -> None:
    row = training.MetricsRow(step=3, epoch=0, train_loss=float("nan"), learning_rate=1e-4)
    assert list(row.as_dict()) == list(training.METRIC_KEYS)
    assert row.as_dict()["train_loss"] is None
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4)) + '{"step": 5')
    assert training.truncate_metrics(path, 2) == 2
    assert [r["step"] for r in training.read_metrics(path)] == [1, 2]


def test_planning_imports_nothing_heavy() -> None:
    code = ("import sys, cruijff_kit_trl, cruijff_kit_trl.plugin, cruijff_kit_trl.checks, cruijff_kit.training._estimate, "
            "cruijff_kit.training._adapters, cruijff_kit.training._distributed\n"
            "got = []\n"
            "cruijff_kit_trl.register_trainers(register=got.append)\n"
            "assert got[0].name == 'trl' and got[0].Config.model_fields['objective']\n"
            "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets', 'bitsandbytes') if m in sys.modules]\n"
            "assert not heavy, heavy")
    res = __import__("subprocess").run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
