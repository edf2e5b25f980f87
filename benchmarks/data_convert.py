"""Data throughput: scored multi-turn rows -> SFT rows (the `multiturn` dataset), and JSON -> parquet.

* **multiturn -> SFT**: writes ``--rows`` candidate rows in the CollabLLM form (``prompt`` messages,
  ``completion``, ``conv_id``, ``turn_id``, ``score``; 3 assistant turns x 2 candidates per
  conversation) to a JSONL file, then times the ``multiturn`` dataset building its SFT rows from it:
  reading and checking every row, then threshold, best response per turn, greedy-best conversations
  and the split by conversation. Reported as input rows per second, for the whole and for the build
  step alone.
* **JSON -> parquet**: writes a json-instruct file of ``--rows`` ``{input, output}`` rows and times
  ``ck data convert`` (``cruijff_kit._datatools.convert.convert_to_parquet``) on it.

Run by hand: ``python benchmarks/data_convert.py [--rows 1000000]``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TURNS, CANDIDATES = 3, 2
WORDS = ["apple", "banana", "cherry", "dog", "house", "water", "city", "book", "music", "code", "data",
         "model", "train", "red", "green", "blue", "big", "small", "fast", "slow"]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_candidates(path: Path, rows: int) -> int:
    """CollabLLM-form candidate rows, conversation by conversation; returns the rows written."""
    rng = random.Random(0)
    written = 0
    with path.open("w", encoding="utf-8") as fh:
        conv = 0
        while written < rows:
            history: list[dict[str, str]] = [{"role": "system", "content": "You help."},
                                             {"role": "user", "content": sentence(rng, 12)}]
            for turn in range(TURNS):
                cands = [sentence(rng, 20) for _ in range(CANDIDATES)]
                scores = [round(rng.random(), 3) for _ in range(CANDIDATES)]
                for completion, score in zip(cands, scores, strict=True):
                    fh.write(json.dumps({"prompt": history, "completion": completion, "conv_id": f"c{conv}",
                                         "turn_id": turn, "score": score}) + "\n")
                    written += 1
                best = cands[scores.index(max(scores))]
                history = [*history, {"role": "assistant", "content": best},
                           {"role": "user", "content": sentence(rng, 8)}]
            conv += 1
    return written


def bench_multiturn(folder: Path, rows: int) -> dict[str, Any]:
    from cruijff_kit_multiturn import build
    from cruijff_kit_multiturn.plugin import MultiturnConfig, MultiturnDataset
    from cruijff_kit_multiturn.rows import read_candidates

    path = folder / "candidates.jsonl"
    n = write_candidates(path, rows)
    cfg = MultiturnConfig.model_validate({"path": str(path), "threshold": 0.2})
    t = time.perf_counter()
    splits = MultiturnDataset(cfg, base_dir=folder).rows()
    whole = time.perf_counter() - t
    cands = read_candidates(path)  # again, to time the build step alone
    t = time.perf_counter()
    mask = build.keep_mask(cands, cfg.threshold, cfg.threshold_on)
    build.split_rows(build.conversations(cands, mask, None), cfg.splits, cfg.seed)
    build_s = time.perf_counter() - t
    return {"rows": n, "mb": path.stat().st_size / 1e6, "sft_rows": sum(len(r) for r in splits.values()),
            "seconds": whole, "build_seconds": build_s}


def bench_parquet(folder: Path, rows: int) -> dict[str, Any]:
    from cruijff_kit._datatools.convert import convert_to_parquet

    rng = random.Random(1)
    n_val = max(1, rows // 10)
    data = {"train": [], "validation": []}
    for i in range(rows):
        text = sentence(rng, 12)
        data["train" if i >= n_val else "validation"].append({"input": text, "output": text.upper()})
    src = folder / "instruct.json"
    src.write_text(json.dumps(data))
    del data
    t = time.perf_counter()
    written = convert_to_parquet(src, folder / "parquet")
    secs = time.perf_counter() - t
    out_mb = sum(p.stat().st_size for p in (folder / "parquet").glob("*.parquet")) / 1e6
    return {"rows": sum(written.values()), "mb": src.stat().st_size / 1e6, "out_mb": out_mb, "seconds": secs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of each input (default 1,000,000)")
    ap.add_argument("--only", choices=["multiturn", "parquet"], help="run one of the two")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print("| conversion | input rows | input MB | output | wall (s) | rows/s |\n|---|---|---|---|---|---|")
        if args.only in (None, "multiturn"):
            m = bench_multiturn(folder, args.rows)
            print(f"| multiturn candidates -> SFT rows (read, check, build, split) | {m['rows']:,} | {m['mb']:.0f} "
                  f"| {m['sft_rows']:,} SFT rows | {m['seconds']:.1f} | {m['rows'] / m['seconds']:,.0f} |")
            print(f"| of which the build step (threshold, best per turn, conversations, split) | {m['rows']:,} | "
                  f"| | {m['build_seconds']:.1f} | {m['rows'] / m['build_seconds']:,.0f} |")
        if args.only in (None, "parquet"):
            p = bench_parquet(folder, args.rows)
            print(f"| json-instruct -> parquet (`ck data convert`) | {p['rows']:,} | {p['mb']:.0f} "
                  f"| {p['out_mb']:.0f} MB parquet | {p['seconds']:.1f} | {p['rows'] / p['seconds']:,.0f} |")


if __name__ == "__main__":
    sys.exit(main())
