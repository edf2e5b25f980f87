"""CLI start-up: `ck --help`, `ck plan` of a 1,000-run sweep, and `ck status` over 1,000 runs,
against `python -c "import torch"`. Run by hand: `python benchmarks/cli_startup.py`.

`--compare REF` also times `ck --help` of the checkout at git revision REF (core and plugins put first
on PYTHONPATH, so the installed entry points load that revision's code), alternating the two
commands, and prints the ratio now / REF.

`--values N` sweeps N values on each of the three axes (N^3 runs; default 10, the 1,000 runs above) and
`--repeat K` times each command K times (default 3): `--values 2 --repeat 1` is a smoke run of seconds."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SPEC = textwrap.dedent("""
    experiment: bench
    model: {{path: org/model}}
    dataset: {{plugin: json-instruct, path: data.json}}
    train: {{plugin: trl}}
    eval: [{{plugin: inspect, task: exact-match}}]
    sweep:
      train.lora.rank: {ranks}
      train.learning_rate: {rates}
      seed: {seeds}
""")


def sweep_spec(values: int) -> str:
    """The benchmark's spec: ``values`` values on each of three sweep axes (``values ** 3`` runs)."""
    return SPEC.format(ranks=list(range(1, values + 1)), rates=[round(0.1 * i, 1) for i in range(1, values + 1)],
                       seeds=list(range(1, values + 1)))


def timed(cmd: list[str], cwd: Path, repeat: int = 3) -> float:
    """Median wall seconds of a command."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def tree_env(root: Path) -> dict[str, str]:
    """The environment that makes ``python -m cruijff_kit`` run the core and plugins of ``root``."""
    paths = [root / "core" / "src", *sorted(root.glob("plugins/*/*/src"))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in paths)}


def compare_help(ref: str, repeat: int = 15) -> None:
    """Median `ck --help` of this checkout and of revision ``ref``, runs alternated, and the ratio."""
    repo = Path(__file__).resolve().parents[1]
    py = sys.executable
    cmd = [py, "-m", "cruijff_kit", "--help"]
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "ref"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), ref], cwd=repo, check=True,
                       capture_output=True)
        try:
            now_env, old_env = tree_env(repo), tree_env(old)
            for env in (now_env, old_env):  # warm the file cache and check both run
                subprocess.run(cmd, cwd=tmp, env=env, check=True, capture_output=True)
            now_t, old_t = [], []
            for _ in range(repeat):
                for env, out in ((now_env, now_t), (old_env, old_t)):
                    t = time.perf_counter()
                    subprocess.run(cmd, cwd=tmp, env=env, check=True, capture_output=True)
                    out.append(time.perf_counter() - t)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=repo, check=False)
    now_m, old_m = statistics.median(now_t), statistics.median(old_t)
    print(f"| `ck --help` | {ref} | this checkout | ratio |\n|---|---|---|---|\n"
          f"| median of {repeat} (s) | {old_m:.3f} | {now_m:.3f} | {now_m / old_m:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--compare", metavar="REF", help="Also time `ck --help` of git revision REF.")
    parser.add_argument("--values", type=int, default=10, help="values per sweep axis (runs = values^3; default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="times each command is timed (default 3)")
    args = parser.parse_args()
    if args.values < 1 or args.repeat < 1:
        parser.error("--values and --repeat must be at least 1")
    if args.compare:
        compare_help(args.compare)
        return
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "spec.yaml").write_text(sweep_spec(args.values))
        (d / "data.json").write_text('{"train": [{"input": "a", "output": "A"}], "validation": [{"input": "c", "output": "C"}], "test": [{"input": "b", "output": "B"}]}')
        runs, k = args.values ** 3, args.repeat
        rows = [
            ("python -c 'import torch'", timed([py, "-c", "import torch"], d, k)),
            ("ck --help", timed([py, "-m", "cruijff_kit", "--help"], d, k)),
            (f"ck plan ({runs:,} runs)", timed([py, "-m", "cruijff_kit", "plan", "spec.yaml"], d, k)),
        ]
        subprocess.run([py, "-m", "cruijff_kit", "run", "spec.yaml", "--dry-run"], cwd=d, check=True,
                       capture_output=True)
        rows.append((f"ck status ({runs:,} runs x 2 stages)", timed([py, "-m", "cruijff_kit", "status", "spec.yaml",
                                                                     "--json"], d, k)))
        files = status_files_read(d)
    print("| command | median wall (s) |\n|---|---|")
    for name, t in rows:
        print(f"| {name} | {t:.2f} |")
    print(f"\nck status: {files}")


COUNT_OPENS = """
import os, sys
seen = []
root = sys.argv[1]
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, os.PathLike)):
        path = os.path.abspath(os.fspath(args[0]))
        if path.startswith(root):
            seen.append(path)
sys.addaudithook(hook)
from cruijff_kit._cli import main
try:
    main(["status", "spec.yaml", "--json"])
except SystemExit:
    pass
sys.stderr.write(f"FILES {len(seen)} {len(set(seen))}\\n")
"""


def status_files_read(d: Path) -> str:
    """Files `ck status` opens under the spec's folder (an audit hook on `open`): total and distinct."""
    res = subprocess.run([sys.executable, "-c", COUNT_OPENS, str(d.resolve())], cwd=d, check=True,
                         capture_output=True, text=True)
    total, distinct = res.stderr.rsplit("FILES ", 1)[1].split()
    return f"{total} opens of {distinct} distinct files"


if __name__ == "__main__":
    main()
