"""Throughput of an eval stage (inspect + the ``ck/`` provider) against plain batched ``generate``.

The same model (a tiny random Llama built here, ``--hidden``/``--layers`` to make it larger, or
``--model DIR``), the same N prompts (``--samples``) and the same generation settings (greedy,
``--max-tokens`` new tokens, batches of ``--batch-size``) in one process, two paths interleaved
after a warm-up of each:

* plain: the chat template applied to each prompt, batches tokenised with left padding,
  ``model.generate`` under ``torch.inference_mode``, the new tokens decoded;
* eval stage: ``ck stage RUN_DIR eval.exact-match.base`` in-process on a control run whose test
  split holds the same prompts (dataset plugin, inspect task, the ``ck/`` provider, scoring, the
  ``.eval`` log, ``results.json`` and status bookkeeping). The base model stays loaded between
  repeats, as between the targets of one run.

It prints samples/s of each path (median and best of ``--repeats``), CPU seconds per sample, the
ratio eval/plain, where the eval's time went (inside ``model.generate`` vs the rest) and how many
completions the two paths agree on. Run by hand:
``python benchmarks/eval_throughput.py [--samples 64] [--repeats 5] [--hidden 64 --layers 2]``.
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

WORDS = ["apple", "banana", "cherry", "dog", "cat", "house", "water", "paris", "london", "city", "fox", "book",
         "music", "code", "data", "model", "train", "test", "eval", "score", "result", "red", "green", "blue"]

#: Seconds inside ``CkModelAPI._run_batch`` (the model's own work) and batch sizes, of the last eval.
GENERATE: dict[str, Any] = {"seconds": 0.0, "sizes": []}


def prompts(n: int) -> list[str]:
    """N distinct short prompts."""
    return [f"Capitalize: {WORDS[i % len(WORDS)]} {i}" for i in range(n)]


def timed_batches() -> None:
    """Wrap the provider's batch generation so the eval reports its time inside the model."""
    from cruijff_kit_inspect.provider import CkModelAPI

    original = getattr(CkModelAPI, "_run_batch", None)
    if original is None:  # an older provider (measuring it for comparison): no breakdown
        return

    def run_batch(self: Any, batch: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        out = original(self, batch, **kw)
        GENERATE["seconds"] += time.perf_counter() - t
        GENERATE["sizes"].append(len(batch))
        return out

    CkModelAPI._run_batch = run_batch  # type: ignore[method-assign]


def plain(model: Any, tok: Any, texts: list[str], batch_size: int, max_tokens: int) -> list[str]:
    """Plain batched generation: chat template, left padding, greedy."""
    import torch

    chats = [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
             for t in texts]
    out: list[str] = []
    with torch.inference_mode():
        for i in range(0, len(chats), batch_size):
            enc = tok(chats[i:i + batch_size], return_tensors="pt", padding=True)
            ids = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False)
            out += tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True,
                                    clean_up_tokenization_spaces=False)
    return out


def write_run(folder: Path, model: Path, texts: list[str], batch_size: int, max_tokens: int) -> Path:
    """A control run whose test split is ``texts``; returns its folder."""
    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.runner import write_experiment
    from cruijff_kit._engine.spec import load_spec

    rows = [{"input": t, "output": t.upper()} for t in texts]
    (folder / "data.json").write_text(json.dumps({"train": rows[:1], "test": rows}))
    spec = {"experiment": "eval-throughput", "output_dir": str(folder / "out"), "seed": 1,
            "model": {"path": str(model)}, "dataset": {"plugin": "json-instruct", "path": "data.json"},
            "eval": [{"plugin": "inspect", "task": "exact-match", "batch_size": batch_size, "device": "cpu",
                      "dtype": "float32", "generation": {"max_tokens": max_tokens}}],
            "scheduler": {"plugin": "local"}}
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    plan = make_plan(load_spec(folder / "spec.yaml"))
    write_experiment(plan)
    return plan.runs[0].layout.root


def run_eval(folder: Path, model: Path, texts: list[str], batch_size: int, max_tokens: int) -> tuple[float, float,
                                                                                                       list[str]]:
    """(wall s, CPU s, completions) of one eval stage in this process (planning not timed)."""
    from inspect_ai.log import read_eval_log

    from cruijff_kit._engine.stage import run_stage

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    run_dir = write_run(folder, model, texts, batch_size, max_tokens)
    GENERATE.update(seconds=0.0, sizes=[])
    quiet = io.StringIO()
    t, c = time.perf_counter(), time.process_time()
    with contextlib.redirect_stderr(quiet), contextlib.redirect_stdout(quiet):
        res = run_stage(run_dir, "eval.exact-match.base")
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    log = read_eval_log(str(run_dir / res["log"]))
    return wall, cpu, [s.output.completion for s in log.samples]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="a model folder (default: a tiny random Llama built here)")
    ap.add_argument("--hidden", type=int, default=64, help="hidden size of the built model")
    ap.add_argument("--layers", type=int, default=2, help="layers of the built model")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="ck-eval-bench-"))
    try:
        model_dir = args.model
        if model_dir is None:
            from cruijff_kit._models import build_tiny_model

            model_dir = build_tiny_model(work / "model", family="llama3", hidden_size=args.hidden,
                                         layers=args.layers, intermediate_size=2 * args.hidden)
        model_dir = Path(model_dir).resolve()
        texts = prompts(args.samples)
        tok = AutoTokenizer.from_pretrained(model_dir)
        tok.pad_token, tok.padding_side = tok.eos_token, "left"
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        timed_batches()
        n = args.samples
        expected = plain(model, tok, texts, args.batch_size, args.max_tokens)  # warm-up
        run_eval(work / "run", model_dir, texts, args.batch_size, args.max_tokens)  # warm-up (loads the base)
        rates: dict[str, list[float]] = {"plain generate": [], "eval stage": []}
        cpus: dict[str, list[float]] = {"plain generate": [], "eval stage": []}
        inside: list[float] = []
        agree = n
        for _ in range(args.repeats):
            t, c = time.perf_counter(), time.process_time()
            plain(model, tok, texts, args.batch_size, args.max_tokens)
            rates["plain generate"].append(n / (time.perf_counter() - t))
            cpus["plain generate"].append((time.process_time() - c) / n)
            wall, cpu, got = run_eval(work / "run", model_dir, texts, args.batch_size, args.max_tokens)
            rates["eval stage"].append(n / wall)
            cpus["eval stage"].append(cpu / n)
            inside.append(GENERATE["seconds"] / wall)
            agree = min(agree, sum(a == b for a, b in zip(got, expected, strict=True)))
        params = sum(p.numel() for p in model.parameters())
        print(f"model: {model_dir.name} ({params / 1e6:.2f}M parameters), {n} samples, batch {args.batch_size}, "
              f"{args.max_tokens} new tokens, greedy, {args.repeats} repeats, torch threads {torch.get_num_threads()}, "
              f"load average {os.getloadavg()[0]:.1f}")
        print()
        print("| path | samples/s (median) | samples/s (best) | CPU ms/sample (median) |")
        print("|---|---|---|---|")
        for name in rates:
            print(f"| {name} | {statistics.median(rates[name]):.2f} | {max(rates[name]):.2f} | "
                  f"{1000 * statistics.median(cpus[name]):.2f} |")
        print()
        ratio = statistics.median(rates["eval stage"]) / statistics.median(rates["plain generate"])
        best = max(rates["eval stage"]) / max(rates["plain generate"])
        cpu_ratio = statistics.median(cpus["plain generate"]) / statistics.median(cpus["eval stage"])
        print(f"ratio eval/plain (median samples/s): {ratio:.3f}")
        print(f"ratio eval/plain (best samples/s): {best:.3f}")
        print(f"ratio eval/plain (CPU per sample): {cpu_ratio:.3f}")
        print(f"eval time inside model.generate: {100 * statistics.median(inside):.1f} %" if GENERATE["sizes"]
              else "eval time inside model.generate: n/a (this provider has no batch timing)")
        print(f"eval batch sizes (last repeat): {GENERATE['sizes']}")
        print(f"completions equal to plain: {agree}/{n}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
