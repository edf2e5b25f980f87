"""Ready for the GPU without one, the parts the stage processes decide: why a process cannot use the
GPUs it asks for (a CUDA build of torch that sees none, fewer devices than asked), an evaluation of a
model served elsewhere that needs no GPU here, the dtype the local simulated assistant loads in, and
the precision the prepared GPU check expects on an older GPU.

torch here is a CPU build: the tests set what torch reports (its CUDA version, the devices it sees,
their compute capability) with monkeypatch and check the messages and choices made from it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from conftest import write_spec

from cruijff_kit._base.errors import StageError
from cruijff_kit._engine.devices import cuda_problem, require_gpus

ROOT = Path(__file__).resolve().parents[1]


def _cuda_build(monkeypatch: pytest.MonkeyPatch, *, available: bool, count: int = 0,
                capability: tuple[int, int] = (8, 0)) -> None:
    """Make this CPU torch report a CUDA 12.4 build that sees ``count`` GPUs of ``capability``
    (none usable where ``available`` is False)."""
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Fake GPU")


# --------------------------------------------------------------------------- cuda_problem
def test_a_cuda_build_that_sees_no_gpu_names_the_build_the_devices_and_the_fix(monkeypatch) -> None:
    _cuda_build(monkeypatch, available=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    problem = cuda_problem(1)
    assert problem is not None
    for words in (f"torch {torch.__version__} (CUDA 12.4) sees no usable GPU", "CUDA_VISIBLE_DEVICES=''",
                  "nvidia-smi", "list the GPUs in CUDA_VISIBLE_DEVICES", "install a torch build"):
        assert words in problem, (words, problem)
    assert "CPU build" not in problem
    with pytest.raises(StageError) as err:
        require_gpus(1, "stage train of run r0")
    text = str(err.value)
    for words in ("stage train of run r0 asks for 1 GPU(s)", "sees no usable GPU", "resources.gpus: 0"):
        assert words in text, (words, text)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert "CUDA_VISIBLE_DEVICES is not set" in (cuda_problem(1) or "")


def test_fewer_gpus_than_asked_names_the_count_and_the_fix(monkeypatch) -> None:
    _cuda_build(monkeypatch, available=True, count=1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    problem = cuda_problem(2)
    assert problem is not None
    for words in ("sees 1 GPU(s) (CUDA_VISIBLE_DEVICES='3')", "fewer than the 2 it asks for",
                  "list 2 GPUs in CUDA_VISIBLE_DEVICES", "at most 1"):
        assert words in problem, (words, problem)
    with pytest.raises(StageError, match="asks for 2 GPU"):
        require_gpus(2, "stage train of run r0")
    assert cuda_problem(1) is None  # one asked, one seen
    require_gpus(1, "stage train of run r0")
    require_gpus(0, "stage train of run r0")  # none asked: nothing is checked
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert cuda_problem(2) is None


# --------------------------------------------------------------------------- a model served elsewhere
def test_an_evaluation_of_a_served_model_needs_no_gpu_here(tmp_path: Path, tiny_llama: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`model: openai-api/...` with `resources.gpus: 1` on a process whose torch sees no GPU: the served
    model's evaluation runs (its requests reach a real OpenAI-compatible server on 127.0.0.1), while the
    evaluation of the run's own model, in the same run, stops at its start."""
    pytest.importorskip("inspect_ai")
    from fake_openai import FakeOpenAI

    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.runner import write_experiment
    from cruijff_kit._engine.spec import load_spec
    from cruijff_kit._engine.stage import run_stage

    rows = [{"input": "What is 2+3?", "output": "5"}, {"input": "What is 10+4?", "output": "14"}]
    (tmp_path / "sums.json").write_text(json.dumps({"train": rows, "test": rows}))
    spec = write_spec(tmp_path, f"""
        experiment: remote
        seed: 42
        model: {{path: {tiny_llama}}}
        dataset: {{plugin: json-instruct, path: sums.json}}
        eval:
          - {{plugin: inspect, task: includes, model: openai-api/local/assistant}}
          - {{plugin: inspect, task: includes, name: own, device: cpu}}
        scheduler: {{plugin: local, resources: {{gpus: 1}}}}
    """)
    plan = make_plan(load_spec(spec))
    write_experiment(plan)
    run = plan.runs[0]
    _cuda_build(monkeypatch, available=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with FakeOpenAI() as server:
        monkeypatch.setenv("LOCAL_BASE_URL", server.url)
        monkeypatch.setenv("LOCAL_API_KEY", "test-key")
        res = run_stage(run.layout.root, "eval.includes.base")
        assert server.stats.models == {"assistant": 2}
    assert res["model"] == "openai-api/local/assistant" and res["samples"] == 2
    with pytest.raises(StageError, match=r"asks for 1 GPU\(s\).*sees no usable GPU"):
        run_stage(run.layout.root, "eval.own.base")


# --------------------------------------------------------------------------- the local assistant's dtype
class _Loaded(Exception):
    """Stops the load once the model's arguments are known."""


@pytest.mark.parametrize(("capability", "dtype"), [((7, 5), torch.float32), ((8, 0), torch.bfloat16)])
def test_local_assistant_loads_bf16_only_where_the_gpu_has_it(tmp_path: Path, tiny_llama: Path, monkeypatch,
                                                                capability, dtype) -> None:
    """On a GPU of compute capability 7.5 (a T4, which only emulates bf16 and for which torch's
    is_bf16_supported still says True) the assistant loads in float32; from 8.0 on in bfloat16."""
    import transformers
    from cruijff_kit_local_simulator.simulator import LocalAssistant, LocalConfig

    _cuda_build(monkeypatch, available=True, count=1, capability=capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    seen: dict[str, Any] = {}

    def from_pretrained(path: Any, **kwargs: Any) -> Any:
        seen.update(kwargs, path=str(path))
        raise _Loaded

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    assistant = LocalAssistant(LocalConfig(model=str(tiny_llama)), tmp_path)
    with pytest.raises(_Loaded):
        assistant.open()
    assert seen["dtype"] == dtype
    assert assistant._device == "cuda"
    assert assistant._loading["dtype"] == str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------- the prepared GPU check
def _gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ck_gpu_check", ROOT / "benchmarks" / "gpu" / "check.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("capability", "precision", "dtype"),
                         [((7, 0), "fp32", "float32"), ((7, 5), "fp32", "float32"), ((8, 0), "bf16", "bfloat16"),
                          ((9, 0), "bf16", "bfloat16")])
def test_gpu_check_expects_what_the_gpu_supports(tmp_path: Path, monkeypatch, capability, precision, dtype) -> None:
    """On a V100 or T4 (compute capability 7.x) the check expects `precision: auto` to train in fp32 and
    runs plain TRL in fp32 too; on an A100 or H100 bf16, and it fails a run that chose otherwise."""
    check = _gpu_check()
    _cuda_build(monkeypatch, available=True, count=1, capability=capability)
    c = check.Check(tmp_path, dry_run=False)

    def ck(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        if args[:2] == ("models", "tiny"):
            Path(args[2]).mkdir(parents=True)
            (Path(args[2]) / "config.json").write_text('{"hidden_size": 512, "num_hidden_layers": 2}')
        return subprocess.CompletedProcess(list(args), 0, "", "")

    monkeypatch.setattr(c, "ck", ck)
    nums = check.step_setup(c)
    assert (c.device, c.precision, c.torch_dtype) == ("cuda", precision, dtype)
    assert nums["precision"] == precision and nums["compute_capability"] == ".".join(map(str, capability))
    c.assert_device("cuda:0", precision, "trl lora")
    other = "fp32" if precision == "bf16" else "bf16"
    with pytest.raises(AssertionError, match=f"trained on cuda:0 \\({other}\\), expected cuda \\({precision}\\)"):
        c.assert_device("cuda:0", other, "trl lora")

    sent: dict[str, Any] = {}

    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        sent.update(json.loads(argv[-1]))
        out = {"tokens": 100.0, "train_seconds": 1.0, "peak_mb": 1.0}
        return subprocess.CompletedProcess(argv, 0, "PLAIN " + json.dumps(out), "")

    monkeypatch.setattr(check.subprocess, "run", run)
    check.step_plain_trl(c)
    assert (sent["device"], sent["dtype"]) == ("cuda", dtype)


@pytest.mark.parametrize(("scheduler", "option"), [
    ("resources: {gpus: 1}", "scheduler.resources.gpus"),
    ("resources: {gpus: 0}, eval_resources: {gpus: 1}", "scheduler.eval_resources.gpus"),
])
def test_the_stage_start_check_names_the_option_that_asked(tmp_path: Path, with_toy: Path, monkeypatch,
                                                           scheduler: str, option: str) -> None:
    """An evaluation whose GPUs come from `eval_resources` is told to change that option, not `resources`."""
    import ck_toy

    from cruijff_kit.engine import load_spec, make_plan, run_stage, write_experiment

    model = tmp_path / "base"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "toy"}')
    spec = write_spec(tmp_path, f"""
        experiment: gpuopt
        model: {{path: {model}}}
        dataset: {{plugin: toy-data}}
        eval: [{{plugin: toy-eval, task: toy, include_base: true}}]
        scheduler: {{plugin: local, {scheduler}}}
        """)
    plan = make_plan(load_spec(spec))
    write_experiment(plan)
    monkeypatch.setattr(ck_toy.ToyEvaluator, "uses_gpus", lambda self: True)  # as a local-model evaluator
    (run,) = plan.runs
    with pytest.raises(StageError) as err:
        run_stage(run.layout.root, "eval.toy.base")
    assert f"asks for 1 GPU(s) ({option})" in str(err.value) and f"set {option}: 0" in str(err.value)
