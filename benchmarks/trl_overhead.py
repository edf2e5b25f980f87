"""Overhead of the `trl` trainer over a plain TRL script doing the same work.

Trains a tiny Llama (or ``--model DIR``) on a generated capitalization task, alternating two paths
in one process so imports are paid once:

* ours: ``ck stage RUN_DIR train`` in-process (dataset plugin, validation loss each epoch, metrics
  rows, a PEFT adapter per epoch, resumable state, status bookkeeping);
* plain: the same rows as chat messages, ``SFTTrainer`` with the same ``SFTConfig`` values and LoRA
  config, evaluation and a checkpoint each epoch, and ``save_model`` at the end.

For each path it reports the wall time of the whole run (data + model loading + training + saving),
its CPU time, and the training throughput (tokens trained / seconds inside ``SFTTrainer.train``),
as best-of and median over the repeats, and the load average before and after. The two paths
alternate, and which goes first alternates too, so load that comes and goes falls on both. Run by
hand: ``python benchmarks/trl_overhead.py [--rows 256] [--epochs 2] [--repeats 7] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = ["apple", "banana", "cherry", "dog", "cat", "house", "water", "paris", "london", "city", "fox", "book", "music", "code", "data", "model", "train", "test", "eval", "score", "result", "red", "green", "blue", "black", "white", "big", "small", "long", "short", "happy", "sad", "fast", "slow"]
PROMPT = "Capitalize: {input}"
LR, RANK, MAX_LEN, LOG_STEPS, SEED = 3e-3, 8, 64, 10, 1

#: Wall and CPU seconds inside ``SFTTrainer.train`` and tokens trained, of the last training here.
LAST_TRAIN: dict[str, float] = {}


def timed_train() -> None:
    """Wrap ``SFTTrainer.train`` so both paths report their own training time and token count."""
    from trl import SFTTrainer

    original = SFTTrainer.train

    def train(self: Any, *a: Any, **kw: Any) -> Any:
        t, c = time.perf_counter(), time.process_time()
        out = original(self, *a, **kw)
        LAST_TRAIN.update(seconds=time.perf_counter() - t, cpu=time.process_time() - c,
                          tokens=float(self._total_train_tokens))
        return out

    SFTTrainer.train = train  # type: ignore[method-assign]


def write_data(folder: Path, rows: int) -> tuple[dict[str, list[dict[str, str]]], Path]:
    pick = [WORDS[i % len(WORDS)] for i in range(rows + rows // 4)]
    data = {"train": [{"input": w, "output": w.upper()} for w in pick[:rows]],
            "validation": [{"input": w, "output": w.upper()} for w in pick[rows:]]}
    path = folder / "data.json"
    path.write_text(json.dumps(data))
    return data, path


def write_spec(folder: Path, model: Path, data: Path, epochs: int, batch_size: int) -> Path:
    spec = {"experiment": "trl-overhead", "output_dir": str(folder / "out"), "seed": SEED,
            "model": {"path": str(model)}, "prompt": {"template": PROMPT},
            "dataset": {"plugin": "json-instruct", "path": str(data)},
            "train": {"plugin": "trl", "epochs": epochs, "batch_size": batch_size, "learning_rate": LR,
                      "max_seq_length": MAX_LEN, "logging_steps": LOG_STEPS, "lr_scheduler": "linear",
                      "lora": {"rank": RANK, "dropout": 0.0}},
            "scheduler": {"plugin": "local"}}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_ours(spec: Path) -> tuple[float, dict[str, float]]:
    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.runner import write_experiment
    from cruijff_kit._engine.spec import load_spec
    from cruijff_kit._engine.stage import run_stage

    plan = make_plan(load_spec(spec))
    shutil.rmtree(plan.runs[0].layout.root, ignore_errors=True)
    write_experiment(plan)
    t, c = time.perf_counter(), time.process_time()
    run_stage(plan.runs[0].layout.root, "train")
    return time.perf_counter() - t, {**LAST_TRAIN, "total_cpu": time.process_time() - c}


def run_plain(model_dir: Path, data: dict[str, list[dict[str, str]]], out: Path, epochs: int,
              batch_size: int) -> tuple[float, dict[str, float]]:
    """What a researcher would write with TRL directly, doing the same work as the ck run."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    shutil.rmtree(out, ignore_errors=True)
    t, c = time.perf_counter(), time.process_time()

    def chat(rows: list[dict[str, str]]) -> Dataset:
        return Dataset.from_list([{"messages": [{"role": "user", "content": PROMPT.format(input=r["input"])},
                                                {"role": "assistant", "content": r["output"]}]} for r in rows])

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = SFTConfig(output_dir=str(out), seed=SEED, num_train_epochs=epochs, per_device_train_batch_size=batch_size,
                     per_device_eval_batch_size=batch_size, learning_rate=LR, lr_scheduler_type="linear",
                     max_length=MAX_LEN, assistant_only_loss=True, activation_checkpointing=False, use_cpu=True,
                     bf16=False, data_seed=SEED, logging_first_step=True,
                     eval_strategy="epoch", save_strategy="epoch", save_total_limit=1, logging_steps=LOG_STEPS,
                     report_to="none", disable_tqdm=True, dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=chat(data["train"]),
                         eval_dataset=chat(data["validation"]), processing_class=tok,
                         peft_config=LoraConfig(r=RANK, lora_alpha=2 * RANK, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    trainer.train()
    trainer.save_model(str(out / "adapter"))
    return time.perf_counter() - t, {**LAST_TRAIN, "total_cpu": time.process_time() - c}


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``a/b/c``."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


@contextlib.contextmanager
def quiet(enabled: bool):  # type: ignore[no-untyped-def]
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="HF model folder (default: a tiny Llama built here)")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads for both paths (1 keeps a shared machine's noise low)")
    ap.add_argument("--verbose", action="store_true", help="show the trainers' output")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = args.model
        if model is None:
            from cruijff_kit._models import build_tiny_model

            model = build_tiny_model(folder / "tiny-llama3", family="llama3")
        model = model.resolve()
        data, data_file = write_data(folder, args.rows)
        spec = write_spec(folder, model, data_file, args.epochs, args.batch_size)
        timed_train()
        before = load_average()
        ours: list[tuple[float, dict[str, float]]] = []
        plain: list[tuple[float, dict[str, float]]] = []
        with quiet(not args.verbose):
            run_ours(spec)  # warm-up: first-call costs of both paths
            run_plain(model, data, folder / "plain", args.epochs, args.batch_size)
            for i in range(args.repeats):  # alternate which path goes first, so order favours neither
                if i % 2:
                    plain.append(run_plain(model, data, folder / "plain", args.epochs, args.batch_size))
                ours.append(run_ours(spec))
                if not i % 2:
                    plain.append(run_plain(model, data, folder / "plain", args.epochs, args.batch_size))
        after = load_average()

    def stats(runs: list[tuple[float, dict[str, float]]]) -> dict[str, float]:
        walls = [w for w, _ in runs]
        return {"wall_min": min(walls), "wall_med": statistics.median(walls),
                "cpu_med": statistics.median(t["total_cpu"] for _, t in runs),
                "tps_max": max(t["tokens"] / t["seconds"] for _, t in runs),
                "tps_med": statistics.median(t["tokens"] / t["seconds"] for _, t in runs),
                "tps_cpu": statistics.median(t["tokens"] / t["cpu"] for _, t in runs)}

    o, p = stats(ours), stats(plain)
    tokens = ours[-1][1]["tokens"]
    print(f"model: {model.name}, {args.rows} rows, batch {args.batch_size}, {args.epochs} epochs "
          f"({tokens:.0f} tokens trained), {args.threads} thread(s), {args.repeats} interleaved repeats after a "
          "warm-up")
    print(f"load average (1/5/15 min): {before} before, {after} after")
    print("| path | wall min (s) | wall median (s) | CPU median (s) | tokens/s best | tokens/s median "
          "| tokens per CPU s |\n|---|---|---|---|---|---|---|")
    for name, v in (("plain TRL script", p), ("ck stage train (trl plugin)", o)):
        print(f"| {name} | {v['wall_min']:.2f} | {v['wall_med']:.2f} | {v['cpu_med']:.2f} | {v['tps_max']:.0f} "
              f"| {v['tps_med']:.0f} | {v['tps_cpu']:.0f} |")
    print(f"ratio ours / plain: wall min {o['wall_min'] / p['wall_min']:.3f}, wall median "
          f"{o['wall_med'] / p['wall_med']:.3f}, CPU {o['cpu_med'] / p['cpu_med']:.3f}, tokens/s best "
          f"{o['tps_max'] / p['tps_max']:.3f}, tokens/s median {o['tps_med'] / p['tps_med']:.3f}, "
          f"tokens per CPU s {o['tps_cpu'] / p['tps_cpu']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
