"""`ck report` of a finished 100-run experiment: seconds to write report.html and its size in bytes.

The experiment is planned and written with the engine's own code (`make_plan`, `write_experiment`:
run folders, resolved specs, `status.json`, the shared base evaluation's folder), then every stage is
finished as `ck stage` finishes it: `env.json` recorded by the engine, `train/metrics.jsonl` of
`--steps` training steps (a train loss each step, a validation loss every 25 steps and at each
epoch's end), results recorded with the engine's `record_results` for base (shared), epoch_0 and
epoch_1: two metrics, a risk scorer with 10 calibration bins and a 50-point ROC curve, a 2x2 confusion
matrix, and an eval log file per target. Each repeat then runs `ck report SPEC` in a fresh
`python -m cruijff_kit` (what a user waits for) and records its wall and CPU time.

Run by hand: `python benchmarks/report_html.py [--runs 100] [--steps 400] [--repeat 3]`;
`--runs 2 --steps 20 --repeat 1` is a smoke run of seconds."""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build(folder: Path, runs: int, steps: int) -> Path:
    """Plan, write and finish an experiment of ``runs`` runs; returns its spec file."""
    import yaml

    from cruijff_kit import status
    from cruijff_kit._engine import envinfo
    from cruijff_kit._engine.damage import record_results
    from cruijff_kit.engine import load_spec, make_plan, write_experiment

    (folder / "data.json").write_text(json.dumps({"train": [{"input": "a", "output": "A"}],
                                                   "validation": [{"input": "b", "output": "B"}],
                                                   "test": [{"input": "c", "output": "C"}]}))
    rates = [round(1e-4 * (1 + i), 6) for i in range(runs)]
    spec = folder / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "experiment": "report-bench", "output_dir": "out", "model": {"path": "org/model"},
        "dataset": {"plugin": "json-instruct", "path": "data.json"},
        "train": {"plugin": "trl", "epochs": 2, "save_epochs": "all"},
        "eval": [{"plugin": "inspect", "task": "exact-match", "checkpoints": "all", "include_base": True}],
        "scheduler": {"plugin": "local"},
        "sweep": {"train.learning_rate": rates},
    }, sort_keys=False))
    plan = make_plan(load_spec(spec))
    write_experiment(plan)
    rng = random.Random(0)
    per_epoch = steps // 2
    for job in plan.jobs():
        run_dir, stage = Path(job.run_dir), job.stage
        status.update_stage(run_dir, stage, state=status.RUNNING, started=status.now())
        envinfo.record(run_dir, stage, 42)
        from cruijff_kit._base.layout import RunLayout

        layout = RunLayout(run_dir)
        if stage == "train":
            layout.train_dir.mkdir(parents=True, exist_ok=True)
            rows = []
            for step in range(1, steps + 1):
                epoch = (step - 1) // per_epoch
                row = {"step": step, "epoch": epoch, "train_loss": 2.0 / math.sqrt(step) + rng.random() * 0.05,
                       "val_loss": None, "learning_rate": 1e-4}
                if step % 25 == 0 or step % per_epoch == 0:
                    row["val_loss"] = 2.2 / math.sqrt(step) + rng.random() * 0.02
                rows.append(row)
            layout.metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            _, task, target = stage.split(".", 2)
            log = layout.eval_dir(task, target) / "2026-12-03T10-00-00_exact-match.eval"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_bytes(os.urandom(2048))
            acc = rng.random()
            bins = [{"lower": i / 10, "upper": (i + 1) / 10, "count": 10, "mean_predicted": (i + 0.5) / 10,
                     "observed": min(1.0, max(0.0, (i + 0.5) / 10 + rng.uniform(-0.1, 0.1)))} for i in range(10)]
            roc = [[i / 49, min(1.0, (i / 49) ** 0.5)] for i in range(50)]
            record_results(layout, task, target, {
                "match/accuracy": {"value": acc, "stderr": 0.05}, "risk/ece": {"value": rng.random() / 5,
                                                                               "stderr": None},
                "samples": 100, "log": str(log.relative_to(run_dir)), "calibration": {"risk": bins},
                "roc": {"risk": roc}, "confusion_matrix": {"label": {"labels": ["no", "yes"],
                                                                     "matrix": [[40, 10], [5, 45]]}}})
        status.update_stage(run_dir, stage, state=status.DONE, ended=status.now(), exit_code=0)
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=400, help="training steps per run (2 epochs)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ck-report-bench-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        spec = build(folder, args.runs, args.steps)
        print(f"built {args.runs} runs x {args.steps} steps in {time.perf_counter() - t0:.1f} s "
              f"(load average {os.getloadavg()[0]:.1f})")
        walls, cpus = [], []
        out: dict = {}
        for _ in range(args.repeat):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            res = subprocess.run([sys.executable, "-m", "cruijff_kit", "report", str(spec), "--json"],
                                 capture_output=True, text=True, cwd=folder)
            walls.append(time.perf_counter() - t)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            if res.returncode != 0:
                sys.exit(f"ck report failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
            out = json.loads(res.stdout)
        size = Path(out["report"]).stat().st_size
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        print("| runs | rows | wall s (median) | cpu s (median) | bytes |")
        print("|---|---|---|---|---|")
        print(f"| {args.runs} | {out['rows']} | {statistics.median(walls):.2f} | {statistics.median(cpus):.2f} "
              f"| {size} |")


if __name__ == "__main__":
    main()
