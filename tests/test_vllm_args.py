"""The vLLM evaluation path on CPU: the model args handed to inspect's vllm provider, the plan-time
refusals of what vLLM cannot serve, and the merged copy on disk (its dtype and its logits)."""

from __future__ import annotations

import importlib.util
import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from cruijff_kit._base.errors import StageError

pytest.importorskip("inspect_ai")
pytest.importorskip("peft")

from cruijff_kit_inspect import vllm_server  # noqa: E402
from cruijff_kit_inspect.config import InspectConfig  # noqa: E402
from cruijff_kit_inspect.evaluator import (  # noqa: E402
    merged_dtype,
    model_for,
    stage_devices,
    vllm_devices,
    vllm_max_lora_rank,
    write_chat_template,
    write_merged,
)

NO_VLLM = pytest.mark.skipif(importlib.util.find_spec("vllm") is not None,
                             reason="vllm is installed here: the spec would pass the vllm package check")


def _cfg(**options: Any) -> InspectConfig:
    return InspectConfig.model_validate({"task": "includes", "backend": "vllm", **options})


def _adapter(folder: Path, *, r: int = 8, rank_pattern: dict[str, int] | None = None, tokenizer: bool = True,
             **extra: Any) -> Path:
    """An adapter folder as a trainer writes it: ``epoch_0/adapter`` with the tokenizer in ``epoch_0``."""
    adapter = folder / "epoch_0" / "adapter"
    adapter.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "rank_pattern": rank_pattern or {},
              "target_modules": ["q_proj", "v_proj"], "modules_to_save": None, **extra}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    if tokenizer:
        (adapter.parent / "tokenizer.json").write_text("{}")
    return adapter


# --------------------------------------------------------------------------- device
@pytest.mark.parametrize(("device", "expected"), [
    ("auto", None), ("cuda", None), ("cuda:0", "0"), ("cuda:1", "1"), ("cuda:0,1", "0,1"), ("0,1", "0,1"),
    ("3", "3"), ("cuda:2,3", "2,3"),
])
def test_device_becomes_the_gpu_list_the_provider_expects(device: str, expected: str | None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # the stage sees every GPU: indices pass as given
    assert vllm_devices(device) == expected
    args = model_for(_cfg(device=device), "/m", None)[1]
    assert args == {"max_lora_rank": 8, **({} if expected is None else {"device": expected})}


@pytest.mark.parametrize("device", ["cpu", "mps", "cuda:x", "cuda:", "cuda:1,", "gpu1"])
def test_devices_vllm_cannot_serve_on_are_refused(device: str) -> None:
    with pytest.raises(ValueError, match="backend: vllm"):
        vllm_devices(device)
    with pytest.raises(StageError, match=f"device: {device} "):
        model_for(_cfg(device=device), "/m", None)


@pytest.mark.parametrize(("visible", "device", "expected"), [
    ("2,3", "cuda:1", "3"), ("2,3", "cuda:0", "2"), ("2,3", "cuda:0,1", "2,3"), ("2,3", "1,0", "3,2"),
    ("5", "cuda:0", "5"), (" 4 , 6 ", "cuda:1", "6"), ("GPU-aa,GPU-bb", "cuda:1", "GPU-bb"), ("2,3", "auto", None),
])
def test_device_index_counts_within_the_gpus_the_stage_was_given(visible: str, device: str, expected: str | None,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The provider's server gets CUDA_VISIBLE_DEVICES=<its device>: physical GPUs, so the stage's index is mapped."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    args = model_for(_cfg(device=device), "/m", None)[1]
    assert args == {"max_lora_rank": 8, **({} if expected is None else {"device": expected})}


@pytest.mark.parametrize(("visible", "device", "told"), [
    ("2,3", "cuda:2", "asks for GPU index 2, but this eval stage was given 2 GPU(s), indices 0 to 1"),
    ("2,3", "cuda:0,5", "asks for GPU index 5"),
    ("", "cuda:0", "was given no GPU"),
])
def test_device_index_beyond_the_stage_gpus_is_a_stage_error(visible: str, device: str, told: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with pytest.raises(StageError, match=re.escape(told)) as err:
        model_for(_cfg(device=device), "/m", None)
    assert f"CUDA_VISIBLE_DEVICES={visible!r}" in str(err.value) and "device: auto" in str(err.value)
    assert stage_devices("1", None) == "1"  # unset: the stage sees every GPU of the machine


# --------------------------------------------------------------------------- rank
@pytest.mark.parametrize(("rank", "size"), [
    (1, 8), (2, 8), (4, 8), (8, 8), (9, 16), (16, 16), (17, 32), (33, 64), (100, 128), (129, 256),
    (256, 256), (257, 320), (320, 320), (321, 512), (512, 512),
])
def test_rank_rounds_up_to_a_size_vllm_accepts(rank: int, size: int) -> None:
    assert vllm_max_lora_rank(rank) == size


def test_rank_above_the_largest_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="merge_adapter: disk"):
        vllm_max_lora_rank(513)


def test_model_args_of_an_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 12 with a 40 in rank_pattern -> 64; tokenizer of epoch_0; device cuda:1 -> "1"; dtype as given."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    adapter = _adapter(tmp_path, r=12, rank_pattern={"model.layers.0.self_attn.q_proj": 40})
    name, args = model_for(_cfg(device="cuda:1", dtype="bfloat16"), "/base", adapter, "/t/chat_template.jinja")
    assert name == f"vllm//base:{adapter}"
    assert args == {"dtype": "bfloat16", "device": "1", "max_lora_rank": 64, "tokenizer": str(tmp_path / "epoch_0"),
                    "chat_template": "/t/chat_template.jinja"}


def test_model_args_of_an_adapter_with_its_own_tokenizer_and_no_pattern(tmp_path: Path) -> None:
    adapter = _adapter(tmp_path, r=24, tokenizer=False)
    (adapter / "tokenizer_config.json").write_text("{}")
    assert model_for(_cfg(), "/base", adapter)[1] == {"max_lora_rank": 32, "tokenizer": str(adapter)}


def test_a_rank_1_adapter_is_served_with_max_lora_rank_8(tmp_path: Path) -> None:
    """vLLM releases before 0.11 refuse max_lora_rank 1 (their sizes start at 8); 8 holds rank 1 everywhere."""
    assert model_for(_cfg(), "/base", _adapter(tmp_path, r=1))[1]["max_lora_rank"] == 8


def test_an_adapter_above_the_largest_rank_is_a_stage_error(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="merge_adapter: disk"):
        model_for(_cfg(), "/base", _adapter(tmp_path, r=1024))


def test_chat_template_is_written_as_a_file_byte_for_byte(tmp_path: Path) -> None:
    """vLLM decodes escapes in inline text; the file keeps a template with backslashes as trained."""
    text = "{% for m in messages %}{{ m['content'] | replace('\\n', ' ') }}\n{% endfor %}"
    path = write_chat_template(text, lambda p: tmp_path / p, tmp_path / "eval")
    assert path == str(tmp_path / "eval" / "chat_template.jinja")
    assert Path(path).read_text(encoding="utf-8") == text
    (tmp_path / "t.jinja").write_text("from a file {{ x }}", encoding="utf-8")
    path = write_chat_template("t.jinja", lambda p: tmp_path / p, tmp_path / "eval2")
    assert Path(path).read_text(encoding="utf-8") == "from a file {{ x }}"
    assert write_chat_template(None, lambda p: tmp_path / p, tmp_path / "eval3") is None


# --------------------------------------------------------------------------- plan time, through `ck validate`
SPEC = """
    experiment: vllm
    model: {{path: {model}{adapter}}}
    dataset: {{plugin: json-instruct, path: data.json}}
    {train}
    eval:
      - {{plugin: inspect, task: includes, backend: vllm{eval}}}
"""
TRAIN = "train: {plugin: trl, epochs: 1}"
LM_HEAD = "train: {plugin: torchtune, epochs: 1, lora: {targets: [q_proj, lm_head]}}"


def _validate(ck: Any, tmp_path: Path, model: Path, *, train: str = "", adapter: str = "", ev: str = "") -> str:
    (tmp_path / "data.json").write_text(json.dumps({"train": [{"input": "a", "output": "A"}] * 4,
                                                    "validation": [{"input": "c", "output": "C"}] * 2,
                                                    "test": [{"input": "b", "output": "B"}] * 2}))
    (tmp_path / "spec.yaml").write_text(textwrap.dedent(SPEC.format(model=model, adapter=adapter, train=train,
                                                                    eval=ev)).lstrip())
    res = ck("validate", "spec.yaml", cwd=tmp_path)
    assert res.returncode != 0, res.stdout
    return " ".join((res.stdout + res.stderr).split())


@NO_VLLM
@pytest.mark.parametrize(("train", "ev", "path", "message"), [
    (TRAIN, ", device: cpu", "eval[0].device", "device: cpu is not a GPU vLLM can serve on"),
    (TRAIN, ", device: 'cuda:x'", "eval[0].device", "device: cuda:x is not a GPU"),
    (LM_HEAD, "", "eval[0].merge_adapter", "LoRA on lm_head"),
    (LM_HEAD, ", merge_adapter: memory", "eval[0].merge_adapter", "Set merge_adapter: disk"),
    ("train: {plugin: torchtune, epochs: 1, apply_lora_to_output: true}", "", "eval[0].merge_adapter",
     "LoRA on lm_head"),
    ("train: {plugin: trl, epochs: 1, lora: {rank: 600}}", "", "eval[0].merge_adapter", "LoRA rank 600 is above"),
])
def test_plan_refuses_what_vllm_cannot_serve(ck: Any, tmp_path: Path, tiny_llama: Path, train: str, ev: str,
                                             path: str, message: str) -> None:
    out = _validate(ck, tmp_path, tiny_llama, train=train, ev=ev)
    assert message in out and path in out and "spec.yaml" in out, out


@NO_VLLM
@pytest.mark.parametrize(("extra", "message"), [
    ({"modules_to_save": ["lm_head"]}, "modules_to_save ['lm_head']"),
    ({"target_modules": ["q_proj", "embed_tokens"]}, "LoRA on embed_tokens"),
    ({"r": 1024}, "LoRA rank 1024 is above"),
])
def test_plan_refuses_a_given_adapter_vllm_cannot_serve(ck: Any, tmp_path: Path, tiny_llama: Path,
                                                       extra: dict[str, Any], message: str) -> None:
    adapter = _adapter(tmp_path / "given", **extra)
    out = _validate(ck, tmp_path, tiny_llama, adapter=f", adapter: {adapter}")
    assert message in out and "eval[0].merge_adapter" in out and "merge_adapter: disk" in out, out


@NO_VLLM
def test_merge_adapter_disk_and_gpu_lists_pass_the_vllm_checks(ck: Any, tmp_path: Path, tiny_llama: Path) -> None:
    """Past the vLLM checks, only the missing vllm package stops the plan."""
    out = _validate(ck, tmp_path, tiny_llama, train=LM_HEAD, ev=", merge_adapter: disk, device: 'cuda:0,1'")
    assert "needs the vllm package" in out, out


# --------------------------------------------------------------------------- merged copy on disk
def test_merged_dtype_follows_training_unless_the_eval_says(tmp_path: Path, tiny_llama: Path) -> None:
    adapter = _adapter(tmp_path)
    assert merged_dtype("float16", adapter, {"precision": "bf16"}, str(tiny_llama)) == "float16"
    assert merged_dtype("auto", adapter, {"precision": "bf16"}, str(tiny_llama)) == "bfloat16"
    assert merged_dtype("auto", adapter, {"precision": "fp32"}, str(tiny_llama)) == "float32"
    assert merged_dtype("auto", adapter, {"precision": "auto"}, str(tiny_llama)) == "float32"  # no GPU here
    (adapter / "cruijff_kit.json").write_text(json.dumps({"quantization": {"compute_dtype": "bfloat16"}}))
    assert merged_dtype("auto", adapter, {"precision": "fp32"}, str(tiny_llama)) == "bfloat16"
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    assert merged_dtype("auto", _adapter(tmp_path / "other"), None, str(base)) == "bfloat16"
    assert merged_dtype("auto", _adapter(tmp_path / "third"), None, str(tmp_path / "nowhere")) == "float32"


@pytest.fixture(scope="module")
def bf16_run(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained for real by the trl trainer with train.precision: bf16."""
    from trl_fixtures import prepare_run, write_trl_spec

    from cruijff_kit import status
    from cruijff_kit._engine.stage import run_stage

    folder = tmp_path_factory.mktemp("bf16")
    spec = write_trl_spec(folder, tiny_llama, train={
        "epochs": 1, "batch_size": 8, "learning_rate": 5e-2, "save_epochs": "last", "validation": False,
        "logging_steps": 1, "max_steps": 6, "precision": "bf16"})
    data = yaml.safe_load(spec.read_text())
    data["eval"] = [{"plugin": "inspect", "task": "includes", "include_base": False, "device": "cpu"}]
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    run_dir = prepare_run(spec)
    run_stage(run_dir, "train")
    assert status.stage_state(run_dir, "train") == status.DONE
    return run_dir


@pytest.mark.integration
def test_a_lora_adapter_records_its_precision_and_a_merged_copy_keeps_it(
        bf16_run: Path, tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluated where no GPU is seen, train.precision auto would resolve to fp32; the adapter's record says bf16."""
    import cruijff_kit.training

    monkeypatch.setattr(cruijff_kit.training, "run_device", lambda *a, **k: "cpu")  # the eval machine: no GPU
    adapter = bf16_run / "train" / "epoch_0" / "adapter"
    info = json.loads((adapter / "cruijff_kit.json").read_text())
    assert (info["trainer"], info["method"], info["precision"]) == ("trl", "lora", "bf16")
    unrecorded = _adapter(tmp_path)  # an adapter without cruijff_kit.json: the run's precision, resolved here
    assert merged_dtype("auto", unrecorded, {"precision": "auto"}, str(tiny_llama)) == "float32"
    assert merged_dtype("auto", adapter, {"precision": "auto"}, str(tiny_llama)) == "bfloat16"
    assert merged_dtype("auto", adapter, None, str(tmp_path / "nowhere")) == "bfloat16"
    assert merged_dtype("float16", adapter, None, str(tiny_llama)) == "float16"  # the eval's dtype still wins


@pytest.mark.integration
def test_torchtune_lora_adapters_record_their_precision(tmp_path: Path, tiny_llama: Path) -> None:
    """torchtune writes the resolved precision too (auto on this CPU: fp32), and it beats the base's own dtype."""
    pytest.importorskip("cruijff_kit_torchtune")
    from torchtune_fixtures import FAST_TRAIN, write_tt_spec
    from trl_fixtures import prepare_run

    from cruijff_kit._engine.stage import run_stage

    run_dir = prepare_run(write_tt_spec(tmp_path / "tt", tiny_llama, train={**FAST_TRAIN, "epochs": 1,
                                                                             "max_steps": 2}))
    run_stage(run_dir, "train")
    adapter = run_dir / "train" / "epoch_0" / "adapter"
    info = json.loads((adapter / "cruijff_kit.json").read_text())
    assert (info["trainer"], info["method"], info["precision"]) == ("torchtune", "lora", "fp32")
    base = tmp_path / "bf16-base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    assert merged_dtype("auto", adapter, None, str(base)) == "float32"


@pytest.mark.integration
def test_merged_copy_keeps_bf16_and_the_adapted_logits(bf16_run: Path, tiny_llama: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = bf16_run / "train" / "epoch_0" / "adapter"
    train = yaml.safe_load((bf16_run / "spec.yaml").read_text())["train"]
    dtype = merged_dtype("auto", adapter, train, str(tiny_llama))
    out = write_merged(str(tiny_llama), adapter, tmp_path / "merged", dtype)
    dtypes = set()
    for file in out.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            dtypes |= {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118
    assert dtypes == {"BF16"}
    assert json.loads((out / "config.json").read_text()).get("dtype", None) in ("bfloat16", None)
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(tiny_llama).get_vocab()

    ids = torch.tensor([[1, 5, 9, 17, 33, 40, 52, 60]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)(ids).logits
        base_model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
        base = base_model(ids).logits
        ref = PeftModel.from_pretrained(base_model, str(adapter))(ids).logits
    err = (merged - ref).abs().max().item()
    moved = (ref - base).abs().max().item()
    scale = ref.abs().max().item()
    assert err <= 1e-2 * scale, (err, scale)  # bf16 keeps 8 bits: rounding, not a different model
    assert moved > 5 * err, (moved, err)  # the adapter changed the logits far more than the rounding did


# --------------------------------------------------------------------------- the eval stage hands them over
@pytest.mark.integration
@pytest.mark.parametrize("merge", ["no", "disk"])
def test_eval_stage_hands_the_vllm_args_to_inspect(bf16_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   merge: str) -> None:
    """The stage's call of inspect (stopped there: no vllm here) gets the args above, and with merge_adapter:
    disk a bf16 merged copy and no LoRA."""
    import shutil

    import inspect_ai
    from safetensors import safe_open

    from cruijff_kit._engine.stage import run_stage

    run_dir = tmp_path / bf16_run.name
    shutil.copytree(bf16_run, run_dir, symlinks=True)
    spec = yaml.safe_load((run_dir / "spec.yaml").read_text())
    template = "{% for m in messages %}{{ m['content'] | replace('\\\\n', ' ') }}\\n{% endfor %}"
    spec["train"]["chat_template"] = template
    spec["eval"][0].update({"backend": "vllm", "device": "cuda:1", "merge_adapter": merge})
    (run_dir / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    seen: dict[str, Any] = {}

    def stop(task: Any, model: str, model_args: dict[str, Any], **kwargs: Any) -> None:
        seen.update(model=model, model_args=model_args)
        raise RuntimeError("stopped before serving")

    monkeypatch.setattr(inspect_ai, "eval", stop)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(vllm_server, "_launched", {})
    stage = next(s for s in json.loads((run_dir / "status.json").read_text())["stages"] if s.startswith("eval."))
    with pytest.raises(Exception, match="stopped before serving"):
        run_stage(run_dir, stage)
    assert list(vllm_server.launched()) == [seen["model"].removeprefix("vllm/").split(":")[0]]  # servers kept track of
    args = dict(seen["model_args"])
    assert Path(args.pop("chat_template")).read_text(encoding="utf-8") == template
    adapter = run_dir / "train" / "epoch_0" / "adapter"
    if merge == "no":
        assert seen["model"] == f"vllm/{spec['model']['path']}:{adapter}"
        assert (adapter / "tokenizer_config.json").is_file()  # the trl trainer saves it in the adapter folder
        assert args == {"device": "1", "max_lora_rank": 8, "tokenizer": str(adapter)}
    else:
        merged = Path(seen["model"].removeprefix("vllm/"))
        assert merged.name == "merged" and args == {"device": "1", "max_lora_rank": 8}  # served as a base
        with safe_open(str(next(merged.glob("*.safetensors"))), framework="pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118


def test_a_damaged_adapter_config_is_a_clear_error(tmp_path: Path) -> None:
    from cruijff_kit import CkError

    adapter = _adapter(tmp_path)
    (adapter / "adapter_config.json").write_text("{not json")
    with pytest.raises(CkError, match="adapter_config.json cannot be read as JSON"):
        model_for(_cfg(), "/base", adapter)
    (adapter / "adapter_config.json").write_text("[8]")
    with pytest.raises(CkError, match="is not a JSON object"):
        model_for(_cfg(), "/base", adapter)


# --------------------------------------------------------------------------- one process, several targets
@pytest.fixture
def fake_vllm_serve(monkeypatch: pytest.MonkeyPatch) -> Any:
    """inspect's own vllm provider, with the `vllm serve` process replaced by `sleep` and adapter loading by a
    check that the server was started with LoRA (vLLM has no adapter endpoint otherwise: the provider's 404)."""
    import subprocess
    import sys
    import types

    from inspect_ai.model._providers import vllm as provider
    from inspect_ai.model._providers._vllm_lora import _vllm_servers

    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))  # the provider imports it before starting
    monkeypatch.setattr(vllm_server, "_launched", {})
    launches: dict[int, dict[str, Any]] = {}  # pid -> server args and environment it was started with
    running: dict[int, subprocess.Popen[str]] = {}

    def start(cmd: list[str], **kw: Any) -> tuple[str, Any, int]:
        proc = subprocess.Popen(["sleep", "120"], text=True)
        launches[proc.pid] = {"model": cmd[2], **kw["server_args"], **kw["env"]}
        running[proc.pid] = proc
        return "http://127.0.0.1:9/v1", proc, 9

    def load(server: Any, adapter: Any) -> None:
        if not launches[server.process.pid].get("enable_lora"):
            raise RuntimeError("LoRA adapter endpoint not found. The vLLM server may not have been started with "
                               "--enable-lora.")
        server.loaded_adapters.add(adapter)

    monkeypatch.setattr(provider, "start_local_server", start)
    monkeypatch.setattr(provider, "ensure_adapter_loaded", load)
    before = set(_vllm_servers)
    yield launches, running
    for proc in running.values():
        proc.kill()
        proc.wait()
    for base in set(_vllm_servers) - before:
        del _vllm_servers[base]


def test_grouped_vllm_targets_each_get_a_server_started_for_them(tmp_path: Path, fake_vllm_serve: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """base, epoch_0, epoch_1 of one eval, then another eval's base with another dtype, then an hf eval, in one
    process as group_evals runs them: the server the base started has no LoRA, so epoch_0 gets its own; epoch_1
    (same rank, same tokenizer files) keeps it; another dtype restarts; a target not served by vLLM frees the GPU."""
    from inspect_ai.model import get_model

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    launches, running = fake_vllm_serve
    base = str(tmp_path / "base")
    epochs = [_adapter(tmp_path / "run" / f"e{n}") for n in (0, 1)]
    for adapter in epochs:
        (adapter.parent / "tokenizer.json").write_text('{"same": "tokenizer"}')
    template = str(tmp_path / "chat_template.jinja")
    cfg = _cfg(device="cuda:0")
    targets = [model_for(cfg, base, None, template), *(model_for(cfg, base, a, template) for a in epochs),
               model_for(_cfg(device="cuda:0", dtype="float16"), base, None, template)]

    pids = []
    for model, args in targets:  # what InspectEvaluator.evaluate does, then the provider's first generate()
        vllm_server.release_servers(model, args)
        api = get_model(model, memoize=False, **args).api
        api._resolve_server()
        pids.append(api._server.process.pid)

    assert pids[1] != pids[0] and pids[2] == pids[1] and pids[3] != pids[2], pids
    assert [launches[p].get("enable_lora") for p in dict.fromkeys(pids)] == [None, True, True]
    assert launches[pids[1]]["max_lora_rank"] == 8 and launches[pids[1]]["tokenizer"] == str(epochs[0].parent)
    assert launches[pids[3]]["dtype"] == "float16" and launches[pids[0]]["CUDA_VISIBLE_DEVICES"] == "0"
    assert [running[p].poll() is None for p in dict.fromkeys(pids)] == [False, False, True]  # closed ones ended
    assert vllm_server.release_servers("ck/" + base, {}) == [base]  # an hf eval next: the vLLM server ends
    assert running[pids[3]].poll() is not None and vllm_server.launched() == {}


def test_epochs_with_different_tokenizers_do_not_share_a_server(tmp_path: Path, fake_vllm_serve: Any) -> None:
    base = str(tmp_path / "base")
    first, second = (_adapter(tmp_path / f"e{n}") for n in (0, 1))
    (second.parent / "tokenizer.json").write_text('{"added": "tokens"}')
    a = model_for(_cfg(), base, first)
    b = model_for(_cfg(), base, second)
    assert vllm_server.release_servers(*a) == []
    assert vllm_server.release_servers(*a) == []  # the same target again: same server
    assert vllm_server.release_servers(*b) == [base]


def test_a_base_target_after_an_adapter_target_starts_with_a_rank_vllm_accepts(tmp_path: Path, fake_vllm_serve: Any,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A run with two tasks evaluates task A's epochs and then task B's base in one process: the provider's
    server entry keeps the adapter's LoRA settings (its raw rank 4, which vLLM refuses), so the base names 8."""
    from inspect_ai.model import get_model

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    launches, _ = fake_vllm_serve
    base = str(tmp_path / "base")
    adapter = _adapter(tmp_path / "run" / "e0", r=4)
    pids = []
    for model, args in (model_for(_cfg(), base, adapter), model_for(_cfg(), base, None)):
        vllm_server.release_servers(model, args)
        api = get_model(model, **args).api
        api._resolve_server()
        pids.append(api._server.process.pid)
    assert pids[0] != pids[1]
    assert launches[pids[0]]["max_lora_rank"] == 8 and launches[pids[1]]["max_lora_rank"] == 8


def test_epochs_with_the_same_chat_template_share_a_server(tmp_path: Path, fake_vllm_serve: Any) -> None:
    """Each target writes the training chat template into its own folder: the same text is the same server."""
    base = str(tmp_path / "base")
    epochs = [_adapter(tmp_path / f"e{n}") for n in (0, 1)]
    for adapter in epochs:
        (adapter.parent / "tokenizer.json").write_text('{"same": "tokenizer"}')
    templates = []
    for n, text in enumerate(("{{ messages }}", "{{ messages }}", "{{ other }}")):
        path = tmp_path / f"t{n}" / "chat_template.jinja"
        path.parent.mkdir()
        path.write_text(text)
        templates.append(str(path))
    assert vllm_server.release_servers(*model_for(_cfg(), base, epochs[0], templates[0])) == []
    assert vllm_server.release_servers(*model_for(_cfg(), base, epochs[1], templates[1])) == []
    assert vllm_server.release_servers(*model_for(_cfg(), base, epochs[1], templates[2])) == [base]
