"""Throughput of ``ck simulate`` against a fake OpenAI-compatible server with fixed latency per call.

Starts ``tests/fake_openai.py`` as its own process (so the server's work does not compete with the
simulation's event loop), simulates conversations of a fixed length (``--turns`` assistant turns, so
``1 + 2 x turns`` calls each) at each concurrency, and reports conversations per minute against the
latency-bound ideal ``concurrency x 60 / (calls per conversation x latency)``.

    .venv/bin/python benchmarks/simulate_throughput.py            # concurrency 1 and 32, 100 ms per call
    .venv/bin/python benchmarks/simulate_throughput.py --concurrency 1 8 32 64 --json out.json
"""

from __future__ import annotations

import argparse
import json
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
    """A spec simulating ``conversations`` conversations of exactly ``turns`` assistant turns."""
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
                     "max_turns": turns, "concurrency": concurrency, "user": endpoint("bench-user"),
                     "assistant": endpoint("bench-assistant")},
    }
    path = folder / f"spec-c{concurrency}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def measure(url: str, folder: Path, concurrency: int, conversations: int, turns: int,
            latency: float) -> dict[str, Any]:
    """Simulate once at one concurrency; conversations per minute and the share of the ideal."""
    from cruijff_kit._engine.spec import load_spec
    from cruijff_kit._simulate.command import simulate

    summary = simulate(load_spec(write_spec(folder, url, conversations, turns, concurrency)), progress=False)
    cpu = summary.cpu_seconds  # the loop's process time, from the first call to the last
    if summary.failed or summary.finished != conversations:
        raise RuntimeError(f"concurrency {concurrency}: {summary.finished} finished, {summary.failed} failed")
    calls = 1 + 2 * turns
    ideal = concurrency * 60.0 / (calls * latency)
    return {"concurrency": concurrency, "conversations": conversations, "calls_per_conversation": calls,
            "seconds": round(summary.seconds, 3), "per_minute": round(summary.per_minute, 1),
            "ideal_per_minute": round(ideal, 1), "ratio": round(summary.per_minute / ideal, 3),
            "cpu_ms_per_call": round(1000 * cpu / (calls * conversations), 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.1, help="seconds per call (default 0.1)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--turns", type=int, default=2, help="assistant turns per conversation")
    ap.add_argument("--waves", type=int, default=4, help="conversations = waves x concurrency (at least 8)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    proc, url = start_server(args.latency)
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "warm-up").mkdir()
            measure(url, Path(tmp) / "warm-up", 4, 8, 1, args.latency)  # imports, first connections
            for c in args.concurrency:
                results.append(measure(url, Path(tmp), c, max(8, args.waves * c), args.turns, args.latency))
    finally:
        proc.kill()
        proc.wait()
    print(f"latency {args.latency * 1000:.0f} ms per call, {1 + 2 * args.turns} calls per conversation")
    print(f"{'concurrency':>11} {'convs':>6} {'seconds':>8} {'conv/min':>9} {'ideal':>8} {'ratio':>6} "
          f"{'cpu ms/call':>11}")
    for r in results:
        print(f"{r['concurrency']:>11} {r['conversations']:>6} {r['seconds']:>8.2f} {r['per_minute']:>9.1f} "
              f"{r['ideal_per_minute']:>8.1f} {r['ratio']:>6.2f} {r['cpu_ms_per_call']:>11.2f}")
    if args.json:
        args.json.write_text(json.dumps({"latency": args.latency, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
