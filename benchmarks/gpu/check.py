"""A prepared GPU check of cruijff-kit: training, evaluation and inference on one CUDA device.

Runs every step through the real ``ck`` CLI (``python -m cruijff_kit ...`` subprocesses) on specs it
writes, then reads back what the runs wrote (logs, ``cruijff_kit.json``, ``results.json``,
``metrics.jsonl``, inspect logs) and loads the adapters with ``cruijff_kit.inference``:

* device and precision chosen (cuda + bf16 on a GPU with native bf16, compute capability 8.0 or newer;
  cuda + fp32 on an older GPU such as a T4 or V100; cpu + fp32 with ``--dry-run``);
* trl LoRA (throughput against a plain TRL ``SFTTrainer`` script, both as subprocesses);
* trl QLoRA (4-bit ``Linear4bit`` layers, adapter files hold only LoRA weights, reloads the same);
* DPO with QLoRA on a generated preference set;
* torchtune LoRA (the exported PEFT adapter's logits equal torchtune's own model's);
* inspect evaluation of base and adapter (batch 8 greedy output equals batch 1, sample by sample),
  samples/s against plain batched ``generate``;
* the inference API on base + adapter;
* vLLM with the r=8 adapter when ``import vllm`` works.

Nothing is downloaded: the model is built here with ``ck models tiny`` (a larger random model on a
GPU, so tokens/s mean something) and the data with ``ck data capitalize``. ``--dry-run`` forces the
CPU and the tiny model and runs every step but vLLM. Each step prints PASS, FAIL or SKIP with its
numbers and seconds; the exit status is 1 when a step fails.
``python benchmarks/gpu/check.py [--dry-run] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

PROMPT = "Capitalize: {input}"
RANK = 8
LR = 3e-3
MAX_LEN = 64

#: What a step returns: its numbers and notes, printed after PASS.
Numbers = dict[str, Any]


class Skip(Exception):
    """A step that cannot run here (its library is missing)."""


class Check:
    """Shared state of one check: sizes, folders, and what earlier steps produced."""

    def __init__(self, work: Path, dry_run: bool) -> None:
        self.work = work
        self.dry_run = dry_run
        self.device = "cpu" if dry_run else "cuda"
        #: What precision ``auto`` should pick, and its torch dtype: fp32 on the CPU; on a GPU set by
        #: :func:`step_setup` from the device (:func:`gpu_precision`)
        self.precision, self.torch_dtype = "fp32", "float32"
        # sizes: tiny on CPU; on a GPU a larger random model and more rows, within the time budget
        self.hidden = 64 if dry_run else 512
        self.rows = (16, 4, 8) if dry_run else (512, 32, 64)
        self.epochs = 1
        self.batch_size = 8
        self.max_new_tokens = 8
        self.gpus = 0 if dry_run else 1
        #: Largest log-probability difference between two loads of one adapter (same batches, same device)
        self.reload_tolerance = 1e-6 if dry_run else 1e-3
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                    "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        if dry_run:
            self.env["CUDA_VISIBLE_DEVICES"] = ""
        self.model = work / "model"
        self.data = work / "capitalize.json"
        self.runs: dict[str, Path] = {}
        self.found: dict[str, Any] = {}

    # -- helpers -------------------------------------------------------------------------------

    def ck(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """``python -m cruijff_kit ARGS`` in the work folder; fails the step on a non-zero exit."""
        res = subprocess.run([sys.executable, "-m", "cruijff_kit", *args], cwd=self.work, env=self.env,
                             capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise AssertionError(f"ck {' '.join(args)} exited {res.returncode}:\n{res.stdout[-3000:]}\n"
                                 f"{res.stderr[-3000:]}")
        return res

    def spec(self, name: str, train: dict[str, Any] | None, *, dataset: dict[str, Any] | None = None,
             evals: list[dict[str, Any]] | None = None, model: dict[str, Any] | None = None) -> Path:
        """Write ``<name>.yaml`` (JSON is YAML) and return its path."""
        spec: dict[str, Any] = {
            "experiment": name, "output_dir": str(self.work / "out"), "seed": 1,
            "model": model or {"path": str(self.model)}, "prompt": {"template": PROMPT},
            "dataset": dataset or {"plugin": "json-instruct", "path": str(self.data)},
            "scheduler": {"plugin": "local", "resources": {"gpus": self.gpus}},
        }
        if train is not None:
            spec["train"] = train
        if evals:
            spec["eval"] = evals
        path = self.work / f"{name}.yaml"
        path.write_text(json.dumps(spec, indent=1))
        return path

    def need(self, experiment: str) -> Path:
        """The run folder an earlier step made; skips this step when that step did not make it."""
        if experiment not in self.runs:
            raise Skip(f"needs the {experiment} run, which an earlier step did not make")
        return self.runs[experiment]

    def run_dir(self, experiment: str) -> Path:
        """The one run folder of an experiment."""
        (run,) = (self.work / "out" / experiment / "runs").iterdir()
        return run

    def train_args(self, **extra: Any) -> dict[str, Any]:
        """The train section the trl runs share (precision auto: the check asserts what it became)."""
        return {"plugin": "trl", "epochs": self.epochs, "batch_size": self.batch_size, "learning_rate": LR,
                "max_seq_length": MAX_LEN, "logging_steps": 5, "lr_scheduler": "linear", "precision": "auto",
                "lora": {"rank": RANK, "dropout": 0.0}, **extra}

    def trl_line(self, run: Path, stderr: str | None = None) -> tuple[str, str]:
        """(device, precision) from the trl trainer's ``[trl] METHOD OBJECTIVE on DEVICE (PRECISION)`` line,
        in ``stderr`` (``ck stage``) or in the run's ``logs/train.err`` (``ck run``)."""
        text = stderr if stderr is not None else (run / "logs" / "train.err").read_text()
        found = re.search(r"\[trl\] \S+ \S+ on (\S+) \((\w+)\)", text)
        assert found, f"no '[trl] ... on DEVICE (PRECISION)' line in the train stage's output of {run.name}"
        return found.group(1), found.group(2)

    def assert_device(self, device: str, precision: str, where: str) -> None:
        assert device.split(":")[0] == self.device and precision == self.precision, (
            f"{where}: trained on {device} ({precision}), expected {self.device} ({self.precision})")


def metric_rows(run: Path) -> list[dict[str, Any]]:
    """The run's ``train/metrics.jsonl`` rows."""
    lines = (run / "train" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def median(values: list[float]) -> float:
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def peak_mb(rows: list[dict[str, Any]]) -> float | None:
    """The largest ``peak_memory_mb`` the trainer recorded (GPU memory on a GPU; None when it recorded none)."""
    peaks = [r["peak_memory_mb"] for r in rows if r.get("peak_memory_mb") is not None]
    return max(peaks) if peaks else None


def adapter_files_check(adapter: Path, model: Path) -> Numbers:
    """Adapter files hold LoRA weights only, far smaller than the base; the numbers."""
    from safetensors.torch import load_file

    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    keys = list(tensors)
    assert keys and all("lora_" in k for k in keys), f"non-LoRA tensors in the adapter: {[k for k in keys if 'lora_' not in k][:5]}"
    # LoRA B starts at zero: a B that is still zero everywhere means the adapter was never trained
    moved = max(float(t.abs().max()) for k, t in tensors.items() if "lora_B" in k)
    assert moved > 0, f"every lora_B tensor of {adapter} is zero: the adapter was not trained"
    size = (adapter / "adapter_model.safetensors").stat().st_size
    base = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    assert not [p.name for p in adapter.iterdir() if p.name.startswith(("model", "pytorch_model"))], "base weights saved"
    assert size < 0.25 * base, f"adapter {size} bytes is not far below the base's {base} bytes"
    return {"adapter_tensors": len(keys), "lora_b_max": f"{moved:.2e}", "adapter_kb": round(size / 1024, 1),
            "base_kb": round(base / 1024, 1)}


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def gpu_peak() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None


def test_prompts(c: Check) -> list[str]:
    return [PROMPT.format(input=r["input"]) for r in json.loads(c.data.read_text())["test"]]


def same_logprobs(a: Any, b: Any, prompts: list[str], completions: list[str]) -> float:
    """Max |log p| difference of two loaded models on the same completions."""
    la, lb = a.token_logprobs(prompts, completions), b.token_logprobs(prompts, completions)
    return max(abs(x[1] - y[1]) for ra, rb in zip(la, lb, strict=True) for x, y in zip(ra, rb, strict=True))


# -- the steps ------------------------------------------------------------------------------------


def gpu_precision() -> tuple[str, str]:
    """(precision, torch dtype name) that precision ``auto`` should pick on this process's CUDA device:
    bf16 where the GPU computes in it natively (compute capability 8.0 or newer), else fp32 (a T4 or V100
    only emulates bf16)."""
    from cruijff_kit.training import supports_bf16

    return ("bf16", "bfloat16") if supports_bf16("cuda") else ("fp32", "float32")


def step_setup(c: Check) -> Numbers:
    import torch

    capability = "none"
    if not c.dry_run:
        assert torch.cuda.is_available(), "no CUDA device is visible: run on a GPU machine, or pass --dry-run"
        c.precision, c.torch_dtype = gpu_precision()
        capability = ".".join(map(str, torch.cuda.get_device_capability()))
    c.ck("models", "tiny", str(c.model), "--hidden-size", str(c.hidden))
    train, val, test = c.rows
    c.ck("data", "capitalize", str(c.data), "--train", str(train), "--validation", str(val), "--test", str(test))
    cfg = json.loads((c.model / "config.json").read_text())
    c.found["layers"] = int(cfg["num_hidden_layers"])
    return {"device": c.device, "precision": c.precision, "hidden_size": cfg["hidden_size"],
            "layers": cfg["num_hidden_layers"],
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
            "compute_capability": capability}


def step_trl_lora(c: Check) -> Numbers:
    evals = [{"plugin": "inspect", "task": "exact-match", "generation": {"max_tokens": c.max_new_tokens},
              "batch_size": 8},
             {"plugin": "inspect", "task": "exact-match", "name": "one-at-a-time",
              "generation": {"max_tokens": c.max_new_tokens}, "batch_size": 1}]
    spec = c.spec("trl-lora", c.train_args(), evals=evals)
    c.ck("run", str(spec), "--dry-run")  # writes the run folder; the train stage is timed alone below
    run = c.runs["trl-lora"] = c.run_dir("trl-lora")
    t = time.perf_counter()
    res = c.ck("stage", str(run), "train")
    wall = time.perf_counter() - t
    c.assert_device(*c.trl_line(run, res.stderr), "trl lora")
    adapter = run / "train" / "epoch_0" / "adapter"
    info = json.loads((adapter / "cruijff_kit.json").read_text())
    assert info["method"] == "lora" and info["trainer"] == "trl", info
    rows = metric_rows(run)
    tps = [r["tokens_per_second"] for r in rows if r.get("tokens_per_second")]
    assert tps, "no tokens_per_second in metrics.jsonl"
    c.found["ck_train_wall"] = wall
    return {"precision": c.precision, "stage_wall_s": round(wall, 2), "tokens_per_s_logged": round(median(tps), 1),
            "trainer_peak_mb": peak_mb(rows), **adapter_files_check(adapter, c.model)}


PLAIN_TRL = r'''
import json, sys, time
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

a = json.loads(sys.argv[1])
data = json.loads(open(a["data"]).read())
def chat(rows):
    return Dataset.from_list([{"messages": [{"role": "user", "content": a["prompt"].format(input=r["input"])},
                                            {"role": "assistant", "content": r["output"]}]} for r in rows])
cpu = a["device"] == "cpu"
tok = AutoTokenizer.from_pretrained(a["model"])
model = AutoModelForCausalLM.from_pretrained(a["model"], dtype=getattr(torch, a["dtype"]))
args = SFTConfig(output_dir=a["out"], seed=1, num_train_epochs=a["epochs"], per_device_train_batch_size=a["batch"],
                 per_device_eval_batch_size=a["batch"], learning_rate=a["lr"], lr_scheduler_type="linear",
                 max_length=a["max_len"], assistant_only_loss=True, use_cpu=cpu, bf16=a["dtype"] == "bfloat16",
                 eval_strategy="epoch", save_strategy="no", logging_steps=5, report_to="none", disable_tqdm=True,
                 dataloader_num_workers=0)
trainer = SFTTrainer(model=model, args=args, train_dataset=chat(data["train"]), eval_dataset=chat(data["validation"]),
                     processing_class=tok, peft_config=LoraConfig(r=a["rank"], lora_alpha=2 * a["rank"],
                     lora_dropout=0.0, task_type="CAUSAL_LM", target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
if torch.cuda.is_available():
    torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
trainer.train()
seconds = time.perf_counter() - t
trainer.save_model(a["out"] + "/adapter")
peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
print("PLAIN " + json.dumps({"tokens": float(trainer._total_train_tokens), "train_seconds": seconds, "peak_mb": peak}))
'''


def step_plain_trl(c: Check) -> Numbers:
    script = c.work / "plain_trl.py"
    script.write_text(PLAIN_TRL)
    args = {"data": str(c.data), "model": str(c.model), "out": str(c.work / "plain-trl"), "prompt": PROMPT,
            "device": c.device, "dtype": c.torch_dtype, "epochs": c.epochs, "batch": c.batch_size, "lr": LR,
            "max_len": MAX_LEN, "rank": RANK}
    t = time.perf_counter()
    res = subprocess.run([sys.executable, str(script), json.dumps(args)], cwd=c.work, env=c.env, capture_output=True,
                         text=True, timeout=600)
    wall = time.perf_counter() - t
    assert res.returncode == 0, f"plain TRL script exited {res.returncode}:\n{res.stderr[-3000:]}"
    out = json.loads(next(line for line in res.stdout.splitlines() if line.startswith("PLAIN "))[6:])
    tokens = out["tokens"]
    assert tokens > 0
    ck_wall = c.found.get("ck_train_wall")
    nums: Numbers = {"process_wall_s": round(wall, 2), "tokens": int(tokens),
                     "plain_tokens_per_s_in_train": round(tokens / out["train_seconds"], 1),
                     "plain_tokens_per_s_process": round(tokens / wall, 1), "plain_peak_gpu_mb": out["peak_mb"]}
    if ck_wall:
        nums["ck_tokens_per_s_process"] = round(tokens / ck_wall, 1)
        nums["ck_over_plain_wall"] = round(ck_wall / wall, 3)
    return nums


def step_trl_qlora(c: Check) -> Numbers:
    spec = c.spec("trl-qlora", c.train_args(method="qlora", validation=False))
    t = time.perf_counter()
    c.ck("run", str(spec))
    wall = time.perf_counter() - t
    run = c.runs["trl-qlora"] = c.run_dir("trl-qlora")
    c.assert_device(*c.trl_line(run), "trl qlora")
    adapter = run / "train" / "epoch_0" / "adapter"
    info = json.loads((adapter / "cruijff_kit.json").read_text())
    assert info["method"] == "qlora" and info["quantization"]["quant_type"] == "nf4", info
    nums = adapter_files_check(adapter, c.model)

    from bitsandbytes.nn import Linear4bit

    from cruijff_kit.inference import load

    reset_peak()
    first = load(run, device=c.device, seed=0)
    four_bit = [n for n, m in first.model.named_modules() if isinstance(m, Linear4bit)]
    assert len(four_bit) == 7 * c.found["layers"], f"{len(four_bit)} Linear4bit layers, expected 7 per decoder layer"
    assert first.quantization["quantization"] == "nf4", first.quantization
    prompts = test_prompts(c)
    answers = [p.split(": ", 1)[1].upper() for p in prompts]
    second = load(run, device=c.device, seed=0)
    diff = same_logprobs(first, second, prompts, answers)
    assert diff <= c.reload_tolerance, f"a second load of the QLoRA adapter gives other log-probabilities (max diff {diff})"
    peak = gpu_peak()
    del first, second
    return {"stage_wall_s": round(wall, 2), "linear4bit_layers": len(four_bit), "reload_max_diff": f"{diff:.1e}",
            "trainer_peak_mb": peak_mb(metric_rows(run)), "load_peak_gpu_mb": peak, **nums}


def step_dpo_qlora(c: Check) -> Numbers:
    data = json.loads(c.data.read_text())
    rows = []
    for i, r in enumerate(data["train"] + data["validation"]):
        prompt = [{"role": "user", "content": PROMPT.format(input=r["input"])}]
        for text, score in ((r["output"], 1.0), (r["input"], 0.0)):
            rows.append({"prompt": prompt, "completion": text, "conv_id": f"c{i}", "turn_id": 0, "score": score})
    pairs = c.work / "preferences.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = {"plugin": "multiturn", "path": str(pairs), "pairs": True,
               "splits": {"train": 0.8, "validation": 0.2}}
    spec = c.spec("dpo-qlora", c.train_args(method="qlora", objective="dpo"), dataset=dataset)
    t = time.perf_counter()
    c.ck("run", str(spec))
    wall = time.perf_counter() - t
    run = c.runs["dpo-qlora"] = c.run_dir("dpo-qlora")
    c.assert_device(*c.trl_line(run), "dpo qlora")
    adapter = run / "train" / "epoch_0" / "adapter"
    info = json.loads((adapter / "cruijff_kit.json").read_text())
    assert info["method"] == "qlora", info
    mrows = metric_rows(run)
    losses = [r["train_loss"] for r in mrows if r.get("train_loss") is not None]
    assert losses and all(math.isfinite(x) for x in losses), losses
    return {"stage_wall_s": round(wall, 2), "pairs": len(rows) // 2, "first_loss": round(losses[0], 4),
            "last_loss": round(losses[-1], 4), "trainer_peak_mb": peak_mb(mrows), **adapter_files_check(adapter, c.model)}


def _import_torchtune() -> Any:
    """torchtune 0.6.1 beside a torchao that removed two quantizer names: define them first."""
    import torchao.quantization as quantization

    def removed(*_args: Any, **_kwargs: Any) -> Any:
        raise NotImplementedError("torchtune's int4 quantizers need an older torchao")

    for name in ("int4_weight_only", "int8_dynamic_activation_int4_weight"):
        if not hasattr(quantization, name):
            setattr(quantization, name, removed)
    import torchtune

    return torchtune


def _peft_to_tune(peft_sd: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """PEFT LoRA keys -> torchtune's, undoing the q/k rotary permutation of Llama-style exports."""
    names = {"self_attn.q_proj": "attn.q_proj", "self_attn.k_proj": "attn.k_proj",
             "self_attn.v_proj": "attn.v_proj", "self_attn.o_proj": "attn.output_proj",
             "mlp.gate_proj": "mlp.w1", "mlp.down_proj": "mlp.w2", "mlp.up_proj": "mlp.w3"}
    heads, kv, dim = cfg.model.num_heads, cfg.model.num_kv_heads, cfg.model.embed_dim
    head_dim = dim // heads
    permute = "qwen2" not in cfg.model._component_
    out = {}
    for key, value in peft_sd.items():
        rest = key.removeprefix("base_model.model.model.")
        layer, module_ab = rest.split(".", 2)[1], rest.split(".", 2)[2]
        module, ab = module_ab.rsplit(".lora_", 1)
        ab = ab.split(".")[0].lower()
        if permute and ab == "b" and module in ("self_attn.q_proj", "self_attn.k_proj"):
            n = heads if module.endswith("q_proj") else kv
            r = value.shape[-1]
            value = value.view(n, 2, head_dim // 2, r).transpose(1, 2).reshape(n * head_dim, r)
        out[f"layers.{layer}.{names[module]}.lora_{ab}.weight"] = value
    return out


#: Largest |torchtune - PEFT| logit difference accepted (both in fp32 on the CPU).
TT_TOLERANCE = 1e-3


def step_torchtune(c: Check) -> Numbers:
    train = {"plugin": "torchtune", "epochs": c.epochs, "batch_size": c.batch_size, "learning_rate": 0.01,
             "max_seq_length": MAX_LEN, "precision": "auto", "lora": {"rank": RANK, "dropout": 0.0}}
    spec = c.spec("torchtune-lora", train)
    t = time.perf_counter()
    c.ck("run", str(spec))
    wall = time.perf_counter() - t
    run = c.runs["torchtune-lora"] = c.run_dir("torchtune-lora")
    import torch
    from omegaconf import OmegaConf
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    cfg = OmegaConf.load(run / "train" / "torchtune.yaml")
    device, dtype = str(cfg.device), str(cfg.dtype)
    c.assert_device(device, dtype, "torchtune")
    _import_torchtune()
    from torchtune import config, training

    # torchtune's own model with the trained weights, against the exported adapter loaded with PEFT: fp32, CPU
    model = config.instantiate(cfg.model)
    ckpt = config.instantiate(cfg.checkpointer)
    model.load_state_dict(ckpt.load_checkpoint()[training.MODEL_KEY], strict=False)
    adapter = run / "train" / "epoch_0" / "adapter"
    loaded = model.load_state_dict(_peft_to_tune(load_file(str(adapter / "adapter_model.safetensors")), cfg),
                                   strict=False)
    assert not loaded.unexpected_keys, loaded.unexpected_keys
    model = model.float().eval()
    base = AutoModelForCausalLM.from_pretrained(cfg.checkpointer.checkpoint_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(adapter)).eval()
    vocab = int(base.config.vocab_size)
    tokens = torch.randint(0, min(vocab, 700), (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(tokens)
        theirs = peft_model(input_ids=tokens).logits
        with peft_model.disable_adapter():
            plain = peft_model(input_ids=tokens).logits
    diff, effect = float((ours - theirs).abs().max()), float((theirs - plain).abs().max())
    assert effect > 1e-4, f"the adapter changes the logits by {effect} only: nothing was trained"
    assert diff < TT_TOLERANCE, f"torchtune and PEFT logits differ by {diff} (tolerance {TT_TOLERANCE})"
    rows = metric_rows(run)
    tps = [r["tokens_per_second"] for r in rows if r.get("tokens_per_second")]
    return {"precision": dtype, "stage_wall_s": round(wall, 2), "logit_max_diff": f"{diff:.2e}",
            "adapter_effect": f"{effect:.2e}", "tokens_per_s_logged": round(median(tps), 1) if tps else None,
            "trainer_peak_mb": peak_mb(rows)}


def _completions(path: Path) -> tuple[dict[Any, str], float]:
    """Sample id -> completion of an inspect log, and its samples per second (from the first sample's
    start to the last sample's end, as the log records them)."""
    from inspect_ai.log import read_eval_log

    def when(value: Any) -> datetime:
        return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))

    log = read_eval_log(str(path))
    assert log.status == "success", f"{path}: {log.status}"
    start = min(when(s.started_at) for s in log.samples)
    end = max(when(s.completed_at) for s in log.samples)
    return {s.id: s.output.completion for s in log.samples}, len(log.samples) / (end - start).total_seconds()


def step_eval(c: Check) -> Numbers:
    run = c.need("trl-lora")
    spec = c.work / "trl-lora.yaml"
    c.ck("run", str(spec))  # train is done: this runs the four evaluations
    results = json.loads((run / "eval" / "results.json").read_text())
    nums: Numbers = {}
    for target in ("base", "epoch_0"):
        batched, rate = _completions(run / results["exact-match"][target]["log"])
        single, _ = _completions(run / results["one-at-a-time"][target]["log"])
        assert batched.keys() == single.keys() and len(batched) == c.rows[2], (len(batched), len(single))
        differ = [k for k in batched if batched[k] != single[k]]
        assert not differ, f"{target}: batch 8 and batch 1 greedy outputs differ on samples {differ[:5]}: " \
            f"{[(batched[k], single[k]) for k in differ[:3]]}"
        assert results["exact-match"][target]["dtype"] == c.torch_dtype, results["exact-match"][target]
        nums[f"{target}_samples_per_s"] = round(rate, 2)
        nums[f"{target}_accuracy"] = results["exact-match"][target]["match/accuracy"]["value"]
    c.found["eval_rate"] = nums["epoch_0_samples_per_s"]
    return nums


def step_plain_generate(c: Check) -> Numbers:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = c.need("trl-lora") / "train" / "epoch_0" / "adapter"
    dtype = getattr(torch, c.torch_dtype)
    reset_peak()
    tok = AutoTokenizer.from_pretrained(adapter)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    base = AutoModelForCausalLM.from_pretrained(c.model, dtype=dtype).to(c.device)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in test_prompts(c)]
    t = time.perf_counter()
    outs = []
    with torch.no_grad():
        for i in range(0, len(texts), 8):
            enc = tok(texts[i:i + 8], return_tensors="pt", padding=True, add_special_tokens=False).to(c.device)
            ids = model.generate(**enc, max_new_tokens=c.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            outs += tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    if c.device == "cuda":
        torch.cuda.synchronize()
    rate = len(texts) / (time.perf_counter() - t)
    nums: Numbers = {"plain_samples_per_s": round(rate, 2), "peak_gpu_mb": gpu_peak()}
    if "eval_rate" in c.found:
        nums["eval_over_plain_rate"] = round(c.found["eval_rate"] / rate, 3)
    del model, base
    return nums


def step_inference(c: Check) -> Numbers:
    from cruijff_kit.inference import load

    run = c.need("trl-lora")
    prompts = test_prompts(c)
    answers = [p.split(": ", 1)[1].upper() for p in prompts]
    reset_peak()
    tuned = load(run, device=c.device, seed=0, batch_size=8)
    assert str(tuned.model.dtype).removeprefix("torch.") == c.torch_dtype, tuned.model.dtype
    t = time.perf_counter()
    batched = tuned.generate(prompts, max_new_tokens=c.max_new_tokens)
    rate = len(prompts) / (time.perf_counter() - t)
    tuned.batch_size = 1
    single = tuned.generate(prompts, max_new_tokens=c.max_new_tokens)
    assert batched == single, f"inference API: batch 8 and batch 1 differ: {list(zip(batched, single, strict=True))[:3]}"
    tuned.batch_size = 8
    again = load(run, device=c.device, seed=0, batch_size=8)
    reload_diff = same_logprobs(tuned, again, prompts, answers)
    assert reload_diff <= c.reload_tolerance, f"a second load gives other log-probabilities (max diff {reload_diff})"
    del again
    base = load(c.model, device=c.device, seed=0)
    effect = same_logprobs(tuned, base, prompts, answers)
    assert effect > 1e-4, f"the adapter changes the log-probabilities by {effect} only"
    return {"generate_samples_per_s": round(rate, 2), "reload_max_diff": f"{reload_diff:.1e}",
            "adapter_logprob_effect": f"{effect:.2e}",
            "peak_gpu_mb": gpu_peak()}


def step_vllm(c: Check) -> Numbers:
    if c.dry_run:
        raise Skip("vLLM needs a GPU: not run with --dry-run")
    adapter = c.need("trl-lora") / "train" / "epoch_0" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == RANK
    evals = [{"plugin": "inspect", "task": "exact-match", "backend": "vllm",
              "generation": {"max_tokens": c.max_new_tokens}}]
    spec = c.spec("vllm", None, evals=evals, model={"path": str(c.model), "adapter": str(adapter)})
    t = time.perf_counter()
    c.ck("run", str(spec))
    wall = time.perf_counter() - t
    results = json.loads((c.run_dir("vllm") / "eval" / "results.json").read_text())["exact-match"]
    assert all(e["status"] == "success" for e in results.values()), results
    samples = sum(e["samples"] for e in results.values())
    return {"targets": ",".join(results), "samples": samples, "stage_wall_s": round(wall, 2),
            "samples_per_s_with_load": round(samples / wall, 2)}


#: (name, libraries it imports, function) in the order they run.
STEPS: list[tuple[str, tuple[str, ...], Callable[[Check], Numbers]]] = [
    ("setup: device, model, data", ("torch",), step_setup),
    ("trl LoRA (ck stage train)", ("trl", "peft"), step_trl_lora),
    ("plain TRL SFTTrainer (same rows, config)", ("trl", "peft"), step_plain_trl),
    ("trl QLoRA 4-bit", ("trl", "bitsandbytes"), step_trl_qlora),
    ("DPO with QLoRA", ("trl", "bitsandbytes"), step_dpo_qlora),
    ("torchtune LoRA", ("torchtune", "torchao", "omegaconf"), step_torchtune),
    ("inspect eval base + adapter, batch 8 == batch 1", ("inspect_ai",), step_eval),
    ("plain batched generate", ("peft",), step_plain_generate),
    ("inference API base + adapter", ("peft",), step_inference),
    ("vLLM with the r=8 adapter", ("vllm",), step_vllm),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU and the tiny model; every step but vLLM runs")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary folder)")
    args = ap.parse_args()
    if args.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: this process sees no GPU either
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.keep or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        c = Check(work, args.dry_run)
        print(f"GPU check: mode {'dry-run (cpu, tiny model)' if args.dry_run else 'cuda'}, work folder {work}",
              flush=True)
        summary: list[tuple[str, str, float]] = []
        for name, libs, fn in STEPS:
            t = time.perf_counter()
            missing = [lib for lib in libs if importlib.util.find_spec(lib) is None]
            try:
                if missing:
                    raise Skip(f"{missing[0]} not installed: carry its wheel, see README")
                nums = fn(c)
                verdict = "PASS"
                detail = " ".join(f"{k}={v}" for k, v in nums.items())
            except Skip as why:
                verdict, detail = "SKIP", f"({why})"
            except Exception as err:  # a failed step is reported and the check goes on
                verdict = "FAIL"
                detail = f"{type(err).__name__}: {err}"
                if not isinstance(err, AssertionError):
                    detail += "\n" + traceback.format_exc(limit=4)
            if verdict == "SKIP" and args.dry_run and name != STEPS[-1][0]:
                verdict = "FAIL"  # in --dry-run every step but vLLM must run
            seconds = time.perf_counter() - t
            print(f"{verdict} {name} ({seconds:.1f} s) {detail}", flush=True)
            summary.append((name, verdict, seconds))
    total = time.perf_counter() - start
    print("\n| step | result | seconds |\n|---|---|---|")
    for name, verdict, seconds in summary:
        print(f"| {name} | {verdict} | {seconds:.1f} |")
    failed = [n for n, v, _ in summary if v == "FAIL"]
    print(f"total {total:.1f} s; {sum(v == 'PASS' for _, v, _ in summary)} passed, {len(failed)} failed, "
          f"{sum(v == 'SKIP' for _, v, _ in summary)} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
