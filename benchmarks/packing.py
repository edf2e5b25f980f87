"""Packing and padding-free batches vs. padded batches with the `trl` trainer, on a realistic length mix.

Trains a tiny Llama (or ``--model DIR``) through ``ck stage RUN_DIR train`` in-process, three ways on
the same rows: ``packing: false`` (batches padded to their longest row), ``packing: true`` (best-fit
packing, padding-free), and ``packing: true, padding_free: true``. Row lengths follow a log-normal mix
(many short rows, a long tail up to ``--max-len`` tokens), as chat and instruction data do. Tokens/s
counts the rows' own tokens (the same for every mode), so its ratio is the speed-up from not computing
on padding. Run by hand: ``python benchmarks/packing.py [--rows 256] [--repeats 3] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trl_overhead import WORDS, quiet  # noqa: E402

PROMPT = "Repeat in capitals: {input}"
MODES: dict[str, dict[str, Any]] = {
    "padded": {"packing": False},
    "packing": {"packing": True},
    "packing + padding_free": {"packing": True, "padding_free": True},
}


def length_mix(n: int, max_words: int, seed: int = 0) -> list[int]:
    """Words per row: log-normal (median ~24, long tail), clipped to [2, max_words]."""
    rng = random.Random(seed)
    return [max(2, min(max_words, int(rng.lognormvariate(3.2, 0.9)))) for _ in range(n)]


def write_data(folder: Path, rows: int, max_len: int) -> tuple[Path, list[dict[str, str]]]:
    """A json-instruct file whose inputs (and equally long outputs) follow :func:`length_mix`."""
    rng = random.Random(1)
    # input and output each take about half of max_len (one token per word, plus chat-template tokens)
    lengths = length_mix(rows, max(2, max_len // 2 - 16))
    train = []
    for n in lengths:
        words = " ".join(rng.choice(WORDS) for _ in range(n))
        train.append({"input": words, "output": words.upper()})
    data = {"train": train}
    path = folder / "data.json"
    path.write_text(json.dumps(data))
    return path, train


def write_spec(folder: Path, model: Path, data: Path, name: str, mode: dict[str, Any], max_len: int,
               batch_size: int) -> Path:
    spec = {"experiment": f"packing-{name.replace(' ', '').replace('+', '-')}", "output_dir": str(folder / "out"),
            "seed": 1, "model": {"path": str(model)}, "prompt": {"template": PROMPT},
            "dataset": {"plugin": "json-instruct", "path": str(data)},
            "train": {"plugin": "trl", "epochs": 1, "batch_size": batch_size, "learning_rate": 1e-3,
                      "max_seq_length": max_len, "logging_steps": 50, "validation": False, "lora": {"rank": 8, "dropout": 0.0},
                      **mode},
            "scheduler": {"plugin": "local"}}
    path = folder / f"spec-{spec['experiment']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


LAST: dict[str, float] = {}


def time_train() -> None:
    """Wrap ``SFTTrainer.train`` to time the training loop alone."""
    from trl import SFTTrainer

    original = SFTTrainer.train

    def train(self: Any, *a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        out = original(self, *a, **kw)
        LAST["seconds"] = time.perf_counter() - t
        LAST["steps"] = float(self.state.global_step)
        return out

    SFTTrainer.train = train  # type: ignore[method-assign]


def run(spec: Path) -> dict[str, float]:
    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.runner import write_experiment
    from cruijff_kit._engine.spec import load_spec
    from cruijff_kit._engine.stage import run_stage

    plan = make_plan(load_spec(spec))
    shutil.rmtree(plan.runs[0].layout.root, ignore_errors=True)
    write_experiment(plan)
    run_stage(plan.runs[0].layout.root, "train")
    return dict(LAST)


def row_tokens(model: Path, rows: list[dict[str, str]]) -> int:
    """Tokens of the rows as chat conversations (what every mode trains on)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    total = 0
    for r in rows:
        ids = tok.apply_chat_template([{"role": "user", "content": PROMPT.format(input=r["input"])},
                                       {"role": "assistant", "content": r["output"]}], tokenize=True)
        total += len(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="HF model folder (default: a tiny Llama built here)")
    ap.add_argument("--hidden", type=int, default=64, help="hidden size of the tiny model built here "
                    "(MLP 2x, 4 heads); wider models spend more of each step in the layers padding inflates")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--max-len", type=int, default=512, help="train.max_seq_length")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = args.model
        if model is None:
            from cruijff_kit._models import build_tiny_model

            model = build_tiny_model(folder / f"tiny-llama3-h{args.hidden}", family="llama3",
                                     hidden_size=args.hidden, intermediate_size=2 * args.hidden)
        model = model.resolve()
        data, rows = write_data(folder, args.rows, args.max_len)
        tokens = row_tokens(model, rows)
        specs = {name: write_spec(folder, model, data, name, mode, args.max_len, args.batch_size)
                 for name, mode in MODES.items()}
        time_train()
        results: dict[str, list[dict[str, float]]] = {name: [] for name in MODES}
        with quiet(not args.verbose):
            for spec in specs.values():
                run(spec)  # warm-up
            for i in range(args.repeats):  # rotate the order so it favours no mode
                names = list(MODES)[i % len(MODES):] + list(MODES)[:i % len(MODES)]
                for name in names:
                    results[name].append(run(specs[name]))
    lengths = sorted(len(r["input"].split()) for r in rows)
    print(f"model: {model.name}, {args.rows} rows ({tokens} tokens; words per input: median "
          f"{statistics.median(lengths):.0f}, p90 {lengths[int(0.9 * len(lengths))]}, max {lengths[-1]}), "
          f"max_seq_length {args.max_len}, batch {args.batch_size}, {args.threads} thread(s), "
          f"{args.repeats} repeats after a warm-up")
    print("| mode | optimizer steps | train s (best) | train s (median) | tokens/s best | tokens/s median "
          "| ratio to padded (median) |\n|---|---|---|---|---|---|---|")
    base = statistics.median(r["seconds"] for r in results["padded"])
    for name, runs in results.items():
        secs = [r["seconds"] for r in runs]
        med = statistics.median(secs)
        print(f"| {name} | {runs[-1]['steps']:.0f} | {min(secs):.2f} | {med:.2f} | {tokens / min(secs):.0f} "
              f"| {tokens / med:.0f} | {base / med:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
