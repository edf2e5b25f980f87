"""Throughput of ``ck simulate`` against a fake OpenAI-compatible server with fixed latency per call.

Starts ``tests/fake_openai.py`` as its own process (so the server's work does not compete with the
simulation's event loop), simulates conversations of a fixed length (the user's opening, then
assistant and user in turn until the user ends the chat after ``--turns`` assistant turns: ``1 + 2 x
turns`` calls each, counted by the simulation and checked) at each concurrency, and reports
conversations per minute against the latency-bound ideal ``concurrency x 60 / (calls per
conversation x latency)``, the CPU the simulation process spent per call and, on Linux, the share of
the run during which its threads (and the server's) were runnable but waiting for a CPU: what a busy
machine adds, and what bounds the ratio when the code's own CPU per call is small.

    .venv/bin/python benchmarks/simulate_throughput.py            # concurrency 1, 32 and 64, 100 ms per call
    .venv/bin/python benchmarks/simulate_throughput.py --concurrency 1 8 32 64 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def start_server(latency: float) -> tuple[subprocess.Popen[str], str]:
    """The fake server in a subprocess; returns (process, base URL)."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_openai.py"), "--latency", str(latency)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("URL "):
        proc.kill()
        raise RuntimeError(f"fake server did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


def write_spec(folder: Path, url: str, conversations: int, turns: int, concurrency: int) -> Path:
    """A spec simulating ``conversations`` conversations of exactly ``turns`` assistant turns, each ended by
    the user (``max_turns`` leaves room for one more, so the user's closing reply is asked for)."""
    rows = [{"id": f"b{i:05d}", "input": f"Task {i}: what is {i}+1? stop after {turns}", "output": str(i + 1)}
            for i in range(conversations)]
    (folder / "tasks.json").write_text(json.dumps(rows))

    def endpoint(model: str) -> dict[str, Any]:
        return {"plugin": "openai", "model": model, "base_url": url, "api_key_env": None, "timeout": 30}

    spec = {
        "experiment": f"bench-c{concurrency}",
        "model": {"path": "unused"},
        "dataset": {"plugin": "multiturn", "path": "conversations.jsonl"},
        "simulate": {"tasks": {"path": "tasks.json"}, "output": f"out-c{concurrency}.jsonl",
                     "max_turns": turns + 1, "concurrency": concurrency, "user": endpoint("bench-user"),
                     "assistant": endpoint("bench-assistant")},
    }
    path = folder / f"spec-c{concurrency}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def runqueue_ms(pid: int | str = "self") -> float | None:
    """Milliseconds the threads of process ``pid`` have waited for a CPU while runnable (Linux), else None."""
    total = 0.0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[1]) / 1e6
            except FileNotFoundError:  # a thread that ended meanwhile
                continue
    except (OSError, IndexError, ValueError):
        return None
    return total


def measure(url: str, folder: Path, concurrency: int, conversations: int, turns: int,
            latency: float, server_pid: int | None = None) -> dict[str, Any]:
    """Simulate once at one concurrency; conversations per minute and the share of the ideal."""
    from cruijff_kit._engine.spec import load_spec
    from cruijff_kit._simulate.command import simulate

    spec = load_spec(write_spec(folder, url, conversations, turns, concurrency))
    waited = (runqueue_ms(), runqueue_ms(server_pid) if server_pid else None)
    summary = simulate(spec, progress=False)
    after = (runqueue_ms(), runqueue_ms(server_pid) if server_pid else None)
    cpu = summary.cpu_seconds  # the process time of the loop (and its writer thread), first call to last
    if summary.failed or summary.finished != conversations:
        raise RuntimeError(f"concurrency {concurrency}: {summary.finished} finished, {summary.failed} failed")
    total_calls = sum(c["calls"] for c in summary.calls.values())
    calls = 1 + 2 * turns
    if total_calls != calls * conversations:
        raise RuntimeError(f"concurrency {concurrency}: {total_calls} calls, expected {calls} x {conversations}")
    ideal = concurrency * 60.0 / (calls * latency)
    wait = [None if a is None or b is None else round((b - a) / 1000 / summary.seconds, 3)
            for a, b in zip(waited, after, strict=True)]
    return {"concurrency": concurrency, "conversations": conversations, "calls_per_conversation": calls,
            "seconds": round(summary.seconds, 3), "per_minute": round(summary.per_minute, 1),
            "ideal_per_minute": round(ideal, 1), "ratio": round(summary.per_minute / ideal, 3),
            "cpu_ms_per_call": round(1000 * cpu / total_calls, 3), "runqueue_share": wait[0],
            "server_runqueue_share": wait[1]}


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs of one concurrency summarised: the median of each number (the first run's when only one)."""
    out = dict(rows[0])
    for key, value in rows[0].items():
        values = [r[key] for r in rows if r[key] is not None]
        if isinstance(value, float) and values:
            out[key] = round(statistics.median(values), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.1, help="seconds per call (default 0.1)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 64])
    ap.add_argument("--turns", type=int, default=2, help="assistant turns per conversation")
    ap.add_argument("--waves", type=int, default=4, help="conversations = waves x concurrency (at least 8)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per concurrency, interleaved; medians are shown")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    proc, url = start_server(args.latency)
    runs: dict[int, list[dict[str, Any]]] = {c: [] for c in args.concurrency}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "warm-up").mkdir()
            measure(url, Path(tmp) / "warm-up", 4, 8, 1, args.latency)  # imports, first connections
            for k in range(args.repeats):  # interleaved: each repeat runs every concurrency once
                for c in args.concurrency:
                    folder = Path(tmp) / f"r{k}"
                    folder.mkdir(exist_ok=True)
                    runs[c].append(measure(url, folder, c, max(8, args.waves * c), args.turns, args.latency,
                                           proc.pid))
    finally:
        proc.kill()
        proc.wait()
    results = [median_row(runs[c]) for c in args.concurrency]
    print(f"latency {args.latency * 1000:.0f} ms per call, {1 + 2 * args.turns} calls per conversation"
          + (f", median of {args.repeats} interleaved runs" if args.repeats > 1 else ""))
    print(f"{'concurrency':>11} {'convs':>6} {'seconds':>8} {'conv/min':>9} {'ideal':>8} {'ratio':>6} "
          f"{'cpu ms/call':>11} {'waited':>6} {'server waited':>13}")
    for r in results:
        waits = ["-" if w is None else f"{100 * w:.0f}%" for w in (r["runqueue_share"], r["server_runqueue_share"])]
        print(f"{r['concurrency']:>11} {r['conversations']:>6} {r['seconds']:>8.2f} {r['per_minute']:>9.1f} "
              f"{r['ideal_per_minute']:>8.1f} {r['ratio']:>6.3f} {r['cpu_ms_per_call']:>11.3f} {waits[0]:>6} "
              f"{waits[1]:>13}")
    if args.repeats > 1:
        for c in args.concurrency:
            ratios = sorted(r["ratio"] for r in runs[c])
            print(f"concurrency {c}: ratio {ratios[0]:.3f}-{ratios[-1]:.3f} over {len(ratios)} runs")
    if args.json:
        args.json.write_text(json.dumps({"latency": args.latency, "results": results,
                                         "runs": {str(c): runs[c] for c in args.concurrency}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
