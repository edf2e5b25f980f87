"""Run the demo experiment end to end, offline: model, data, validate, plan, run, summarize.

    python examples/demo.py          # SmolLM2-135M-Instruct (converted once from a PyPI wheel)
    python examples/demo.py --fast   # the same on a tiny random model, in about a minute
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "demo.yaml"
CACHE = ROOT / ".cache"


def ck(*args: str, capture: bool = False) -> str:
    """Run a ck command, stopping the demo when it fails; with ``capture``, return its last output line
    (progress still shows: it goes to stderr)."""
    print(f"\n$ ck {' '.join(args)}", flush=True)
    res = subprocess.run([sys.executable, "-m", "cruijff_kit", *args], cwd=ROOT,
                         stdout=subprocess.PIPE if capture else None, text=True)
    if res.returncode != 0:
        sys.exit(res.returncode)
    lines = (res.stdout or "").strip().splitlines()
    if capture:
        print("\n".join(lines), flush=True)
    return lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="Use a tiny random model (about a minute).")
    args = parser.parse_args()
    start = time.time()
    data = CACHE / "data" / "capitalize.json"
    if args.fast:
        model = CACHE / "models" / "tiny-llama3"
        if not (model / "config.json").exists():
            ck("models", "tiny", str(model), "--family", "llama3")
        sets = ["--set", f"model.path={model}", "--set", "experiment=capitalize-demo-fast",
                "--set", "train.learning_rate=1e-2"]
    else:
        model = Path(ck("models", "smollm2", "--cache-dir", str(CACHE / "models"), capture=True))
        sets = ["--set", f"model.path={model}"]
    if not data.exists():
        ck("data", "capitalize", str(data))
    ck("validate", str(SPEC), *sets)
    ck("plan", str(SPEC), *sets)
    ck("run", str(SPEC), *sets)
    experiment = ROOT / "runs" / ("capitalize-demo-fast" if args.fast else "capitalize-demo")
    ck("summarize", str(experiment))
    ck("status", str(experiment))
    print(f"\nDemo finished in {time.time() - start:.0f} s. Open the table and plots listed above; "
          "`inspect view --log-dir runs/<experiment>/runs/<run>/eval` opens the eval logs.")


if __name__ == "__main__":
    main()
