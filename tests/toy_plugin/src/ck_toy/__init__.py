"""A third-party plugin, as a user would write one: a trainer, an evaluator and a dataset.

The trainer does no maths: it counts steps, sleeps, keeps resumable state, and writes an adapter
folder per saved epoch, so the core's bookkeeping can be tested quickly and without torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from pydantic import Field

from cruijff_kit import Dataset, DatasetConfig, EvalConfig, Evaluator, TrainConfig, Trainer, hookimpl


class ToyTrainConfig(TrainConfig):
    steps_per_epoch: int = Field(3, gt=0)
    step_seconds: float = 0.0
    fail_at_step: int | None = None
    #: print this environment variable's value (stdout, stderr, a progress line, a child process)
    print_env: str | None = None
    #: start a worker process that records its pid and sleeps this long, and wait for it
    worker_seconds: float = 0.0
    #: say that this trainer's work runs on the GPUs its resources ask for (a stage then checks for them)
    uses_gpus: bool = False
    #: print what third-party libraries print: a known noise warning, a known noise line written
    #: straight to descriptor 2 (as C code does) and a real warning (see `_emit_noise`)
    emit_noise: bool = False
    #: raise RuntimeError with this message when training starts (after `emit_noise`)
    fail_with: str | None = None


#: What the child of ``print_env`` runs: the value on both streams, and a last line without its end.
_CHILD = ("import os, sys; v = os.environ[sys.argv[1]]; print('child out', v, flush=True); "
          "print('child err', v, file=sys.stderr, flush=True); os.write(1, ('child partial ' + v).encode())")
#: What the worker of ``worker_seconds`` runs: record its pid (the handshake), then sleep.
_WORKER = ("import json, os, sys, time; open(sys.argv[1] + '.tmp', 'w').write(json.dumps({'worker': os.getpid(), "
           "'stage': os.getppid()})); os.replace(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(float(sys.argv[2]))")


def _print_env(name: str) -> None:
    value = os.environ.get(name, "")
    print(f"stage out {name}={value}", flush=True)
    print(f"stage err {name}={value}", file=sys.stderr, flush=True)
    for pct in (50, 100):  # a progress bar that redraws its line
        print(f"\r{pct}% {value}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-c", _CHILD, name], check=True)
    print(flush=True)


#: A known noise warning (transformers' deprecation, as peft triggers it), a known noise line of a C
#: extension, and a real warning: only the last stays in the log.
NOISE_WARNING = ("`is_gradient_checkpointing` is deprecated and will be removed in v6. Use "
                 "`is_activation_checkpointing` instead.")
NOISE_LINE = b"Failed to load /opt/site-packages/torchao/_C_mxfp8.so: Could not load this library\n"
REAL_WARNING = "toy: 3 rows have an empty answer"


def _emit_noise() -> None:
    import warnings

    warnings.warn(NOISE_WARNING, FutureWarning, stacklevel=1)
    sys.stderr.flush()
    os.write(2, NOISE_LINE)
    warnings.warn(REAL_WARNING, UserWarning, stacklevel=1)
    sys.stderr.flush()


class ToyTrainer(Trainer):
    name = "toy"
    Config = ToyTrainConfig
    description = "Counts steps and writes fake adapters (tests only)."

    def uses_gpus(self) -> bool:
        return self.config.uses_gpus

    def train(self, ctx: Any) -> None:
        cfg = self.config
        state_file = ctx.state_dir / "state.json"
        step = 0
        if ctx.resume_from() is not None and state_file.exists():
            step = json.loads(state_file.read_text())["step"]
            print(f"resuming from step {step}", flush=True)
        if cfg.print_env:
            _print_env(cfg.print_env)
        if cfg.emit_noise:
            _emit_noise()
        if cfg.fail_with is not None:
            raise RuntimeError(cfg.fail_with)
        if cfg.worker_seconds:  # like a launcher's worker; subprocess.run ends it when this stage is stopped
            subprocess.run([sys.executable, "-c", _WORKER, str(ctx.run_dir / "toy-pids.json"),
                            str(cfg.worker_seconds)], check=True)
        total = cfg.epochs * cfg.steps_per_epoch
        saved = set(cfg.saved_epochs())
        while step < total:
            if cfg.fail_at_step is not None and step == cfg.fail_at_step:
                raise RuntimeError(f"toy failure at step {step}" + (
                    f" ({os.environ.get(cfg.print_env, '')})" if cfg.print_env else ""))
            time.sleep(cfg.step_seconds)
            step += 1
            epoch = (step - 1) // cfg.steps_per_epoch
            ctx.log_metrics(step, epoch=epoch, train_loss=1.0 / step, learning_rate=cfg.learning_rate,
                            pid=os.getpid(), cuda=os.environ.get("CUDA_VISIBLE_DEVICES"), time=time.time())
            ctx.state_dir.mkdir(parents=True, exist_ok=True)
            tmp = state_file.with_name("state.json.tmp")  # atomic: a reader or a kill never sees it half written
            tmp.write_text(json.dumps({"step": step}))
            os.replace(tmp, state_file)
            if step % cfg.steps_per_epoch == 0 and epoch in saved:
                out = ctx.adapter_dir(epoch)
                out.mkdir(parents=True, exist_ok=True)
                (out / "adapter_config.json").write_text(json.dumps(
                    {"base_model_name_or_path": ctx.model_path, "r": cfg.lora.rank}))
                (out / "adapter_model.safetensors").write_bytes(b"toy")


class ToyEvalConfig(EvalConfig):
    #: sleep this long before scoring (a stage that is still running when a test looks)
    sleep_seconds: float = Field(0.0, ge=0)
    #: raise RuntimeError with this message instead of scoring
    fail_with: str | None = None
    #: the targets (e.g. ["epoch_0"]) that `sleep_seconds` and `fail_with` apply to; all when unset
    only_targets: list[str] | None = None


class ToyEvaluator(Evaluator):
    name = "toy-eval"
    Config = ToyEvalConfig
    description = "Scores 1.0 for adapters and 0.5 for the base model (tests only)."

    def uses_gpus(self) -> bool:
        return False

    def evaluate(self, ctx: Any) -> dict[str, Any]:
        data = ctx.dataset()
        rows = data[self.config.split]
        ctx.eval_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.config
        applies = cfg.only_targets is None or ctx.target.name in cfg.only_targets
        if cfg.sleep_seconds and applies:
            time.sleep(cfg.sleep_seconds)
        if cfg.fail_with is not None and applies:
            raise RuntimeError(cfg.fail_with)
        score = 0.5 if ctx.target.is_base else 1.0
        (ctx.eval_dir / "log.json").write_text(json.dumps({"target": ctx.target.name, "n": len(rows),
                                                              "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                                              "pid": os.getpid()}))
        return {"accuracy": {"value": score, "stderr": 0.0}, "samples": len(rows),
                "system": ctx.prompt.system}


class ToyDataConfig(DatasetConfig):
    rows: int = Field(8, gt=0)


class ToyDataset(Dataset):
    name = "toy-data"
    Config = ToyDataConfig

    def load(self, prompt: Any) -> dict[str, list[dict[str, Any]]]:
        def rows(n: int) -> list[dict[str, Any]]:
            return [{"messages": [{"role": "user", "content": f"w{i}"},
                                  {"role": "assistant", "content": f"W{i}"}]} for i in range(n)]

        return {"train": rows(self.config.rows), "validation": rows(2), "test": rows(3)}

    def describe(self) -> dict[str, Any]:
        return {"rows": {"train": self.config.rows, "validation": 2, "test": 3}}


@hookimpl
def register_trainers(register):
    register(ToyTrainer)


@hookimpl
def register_evaluators(register):
    register(ToyEvaluator)


@hookimpl
def register_datasets(register):
    register(ToyDataset)
