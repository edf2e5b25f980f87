"""Overhead of the `torchtune` trainer over torchtune's stock LoRA recipe, on the same config.

Trains a tiny Llama (or ``--model DIR``) on a generated capitalization task, in one process so imports
are paid once, alternating the two paths (and which goes first) after one warm-up of each:

* ours: ``ck stage RUN_DIR train`` in-process (dataset plugin, truncation count, our recipe with a
  metrics row per step, PEFT adapters per epoch, resume state, status and ``env.json``);
* stock: ``LoRAFinetuneRecipeSingleDevice`` from torchtune's ``recipes/`` folder run directly on the
  ``train/torchtune.yaml`` that our run wrote (output to a scratch folder; it writes its own adapter
  checkpoints and recipe state).

The stock recipe computes no validation loss, so by default ours runs with ``validation: false`` (the
same work); ``--validation`` adds a validation pass per epoch to ours. Reports the median wall and CPU
seconds of each path, the ratios ours / stock, and the load average before and after. The defaults
(512 rows, batch 4, 2 epochs) make 256 optimizer steps. Run by hand:
``python benchmarks/torchtune_overhead.py [--rows 512] [--epochs 2] [--repeats 7] [--model DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trl_overhead import quiet  # noqa: E402  (silences step lines and progress bars)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = ["apple", "banana", "cherry", "dog", "cat", "house", "water", "paris", "london", "city", "fox", "book", "music", "code", "data", "model", "train", "test", "eval", "score", "result", "red", "green", "blue", "black", "white", "big", "small", "long", "short", "happy", "sad", "fast", "slow"]


def write_spec(folder: Path, model: Path, rows: int, epochs: int, batch_size: int, validation: bool = False) -> Path:
    """A json-instruct capitalization dataset and a spec training it with ``plugin: torchtune``."""
    pick = [WORDS[i % len(WORDS)] for i in range(rows + rows // 4)]
    data = {"train": [{"input": w, "output": w.upper()} for w in pick[:rows]],
            "validation": [{"input": w, "output": w.upper()} for w in pick[rows:]]}
    (folder / "data.json").write_text(json.dumps(data))
    spec = {"experiment": "tt-overhead", "output_dir": str(folder / "out"), "seed": 1,
            "model": {"path": str(model)}, "prompt": {"template": "Capitalize: {input}"},
            "dataset": {"plugin": "json-instruct", "path": str(folder / "data.json")},
            "train": {"plugin": "torchtune", "epochs": epochs, "batch_size": batch_size, "learning_rate": 0.003,
                      "max_seq_length": 64, "lora": {"rank": 8, "dropout": 0.0},
                      "validation": validation},
            "scheduler": {"plugin": "local"}}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def fresh_run(spec: Path) -> Path:
    """Plan the spec and write an empty run folder (removing an earlier one)."""
    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.runner import write_experiment
    from cruijff_kit._engine.spec import load_spec

    plan = make_plan(load_spec(spec))
    shutil.rmtree(plan.runs[0].layout.root, ignore_errors=True)
    write_experiment(plan)
    return plan.runs[0].layout.root


def run_ours(spec: Path) -> tuple[float, float, Path]:
    """Wall and CPU seconds of ``ck stage RUN_DIR train`` on a fresh run folder, and the folder."""
    from cruijff_kit._engine.stage import run_stage

    run_dir = fresh_run(spec)
    t, c = time.perf_counter(), time.process_time()
    run_stage(run_dir, "train")
    return time.perf_counter() - t, time.process_time() - c, run_dir


def run_stock(tune_yaml: Path, scratch: Path) -> tuple[float, float]:
    """Wall and CPU seconds of the stock recipe (setup, train, cleanup) on ``tune_yaml``."""
    from cruijff_kit_torchtune.compat import stock_recipe_module
    from omegaconf import OmegaConf

    shutil.rmtree(scratch, ignore_errors=True)
    cfg = OmegaConf.load(tune_yaml)
    cfg.output_dir = str(scratch)
    cfg.checkpointer.output_dir = str(scratch)
    stock = stock_recipe_module("lora_finetune_single_device").LoRAFinetuneRecipeSingleDevice
    t, c = time.perf_counter(), time.process_time()
    recipe = stock(cfg=cfg)
    recipe.setup(cfg=cfg)
    recipe.train()
    recipe.cleanup()
    return time.perf_counter() - t, time.process_time() - c


def load_average() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="HF model folder (default: a tiny Llama built here)")
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--validation", action="store_true", help="ours also computes validation loss each epoch")
    ap.add_argument("--verbose", action="store_true", help="show the recipes' output")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = args.model
        if model is None:
            from cruijff_kit._models import build_tiny_model

            model = build_tiny_model(folder / "tiny-llama3", family="llama3")
        spec = write_spec(folder, model.resolve(), args.rows, args.epochs, args.batch_size, args.validation)
        before = load_average()
        with quiet(not args.verbose):
            run_dir = run_ours(spec)[2]  # warm-up: imports, first-call costs
            tune_yaml = run_dir / "train" / "torchtune.yaml"
            run_stock(tune_yaml, folder / "stock")
            ours: list[tuple[float, float]] = []
            stock: list[tuple[float, float]] = []
            for i in range(args.repeats):  # alternate which path goes first, so order favours neither
                if i % 2:
                    stock.append(run_stock(tune_yaml, folder / "stock"))
                ours.append(run_ours(spec)[:2])
                if not i % 2:
                    stock.append(run_stock(tune_yaml, folder / "stock"))
        after = load_average()
        steps = sum(1 for line in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()
                    if json.loads(line)["train_loss"] is not None)
    o, s = statistics.median(w for w, _ in ours), statistics.median(w for w, _ in stock)
    oc, sc = statistics.median(c for _, c in ours), statistics.median(c for _, c in stock)
    print(f"model: {model.name}, {args.rows} rows, batch {args.batch_size}, {args.epochs} epochs "
          f"({steps} optimizer steps), validation {'on' if args.validation else 'off'} in ours, "
          f"{args.repeats} interleaved repeats after a warm-up")
    print(f"load average (1/5/15 min): {before} before, {after} after")
    print("| path | median wall (s) |\n|---|---|")
    print(f"| stock torchtune recipe on train/torchtune.yaml | {s:.2f} |")
    print(f"| ck stage train (torchtune plugin) | {o:.2f} |")
    print(f"median CPU (s): stock {sc:.2f}, ours {oc:.2f}; CPU ratio ours / stock: {oc / sc:.3f}")
    print(f"ratio ours / stock: {o / s:.3f}")


if __name__ == "__main__":
    sys.exit(main())
