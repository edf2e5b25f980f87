"""Data throughput: scored multi-turn rows -> SFT rows (the `multiturn` dataset), and JSON -> parquet.

* **multiturn -> SFT**: writes ``--rows`` candidate rows in the CollabLLM form (``prompt`` messages,
  ``completion``, ``conv_id``, ``turn_id``, ``score``, ``single_turn_prompt/_completion/_metadata``;
  3 assistant turns x 2 candidates per conversation) to a JSONL file and to a ``save_to_disk`` folder (the form CollabLLM keeps its data
  in), then times the ``multiturn`` dataset from reading each source to the ``DatasetDict`` ready for
  training (read and check every row, threshold 0.2, best response per turn, greedy-best
  conversations, split by conversation), each run in a fresh process that reports its CPU time and
  its peak resident memory during the conversion (``VmHWM``, reset after the imports).
* **the reference**: the official CollabLLM package (``collabllm`` on PyPI, pinned in
  :data:`COLLABLLM`), ``MultiturnDataset(source).to_sft_dataset(lower_bound_metric="score",
  lower_bound=0.2, eval_ratio=0.2)`` on the same sources (the JSONL read with ``json.loads`` into the
  list of rows it takes), in a virtual environment of its own (``--reference-env``), runs interleaved
  with ours; medians of ``--repeats`` runs, and the ratios.
* **JSON -> parquet**: writes a json-instruct file of ``--rows`` ``{input, output}`` rows and times
  ``ck data convert`` (``cruijff_kit._datatools.convert.convert_to_parquet``) on it.

Run by hand: ``python benchmarks/data_convert.py [--rows 300000] [--repeats 3] [--reference]``.
The reference is measured when its environment is ready, or with ``--reference``, which builds it
(``pip install --no-deps collabllm`` plus ``datasets``/``pyarrow`` at this environment's versions,
``numpy`` and ``litellm``, which the package's ``__init__`` imports); ``--no-reference`` skips it.
When it cannot be built (no network), the benchmark says so and measures ours.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path
from typing import Any

TURNS, CANDIDATES = 3, 2
THRESHOLD, EVAL_RATIO = 0.2, 0.2
WORDS = ["apple", "banana", "cherry", "dog", "house", "water", "city", "book", "music", "code", "data",
         "model", "train", "red", "green", "blue", "big", "small", "fast", "slow"]
#: The official package, the version measured.
COLLABLLM = "collabllm==0.0.8"
#: What ``collabllm.datasets.multiturn`` imports besides ``datasets``/``pyarrow`` (pinned to ours).
REFERENCE_EXTRA = ["numpy", "litellm"]
DEFAULT_ENV = Path(tempfile.gettempdir()) / "ck-collabllm-env"


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_candidates(path: Path, rows: int) -> int:
    """CollabLLM-form candidate rows, conversation by conversation; returns the rows written."""
    rng = random.Random(0)
    written = 0
    with path.open("w", encoding="utf-8") as fh:
        conv = 0
        while written < rows:
            task = sentence(rng, 12)
            history: list[dict[str, str]] = [{"role": "system", "content": "You help."},
                                             {"role": "user", "content": task}]
            single = {"single_turn_prompt": task, "single_turn_completion": sentence(rng, 6),
                      "single_turn_metadata": json.dumps({"task_id": conv})}
            for turn in range(TURNS):
                cands = [sentence(rng, 20) for _ in range(CANDIDATES)]
                scores = [round(rng.random(), 3) for _ in range(CANDIDATES)]
                for completion, score in zip(cands, scores, strict=True):
                    fh.write(json.dumps({"prompt": history, "completion": completion, "conv_id": f"c{conv}",
                                         "turn_id": turn, "score": score, **single}) + "\n")
                    written += 1
                best = cands[scores.index(max(scores))]
                history = [*history, {"role": "assistant", "content": best},
                           {"role": "user", "content": sentence(rng, 8)}]
            conv += 1
    return written


def write_saved(jsonl: Path, folder: Path) -> None:
    """The same rows as a ``save_to_disk`` folder (one Dataset, as CollabLLM's loader reads it)."""
    import datasets
    import pyarrow.json as pj

    datasets.disable_progress_bars()
    datasets.Dataset(pj.read_json(str(jsonl))).save_to_disk(str(folder))


# --------------------------------------------------------------------------- measuring one run
def rss_mb(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` (the peak) of this process in MB, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Start ``VmHWM`` again from the resident memory now (Linux: ``5`` to ``/proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def child_ours(source: Path) -> dict[str, Any]:
    """In a fresh process: the ``multiturn`` dataset from ``source`` to its ``DatasetDict``."""
    import datasets  # noqa: F401  (imports before the clock, as for the reference)
    from cruijff_kit_multiturn.plugin import MultiturnConfig, MultiturnDataset

    cfg = MultiturnConfig.model_validate({"path": str(source), "threshold": THRESHOLD})
    base = rss_mb("VmRSS")
    reset_peak()
    cpu, t = time.process_time(), time.perf_counter()
    dd = MultiturnDataset(cfg).load(None)
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    return {"seconds": seconds, "cpu_seconds": cpu, "sft_rows": sum(len(d) for d in dd.values()), "rss_mb": base,
            "peak_mb": rss_mb("VmHWM")}


def child_reference(source: Path) -> dict[str, Any]:
    """In the reference environment: ``MultiturnDataset(...).to_sft_dataset(...)`` of the official package."""
    os.environ.setdefault("ENABLE_COLLABLLM_LOGGING", "0")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # its import would fetch a price list
    import importlib.metadata

    import datasets  # noqa: F401
    from collabllm.datasets.multiturn import MultiturnDataset

    base = rss_mb("VmRSS")
    reset_peak()
    cpu, t = time.process_time(), time.perf_counter()
    if source.suffix == ".jsonl":  # the package takes a list of rows, a save_to_disk folder or a hub id
        with source.open(encoding="utf-8") as fh:
            data: Any = [json.loads(line) for line in fh if line.strip()]
    else:
        data = str(source)
    dd = MultiturnDataset(data, add_system_prompt=False).to_sft_dataset(
        eval_ratio=EVAL_RATIO, lower_bound_metric="score", lower_bound=THRESHOLD)
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    return {"seconds": seconds, "cpu_seconds": cpu, "sft_rows": sum(len(d) for d in dd.values()), "rss_mb": base,
            "peak_mb": rss_mb("VmHWM"), "version": importlib.metadata.version("collabllm")}


def run_child(python: str | Path, kind: str, source: Path) -> dict[str, Any]:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([str(python), __file__, f"--child-{kind}", str(source)], capture_output=True, text=True,
                         env=env, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"{kind} run on {source.name} exited {res.returncode}: {res.stderr.strip()[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the reference environment
def reference_python(folder: Path, build: bool) -> tuple[Path | None, str]:
    """The reference environment's python (built when ``build`` and missing), or None and why not."""
    import importlib.metadata

    python, ready = folder / "bin" / "python", folder / ".ck-ready"
    if ready.exists() and python.exists():
        return python, ""
    if not build:
        return None, f"no reference environment at {folder} (pass --reference to build it)"
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in ("datasets", "pyarrow")]
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(folder)
        for args in (["--no-deps", COLLABLLM], [*pins, *REFERENCE_EXTRA]):
            res = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                                 capture_output=True, text=True, timeout=1800)
            if res.returncode != 0:
                last = ((res.stderr or res.stdout).strip().splitlines() or ["pip failed"])[-1]
                return None, f"`pip install {' '.join(args)}` failed ({last})"
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"the environment could not be built ({type(exc).__name__}: {exc})"
    ready.write_text(COLLABLLM + "\n")
    return python, ""


# --------------------------------------------------------------------------- the benchmarks
def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("seconds", "cpu_seconds", "rss_mb", "peak_mb")
    return {**runs[0], **{k: statistics.median(r[k] for r in runs) for k in keys}}


def bench_multiturn(folder: Path, rows: int, repeats: int, ref_python: Path | None) -> dict[str, Any]:
    jsonl, saved = folder / "candidates.jsonl", folder / "saved"
    n = write_candidates(jsonl, rows)
    write_saved(jsonl, saved)
    out: dict[str, Any] = {"rows": n, "sources": {}}
    for name, source in (("JSONL", jsonl), ("save_to_disk", saved)):
        mb = (source.stat().st_size if source.is_file() else sum(p.stat().st_size for p in source.rglob("*"))) / 1e6
        ours, ref = [], []
        for _ in range(repeats):  # interleaved, so that the machine's load falls on both alike
            ours.append(run_child(sys.executable, "ours", source))
            if ref_python is not None:
                ref.append(run_child(ref_python, "reference", source))
        out["sources"][name] = {"mb": mb, "ours": median_of(ours), "reference": median_of(ref) if ref else None}
    return out


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
    cpu, t = time.process_time(), time.perf_counter()
    written = convert_to_parquet(src, folder / "parquet")
    secs, cpu = time.perf_counter() - t, time.process_time() - cpu
    out_mb = sum(p.stat().st_size for p in (folder / "parquet").glob("*.parquet")) / 1e6
    return {"rows": sum(written.values()), "mb": src.stat().st_size / 1e6, "out_mb": out_mb, "seconds": secs,
            "cpu_seconds": cpu}


def print_multiturn(m: dict[str, Any]) -> None:
    for name, s in m["sources"].items():
        o = s["ours"]
        print(f"| multiturn candidates -> SFT DatasetDict from {name} (read, check, build, split) | {m['rows']:,} "
              f"| {s['mb']:.1f} | {o['sft_rows']:,} SFT rows | {o['rss_mb']:.0f} | {o['peak_mb']:.0f} "
              f"| {o['cpu_seconds']:.3f} | {o['seconds']:.3f} | {m['rows'] / o['seconds']:,.0f} |")


def print_reference(m: dict[str, Any], note: str) -> None:
    if note:
        print(f"reference: not measured: {note}")
        return
    for name, s in m["sources"].items():
        r, o = s["reference"], s["ours"]
        print(f"reference collabllm {r['version']} from {name}: {r['sft_rows']:,} SFT rows, RSS at start "
              f"{r['rss_mb']:.0f} MB, peak {r['peak_mb']:.0f} MB, CPU {r['cpu_seconds']:.3f} s, wall "
              f"{r['seconds']:.3f} s, {m['rows'] / r['seconds']:,.0f} rows/s")
        print(f"ratio ours / reference from {name}: rows/s {r['seconds'] / o['seconds']:.1f}x, CPU "
              f"{r['cpu_seconds'] / o['cpu_seconds']:.1f}x, peak MB {o['peak_mb'] / r['peak_mb']:.2f}, peak above "
              f"start MB {(o['peak_mb'] - o['rss_mb']) / max(r['peak_mb'] - r['rss_mb'], 1e-9):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=300_000, help="rows of each input (default 300,000)")
    ap.add_argument("--only", choices=["multiturn", "parquet"], help="run one of the two")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each multiturn measurement (median)")
    ap.add_argument("--reference-env", type=Path, default=DEFAULT_ENV, help=f"the reference's venv ({DEFAULT_ENV})")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--reference", action="store_true", help="build the reference environment when missing")
    group.add_argument("--no-reference", action="store_true", help="do not measure the reference")
    ap.add_argument("--child-ours", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-reference", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_ours or args.child_reference:
        result = child_ours(args.child_ours) if args.child_ours else child_reference(args.child_reference)
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print("| conversion | input rows | input MB | output | RSS at start (MB) | peak RSS (MB) | CPU (s) | wall (s) "
              "| rows/s |\n|---|---|---|---|---|---|---|---|---|")
        m = note = None
        if args.only in (None, "multiturn"):
            ref_python, note = (None, "--no-reference") if args.no_reference else reference_python(
                args.reference_env, args.reference)
            m = bench_multiturn(folder, args.rows, max(1, args.repeats), ref_python)
            print_multiturn(m)
        if args.only in (None, "parquet"):
            p = bench_parquet(folder, args.rows)
            print(f"| json-instruct -> parquet (`ck data convert`) | {p['rows']:,} | {p['mb']:.1f} "
                  f"| {p['out_mb']:.1f} MB parquet | | | {p['cpu_seconds']:.3f} | {p['seconds']:.3f} "
                  f"| {p['rows'] / p['seconds']:,.0f} |")
        if m is not None:
            print_reference(m, note)
        print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    sys.exit(main())
