"""Ready for the GPU without one: a stage that asks for GPUs and sees none fails at its start (never
trains on the CPU without a word), the local scheduler never starts a stage with fewer GPUs than it
asks for, a `gpus: 0` stage sees none, and an evaluation asks for one GPU whatever its training asked.

The machine's GPUs are set through CUDA_VISIBLE_DEVICES, which is what the local scheduler reads
(`visible_gpus`); torch here is a CPU build, which is the cause the stage-start check names."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from cruijff_kit._api.kinds import Resources, SchedulerConfig
from cruijff_kit._base.errors import StageError
from cruijff_kit._base.fileio import read_jsonl


def _spec(folder: Path, resources: str, *, runs: str = "", train: str | None = "", eval_: bool = False) -> Path:
    """A toy spec; ``train=None``: no training (the base model's evaluation only)."""
    model = folder / "models" / "base"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text('{"model_type": "toy"}')
    train_line = "" if train is None else f"train: {{plugin: toy, epochs: 1, steps_per_epoch: 3{train}}}\n"
    base = "true" if train is None else "false"
    text = textwrap.dedent("""\
        experiment: gpu
        output_dir: out
        model: {path: models/base}
        dataset: {plugin: toy-data}
        """) + train_line + textwrap.dedent(f"""\
        eval: {"[{plugin: toy-eval, task: toy, include_base: " + base + "}]" if eval_ else "[]"}
        scheduler: {{plugin: local, poll_seconds: 0.05, resources: {resources}}}
        """) + runs
    path = folder / "spec.yaml"
    path.write_text(text)
    return path


def _runs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "out" / "gpu" / "runs").iterdir())


def _stage(run: Path, stage: str) -> dict:
    return json.loads((run / "status.json").read_text())["stages"][stage]


def test_a_stage_that_sees_no_gpu_fails_at_its_start(with_toy: Path, tmp_path: Path, ck) -> None:
    spec = _spec(tmp_path, "{gpus: 1}", train=", uses_gpus: true")
    assert ck("run", str(spec), "--dry-run").returncode == 0
    (run,) = _runs(tmp_path)
    res = ck("stage", str(run), "train", env={"CUDA_VISIBLE_DEVICES": "0"})  # as a cluster node would set it
    assert res.returncode == StageError.exit_code
    entry = _stage(run, "train")
    assert entry["state"] == "failed"
    for words in ("asks for 1 GPU(s)", "is a CPU build", "CUDA_VISIBLE_DEVICES='0'", "resources.gpus: 0"):
        assert words in entry["error"] and words in res.stderr, (words, entry["error"])
    assert not (run / "train" / "metrics.jsonl").exists()  # not a single step on the CPU


def test_the_same_stage_runs_when_it_asks_for_no_gpu(with_toy: Path, tmp_path: Path, ck) -> None:
    spec = _spec(tmp_path, "{gpus: 0}", train=", uses_gpus: true")
    res = ck("run", str(spec), env={"CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 0, res.stdout + res.stderr
    assert _stage(_runs(tmp_path)[0], "train")["state"] == "done"


def test_plan_warns_and_run_refuses_more_gpus_than_the_machine_has(with_toy: Path, tmp_path: Path, ck) -> None:
    spec = _spec(tmp_path, "{gpus: 3}", eval_=True)
    env = {"CUDA_VISIBLE_DEVICES": "0,1"}
    plan = ck("plan", str(spec), env=env)
    assert plan.returncode == 0 and "Note:" in plan.stderr
    assert "scheduler.resources.gpus is 3 but this machine has 2 GPU(s) (CUDA_VISIBLE_DEVICES='0,1')" in \
        " ".join(plan.stderr.split()), plan.stderr
    res = ck("run", str(spec), env=env)
    assert res.returncode == 1
    (run,) = _runs(tmp_path)
    train = _stage(run, "train")
    assert train["state"] == "failed" and "asks for 3 GPU(s)" in train["error"] and "has 2" in train["error"]
    assert "pid" not in train or train["pid"] is None  # never started
    assert _stage(run, "eval.toy.epoch_0")["state"] == "pending"  # waits for its training


def test_slots_never_start_a_stage_with_fewer_gpus(with_toy: Path, tmp_path: Path, ck) -> None:
    """Two runs that each ask for both GPUs train one after the other, each seeing both; their
    evaluations get one GPU each."""
    spec = _spec(tmp_path, "{gpus: 2}", train=", step_seconds: 0.2", eval_=True,
                 runs="sweep:\n  train.learning_rate: [0.001, 0.002]\n")
    res = ck("run", str(spec), env={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [read_jsonl(r / "train" / "metrics.jsonl") for r in _runs(tmp_path)]
    assert [{r["cuda"] for r in rs} for rs in rows] == [{"0,1"}, {"0,1"}]
    (a, b) = rows
    assert min(a[-1]["time"], b[-1]["time"]) <= max(a[0]["time"], b[0]["time"]), "ran at the same time"
    for run in _runs(tmp_path):
        log = json.loads((run / "eval" / "toy" / "epoch_0" / "log.json").read_text())
        assert log["cuda"] in ("0", "1"), log


def test_a_stage_asking_for_no_gpu_sees_none(with_toy: Path, tmp_path: Path, ck) -> None:
    spec = _spec(tmp_path, "{gpus: 0}")
    assert ck("run", str(spec), env={"CUDA_VISIBLE_DEVICES": "0,1"}).returncode == 0
    rows = read_jsonl(_runs(tmp_path)[0] / "train" / "metrics.jsonl")
    assert {r["cuda"] for r in rows} == {""}


def test_a_stage_asking_for_no_gpu_sees_none_where_no_gpu_is_listed(with_toy: Path, tmp_path: Path, ck,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA_VISIBLE_DEVICES unset and nvidia-smi listing no GPU (as where it is missing, or on a machine
    whose GPUs only torch finds): the local scheduler still hides every GPU from a `gpus: 0` stage, its
    training and its evaluation, rather than leaving them whatever torch would find."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    smi = fake_bin / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'No devices were found'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    spec = _spec(tmp_path, "{gpus: 0}", eval_=True)
    res = ck("run", str(spec))
    assert res.returncode == 0, res.stdout + res.stderr
    (run,) = _runs(tmp_path)
    assert {r["cuda"] for r in read_jsonl(run / "train" / "metrics.jsonl")} == {""}
    assert json.loads((run / "eval" / "toy" / "epoch_0" / "log.json").read_text())["cuda"] == ""


def test_plan_notes_what_each_stage_asks(with_toy: Path, tmp_path: Path, ck) -> None:
    """The `ck plan` note counts each stage with what it asks: `eval_resources: {gpus: 2}` on a machine with
    one GPU is named (and `ck run` refuses that evaluation with the same option), while an evaluation-only run
    with `resources.gpus: 4` on two GPUs asks for one GPU per evaluation and gets no note."""
    env = {"CUDA_VISIBLE_DEVICES": "0"}
    spec = _spec(tmp_path / "a", "{gpus: 1}, eval_resources: {gpus: 2}", eval_=True)
    plan = ck("plan", str(spec), env=env)
    text = " ".join(plan.stderr.split())
    assert plan.returncode == 0 and "Note:" in plan.stderr, plan.stderr
    assert "scheduler.eval_resources.gpus is 2 but this machine has 1 GPU(s) (CUDA_VISIBLE_DEVICES='0')" in text
    assert "set scheduler.eval_resources.gpus to at most 1" in text
    assert "scheduler.resources.gpus is" not in text  # training asks for 1: it fits
    res = ck("run", str(spec), env=env)
    assert res.returncode == 1
    (run,) = sorted((tmp_path / "a" / "out" / "gpu" / "runs").iterdir())
    assert _stage(run, "train")["state"] == "done"
    ev = _stage(run, "eval.toy.epoch_0")
    assert ev["state"] == "failed" and "asks for 2 GPU(s) (scheduler.eval_resources.gpus)" in ev["error"], ev

    only_evals = _spec(tmp_path / "b", "{gpus: 4}", train=None, eval_=True)
    plan = ck("plan", str(only_evals), env={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "GPU(s)" not in plan.stderr, plan.stderr
    plan = ck("plan", str(only_evals), env={"CUDA_VISIBLE_DEVICES": ""})  # no GPU: its evaluations ask for one
    assert "scheduler.resources.gpus is 4 (its evaluations ask for 1) but this machine has 0 GPU(s)" in \
        " ".join(plan.stderr.split()), plan.stderr


def test_eval_resources_apply_to_every_scheduler(with_toy: Path, tmp_path: Path, ck) -> None:
    """`scheduler.eval_resources` is an option of every scheduler: here the local one runs the evaluation
    on no GPU while its training has one."""
    spec = _spec(tmp_path, "{gpus: 1}", eval_=True)
    spec.write_text(spec.read_text().replace("resources: {gpus: 1}", "resources: {gpus: 1}, eval_resources: {gpus: 0}"))
    res = ck("run", str(spec), env={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert res.returncode == 0, res.stdout + res.stderr
    (run,) = _runs(tmp_path)
    assert {r["cuda"] for r in read_jsonl(run / "train" / "metrics.jsonl")} in ({"0"}, {"1"})
    assert json.loads((run / "eval" / "toy" / "epoch_0" / "log.json").read_text())["cuda"] == ""
    config = SchedulerConfig.model_validate({"resources": {"gpus": 4, "nodes": 2}, "eval_resources": {"cpus": 3}})
    assert (config.stage_resources("eval").cpus, config.stage_resources("eval").gpus) == (3, 0)
    assert config.stage_resources("train").gpus == 4


def test_evaluations_ask_for_one_gpu() -> None:
    res = Resources.model_validate({"gpus": 4, "nodes": 2, "processes": 4, "cpus": 8})
    ev = res.for_stage("eval")
    assert (ev.gpus, ev.nodes, ev.processes, ev.cpus) == (1, 1, None, 8)
    assert res.for_stage("train") == res
    assert Resources.model_validate({"gpus": 0}).for_stage("eval").gpus == 0


# --------------------------------------------------------------------------- launcher isolation
def test_accelerate_launches_with_its_own_configuration(tmp_path: Path) -> None:
    """`accelerate launch` gets a configuration file generated from the resources, so the user's
    default accelerate configuration (gpu_ids, mixed precision, process count) is never read; accelerate's
    own loader reads the file back to the values asked for."""
    import yaml
    from accelerate.commands.config.config_args import load_config_from_file

    from cruijff_kit.training import _distributed as distributed

    cmd = distributed.launch_command(tmp_path, "train", Resources(gpus=4), launcher="accelerate", python="py",
                                     env={}, port=29500)
    argv = cmd.argv
    config_file = tmp_path.resolve() / "logs" / "train.accelerate.yaml"
    assert argv[argv.index("--config_file") + 1] == str(config_file)
    assert argv[argv.index("--num_processes") + 1] == "4" and argv[argv.index("--gpu_ids") + 1] == "all"
    assert argv[argv.index("--mixed_precision") + 1] == "no"  # the trainer's training arguments decide
    assert list(cmd.files) == [config_file]
    config_file.parent.mkdir(parents=True)
    config_file.write_text(cmd.files[config_file])
    loaded = load_config_from_file(str(config_file))
    assert (loaded.distributed_type, loaded.num_processes, loaded.num_machines, loaded.machine_rank) == \
        ("MULTI_GPU", 4, 1, 0)
    assert (loaded.main_process_ip, loaded.main_process_port) == ("127.0.0.1", 29500)
    assert (str(loaded.mixed_precision), loaded.gpu_ids, loaded.use_cpu) == ("no", "all", False)
    cpu = distributed.launch_command(tmp_path, "train", Resources(processes=2), launcher="accelerate", env={}, port=1)
    cpu_config = yaml.safe_load(next(iter(cpu.files.values())))
    assert (cpu_config["distributed_type"], cpu_config["use_cpu"], cpu_config["num_processes"]) == ("MULTI_CPU", True, 2)
    torchrun = distributed.launch_command(tmp_path, "train", Resources(gpus=2), env={}, port=1)
    assert torchrun.files == {}


def test_relaunch_writes_the_configuration_before_starting(tmp_path: Path, monkeypatch) -> None:
    """`relaunch` writes the file the command names, then starts the command (here a stand-in that
    prints the file it was given)."""
    import sys

    from cruijff_kit.training import _distributed as distributed

    seen: dict[str, str] = {}
    real = distributed.launch_command

    def fake(*a, **kw):
        cmd = real(*a, **kw)
        path = cmd.argv[cmd.argv.index("--config_file") + 1]
        cmd.argv = [sys.executable, "-c", f"import sys; sys.exit(0 if open({path!r}).read() else 3)"]
        seen["path"] = path
        return cmd

    monkeypatch.setattr(distributed, "launch_command", fake)
    distributed.relaunch(tmp_path, "train", Resources(processes=2), launcher="accelerate")
    assert "num_processes: 2" in Path(seen["path"]).read_text()


# --------------------------------------------------------------------------- bf16: native only
@pytest.mark.parametrize(("capability", "native"), [((7, 5), False), ((8, 0), True), ((9, 0), True), ((6, 1), False)])
def test_bf16_means_native_bf16(monkeypatch, capability, native) -> None:
    """A GPU below compute capability 8.0 only emulates bf16 (torch's is_bf16_supported says True for it):
    `auto` picks fp32 there, bf16 from 8.0 on; the local assistant and the inference API follow the same rule."""
    import torch

    from cruijff_kit.inference import resolve_dtype
    from cruijff_kit.training import resolve_precision, supports_bf16

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation counts there
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    assert supports_bf16("cuda") is native and supports_bf16("cuda:1") is native
    assert resolve_precision("auto", "cuda") == ("bf16" if native else "fp32")
    assert resolve_dtype("auto", "cuda") == (torch.bfloat16 if native else torch.float32)
    assert supports_bf16("cpu") is False
    if not native:
        with pytest.raises(StageError, match="compute capability below 8.0"):
            resolve_precision("bf16", "cuda")


def test_local_assistant_inputs_follow_the_model(tmp_path: Path, tiny_llama: Path) -> None:
    """The local simulated assistant puts its inputs where the model's input embeddings are (a 4-bit
    load places weights itself), through PEFT as well."""
    from cruijff_kit_local_simulator.simulator import input_device
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    peft.get_input_embeddings().to("meta")  # stands in for a device other than the one asked for
    assert str(input_device(peft)) == "meta"
