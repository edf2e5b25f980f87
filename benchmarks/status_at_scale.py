"""`ck status` of an experiment whose SLURM jobs all finished: the first call (it reconciles every job
with what SLURM says and records each job's usage) and a second one (nothing left to record).

An experiment of `--runs` runs x 2 stages (train, one eval; default 1,000 runs) is submitted for real
with `ck run` to a fake SLURM: small `sbatch`, `squeue` and `sacct` executables put first on PATH
(sbatch hands out job ids, so the stages are the tasks of two job arrays, as the slurm scheduler writes
them). Every stage is then marked done as `ck stage` marks it inside its job, and the fake `squeue` says
no job is queued any more while the fake `sacct` answers `COMPLETED` for every array task, with usage
and a `batch` step, in the format sacct prints with `-n -P`. Each fake counts its calls.

Each repeat times the first and the second `ck status SPEC --json` (a fresh `python -m cruijff_kit`)
on a fresh copy of the submitted experiment (written to disk with `sync` before the first call). One more run, instrumented (in-process, not timed),
counts the scheduler calls, the files written (each an atomic replace under the experiment) and the
fsync calls (os.fsync, os.fdatasync, os.sync) of the first `ck status`.

`--compare REF` also times the checkout at git revision REF (its core and plugins first on PYTHONPATH,
a `git worktree` under a temporary folder), the two trees' first calls alternated, and prints the ratio.

Run by hand: `python benchmarks/status_at_scale.py [--runs 1000] [--repeat 3] [--compare HEAD]`;
`--runs 4 --repeat 1` is a smoke run of seconds."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SPEC = textwrap.dedent("""
    experiment: scale
    output_dir: out
    model: {{path: org/model}}
    dataset: {{plugin: json-instruct, path: data.json}}
    train: {{plugin: trl, epochs: 1}}
    eval: [{{plugin: inspect, task: exact-match, include_base: false}}]
    scheduler:
      plugin: slurm
      prepare_data: false
      resources: {{cpus: 1, memory: 1GB, time: "01:00:00"}}
    sweep:
      seed: {seeds}
""")

DATA = ('{"train": [{"input": "a", "output": "A"}], "validation": [{"input": "c", "output": "C"}], '
        '"test": [{"input": "b", "output": "B"}]}')

SBATCH = """#!/bin/sh
n=$(cat "{bin}/next" 2>/dev/null || echo 4000)
echo $((n+1)) > "{bin}/next"
echo "$n"
"""

SQUEUE = """#!/bin/sh
echo squeue >> "{bin}/calls.log"
exit 0
"""

SACCT = """#!{python}
import sys
with open("{bin}/calls.log", "a") as fh:
    fh.write("sacct\\n")
args = sys.argv[1:]
bases = set(args[args.index("-j") + 1].split(","))
t0, t1 = "2026-12-01T10:00:00", "2026-12-01T10:20:00"
out = []
for jid in open("{bin}/jobs.txt").read().split():
    if jid.split("_")[0] not in bases:
        continue
    out.append(f"{{jid}}|COMPLETED|0:0|None|00:20:00|00:19:30||billing=1,cpu=1,mem=1G,node=1|node01|{{t0}}|{{t1}}")
    out.append(f"{{jid}}.batch|COMPLETED|0:0||00:20:00|00:19:30|812M|cpu=1,mem=1G,node=1|node01|{{t0}}|{{t1}}")
sys.stdout.write("\\n".join(out) + "\\n")
"""

#: In-process counting of the first `ck status`: fsync-like calls wrapped, writes seen by an audit hook.
COUNT = """
import os, sys
root = os.path.realpath(sys.argv[1])
counts = {"fsync": 0, "renames": 0}
def counted(fn):
    def wrapper(*a, **k):
        counts["fsync"] += 1
        return fn(*a, **k)
    return wrapper
for name in ("fsync", "fdatasync", "sync"):
    if hasattr(os, name):
        setattr(os, name, counted(getattr(os, name)))
def hook(event, args):
    if event == "os.rename" and os.path.realpath(os.fspath(args[1])).startswith(root):
        counts["renames"] += 1
sys.addaudithook(hook)
from cruijff_kit._cli import main
try:
    main(["status", "spec.yaml", "--json"])
except SystemExit:
    pass
sys.stderr.write("COUNTS " + " ".join(f"{k}={v}" for k, v in counts.items()) + "\\n")
"""


def tree_env(root: Path, fakebin: Path) -> dict[str, str]:
    """The environment that runs the core and plugins of ``root`` with the fake SLURM first on PATH."""
    paths = [root / "core" / "src", *sorted(root.glob("plugins/*/*/src"))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in paths),
            "PATH": f"{fakebin}{os.pathsep}{os.environ.get('PATH', '')}",
            "CK_PROFILE": str(fakebin / "no-profile.yaml")}


def fake_slurm(folder: Path) -> Path:
    """Write the fake sbatch/squeue/sacct into ``folder``; returns it."""
    folder.mkdir(parents=True)
    for name, text in (("sbatch", SBATCH), ("squeue", SQUEUE), ("sacct", SACCT)):
        path = folder / name
        path.write_text(text.format(bin=folder, python=sys.executable))
        path.chmod(0o755)
    return folder


def submit(work: Path, runs: int, fakebin: Path) -> Path:
    """`ck run` of the spec to the fake SLURM, then every stage marked done as `ck stage` marks it;
    returns the experiment folder."""
    work.mkdir(parents=True)
    (work / "spec.yaml").write_text(SPEC.format(seeds=list(range(1, runs + 1))))
    (work / "data.json").write_text(DATA)
    res = subprocess.run([sys.executable, "-m", "cruijff_kit", "run", "spec.yaml"], cwd=work,
                         env=tree_env(REPO, fakebin), capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"ck run failed:\n{res.stdout}\n{res.stderr}")
    exp = work / "out" / "scale"
    jobs = []
    host = os.uname().nodename
    for status_file in sorted(exp.glob("runs/*/status.json")):
        data = json.loads(status_file.read_text())
        for entry in data["stages"].values():
            assert entry.get("job_id") and "_" in entry["job_id"], entry  # array tasks
            jobs.append(entry["job_id"])
            entry.update(state="done", started="2026-12-01T10:00:05Z", ended="2026-12-01T10:19:55Z", pid=4242,
                         host=host, claim_job=entry["job_id"], attempts=1, exit_code=0,
                         updated="2026-12-01T10:19:55Z")
        status_file.write_text(json.dumps(data, indent=2) + "\n")
    (fakebin / "jobs.txt").write_text("\n".join(jobs) + "\n")
    if len(jobs) != 2 * runs:
        raise SystemExit(f"expected {2 * runs} submitted stages, found {len(jobs)}")
    return work


def status_once(work: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (this child's user + system) of one `ck status spec.yaml --json`."""
    before = os.times()
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "cruijff_kit", "status", "spec.yaml", "--json"], cwd=work,
                         env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = os.times()
    if res.returncode != 0:
        raise SystemExit(f"ck status failed ({res.returncode}):\n{res.stderr}")
    rows = json.loads(res.stdout)
    bad = [r for r in rows if r.get("state") != "done" or not r.get("usage")]
    if bad:
        raise SystemExit(f"{len(bad)} row(s) not done with usage after ck status, e.g. {bad[0]}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu


def counted(work: Path, env: dict[str, str], fakebin: Path) -> dict[str, int]:
    """Scheduler calls, files written and fsyncs of one first `ck status` (instrumented, in-process)."""
    (fakebin / "calls.log").unlink(missing_ok=True)
    res = subprocess.run([sys.executable, "-c", COUNT, str(work / "out")], cwd=work, env=env,
                         capture_output=True, text=True)
    line = res.stderr.rsplit("COUNTS ", 1)
    if len(line) != 2:
        raise SystemExit(f"the counting run failed:\n{res.stderr}")
    counts = {k: int(v) for k, v in (kv.split("=") for kv in line[1].split())}
    calls = (fakebin / "calls.log").read_text().split() if (fakebin / "calls.log").exists() else []
    counts["scheduler_calls"] = len(calls)
    return counts


class Tree:
    """One code tree measured: its environment and its timings."""

    def __init__(self, name: str, root: Path, fakebin: Path) -> None:
        self.name, self.env = name, tree_env(root, fakebin)
        self.first: list[tuple[float, float]] = []
        self.second: list[tuple[float, float]] = []

    def measure(self, template: Path, scratch: Path) -> None:
        """First and second `ck status` on a fresh copy of the submitted experiment."""
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(template, scratch, symlinks=True)
        os.sync()  # the copy's own writes are not left for the timed call to wait for
        self.first.append(status_once(scratch, self.env))
        self.second.append(status_once(scratch, self.env))


def med(values: list[tuple[float, float]], i: int) -> float:
    return statistics.median(v[i] for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000, help="runs of the experiment, 2 stages each (default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="times each status call is timed (default 3)")
    parser.add_argument("--compare", metavar="REF", help="also time the checkout at git revision REF")
    args = parser.parse_args()
    if args.runs < 1 or args.repeat < 1:
        parser.error("--runs and --repeat must be at least 1")
    with tempfile.TemporaryDirectory(prefix="ck-status-scale-") as tmp:
        base = Path(tmp)
        fakebin = fake_slurm(base / "fakebin")
        template = submit(base / "template", args.runs, fakebin)
        trees = [Tree("this checkout", REPO, fakebin)]
        if args.compare:
            old = base / "ref"
            subprocess.run(["git", "worktree", "add", "--detach", str(old), args.compare], cwd=REPO, check=True,
                           capture_output=True)
            trees.insert(0, Tree(args.compare, old, fakebin))
        try:
            for _ in range(args.repeat):  # the trees alternate
                for tree in trees:
                    tree.measure(template, base / "scratch")
            counts = []
            for tree in trees:
                shutil.rmtree(base / "scratch", ignore_errors=True)
                shutil.copytree(template, base / "scratch", symlinks=True)
                os.sync()
                counts.append(counted(base / "scratch", tree.env, fakebin))
        finally:
            if args.compare:
                subprocess.run(["git", "worktree", "remove", "--force", str(base / "ref")], cwd=REPO, check=False,
                               capture_output=True)
    stages = 2 * args.runs
    print(f"`ck status` of {args.runs:,} runs x 2 stages ({stages:,} SLURM array tasks, all finished); "
          f"median of {args.repeat}; load average {os.getloadavg()[0]:.2f}\n")
    print("| tree | first status wall (s) | first status CPU (s) | second status wall (s) | "
          "second status CPU (s) | scheduler calls | files written | fsyncs |")
    print("|---|---|---|---|---|---|---|---|")
    for tree, c in zip(trees, counts, strict=True):
        print(f"| {tree.name} | {med(tree.first, 0):.2f} | {med(tree.first, 1):.2f} | {med(tree.second, 0):.2f} | "
              f"{med(tree.second, 1):.2f} | {c['scheduler_calls']} | {c['renames']} | {c['fsync']} |")
    if args.compare:
        ref, now = trees
        print(f"\nfirst status, this checkout / {args.compare}: wall {med(now.first, 0) / med(ref.first, 0):.3f}, "
              f"CPU {med(now.first, 1) / med(ref.first, 1):.3f}")


if __name__ == "__main__":
    main()
