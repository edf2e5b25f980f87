"""How long a tiny sweep takes end to end, in import floors.

An import floor is the wall time of ``python -c "import torch, transformers, peft, trl, inspect_ai"``:
what every stage process pays before it does any work. The experiment is the one the fast loop is
measured on: 2 runs (LoRA rank 4 and 8) of a tiny Llama trained with trl for 2 epochs on the
capitalization task, each evaluated with inspect on the base model (one shared stage) and on both
epochs: 7 stages.

Two ways of running it are timed, interleaved, each from an empty output folder:

* ``default``: the local scheduler as it comes (on CPU as many stages at once as cores and memory
  hold, a run's ready evaluations in one process that loads the base model once);
* ``serial``: ``scheduler.slots=1`` and ``scheduler.group_evals=false`` (one stage process after
  another: 7 processes).

It prints the floor, each way's wall time (median and best), its stage processes and the wall time
in floors. ``python benchmarks/experiment_loop.py [--repeats 2] [--rows 120] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

IMPORTS = "import torch, transformers, peft, trl, inspect_ai"
MODES = {"default": [], "serial": ["--set", "scheduler.slots=1", "--set", "scheduler.group_evals=false"]}


def ck(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``ck`` in a fresh process; stop the benchmark with its output when it fails."""
    res = subprocess.run([sys.executable, "-m", "cruijff_kit", *args], cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"ck {' '.join(args)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def import_floor(repeats: int) -> float:
    """Median wall seconds of a fresh interpreter importing the stage libraries."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", IMPORTS], check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def write_spec(root: Path, model: Path, data: Path) -> Path:
    """The tiny sweep: 2 runs x (train, eval of base (shared), epoch_0, epoch_1)."""
    spec = {
        "experiment": "loop", "output_dir": str(root / "out"), "seed": 1,
        "model": {"path": str(model)},
        "dataset": {"plugin": "json-instruct", "path": str(data)},
        "prompt": {"system": "Rewrite the word in capital letters."},
        "train": {"plugin": "trl", "method": "lora", "epochs": 2, "learning_rate": 1e-2, "batch_size": 8,
                  "max_seq_length": 64, "lora": {"rank": 4}, "save_epochs": "all", "validation": True},
        "eval": [{"plugin": "inspect", "task": "exact-match", "split": "test", "checkpoints": "all",
                  "include_base": True, "generation": {"max_tokens": 8}, "batch_size": 16}],
        "scheduler": {"plugin": "local"},
        "sweep": {"train.lora.rank": [4, 8]},
    }
    path = root / "loop.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def stage_processes(experiment: Path) -> tuple[int, int]:
    """(stage processes, stages done) of a finished experiment, from the pids its stages recorded."""
    pids, done = set(), 0
    for st in [*experiment.glob("runs/*/status.json"), *experiment.glob("shared/*/status.json")]:
        for entry in json.loads(st.read_text())["stages"].values():
            if "shared" in entry:
                continue
            pids.add(entry.get("pid"))
            done += entry.get("state") == "done"
    return len(pids), done


def run_once(root: Path, spec: Path, mode: str) -> dict[str, Any]:
    shutil.rmtree(root / "out", ignore_errors=True)
    t = time.perf_counter()
    ck("run", str(spec), *MODES[mode], cwd=root)
    wall = time.perf_counter() - t
    procs, done = stage_processes(root / "out" / "loop")
    if done != 7:
        sys.exit(f"{mode}: {done} of 7 stages done")
    return {"wall": wall, "processes": procs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="Runs of each way, interleaved.")
    parser.add_argument("--rows", type=int, default=120, help="Training rows of the capitalization task.")
    parser.add_argument("--json", type=Path, help="Also write the numbers to this file.")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = Path(tempfile.mkdtemp(prefix="ck-loop-"))
    try:
        ck("models", "tiny", str(root / "model"), cwd=root)
        ck("data", "capitalize", str(root / "data.json"), "--train", str(args.rows), "--test", "16", cwd=root)
        spec = write_spec(root, root / "model", root / "data.json")
        floor = import_floor(3)
        results: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
        for i in range(args.repeats):
            for mode in (MODES if i % 2 == 0 else list(reversed(MODES))):
                results[mode].append(run_once(root, spec, mode))
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = float("nan")
        print(f"import floor ({IMPORTS}): {floor:.2f} s; load average {load:.1f}; cores {os.cpu_count()}")
        print(f"{'way':<8} {'processes':>9} {'wall median (s)':>16} {'wall best (s)':>14} {'floors (median)':>16}")
        out: dict[str, Any] = {"floor": floor, "load": load}
        for mode, runs in results.items():
            walls = [r["wall"] for r in runs]
            med = statistics.median(walls)
            print(f"{mode:<8} {runs[0]['processes']:>9} {med:>16.2f} {min(walls):>14.2f} {med / floor:>16.2f}")
            out[mode] = {"wall_median": med, "wall_best": min(walls), "processes": runs[0]["processes"],
                         "floors": med / floor}
        ratio = out["serial"]["wall_median"] / out["default"]["wall_median"]
        print(f"serial / default: {ratio:.2f}")
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
