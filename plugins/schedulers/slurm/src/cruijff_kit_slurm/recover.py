"""Out-of-memory recovery for train stages: same effective batch, half the per-device batch.

``python -m cruijff_kit_slurm.recover RUN_DIR STAGE ...`` runs inside a job after the stage failed. It
looks for an out-of-memory error in what this attempt wrote to the stage's logs; when it finds one and
retries are left, it halves ``train.batch_size``, doubles ``train.gradient_accumulation`` in the run's
resolved ``spec.yaml``, records the change in ``status.json`` and exits 0 (the job runs the stage
again). Otherwise it exits non-zero and the job ends with the stage's own exit code.

A job that runs several stages of a run (grouped evaluations) also asks it which of them are still to
do (``--unfinished``: it prints their names) and records a requeue on each of them (``--requeued``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cruijff_kit import RunLayout, status
from cruijff_kit.files import atomic_write_yaml, load_yaml, locked

#: Text that marks an out-of-memory failure in a stage's log (CUDA, ROCm, MPS, and the host's OOM killer).
OOM_PATTERNS = (
    "CUDA out of memory",
    "OutOfMemoryError",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "HIP out of memory",
    "MPS backend out of memory",
    "oom_kill event",
    "oom-kill",
    "Detected 1 oom",
)
EXIT_RETRY, EXIT_NOT_OOM, EXIT_NO_RETRY = 0, 2, 3


def read_from(path: Path, offset: int, limit: int = 4 << 20) -> str:
    """Text of ``path`` after byte ``offset`` (at most the last ``limit`` bytes of it)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(offset, size - limit, 0))
            return fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def is_oom(text: str) -> bool:
    """True when ``text`` holds an out-of-memory error."""
    return any(p in text for p in OOM_PATTERNS)


def halve_batch(run_dir: Path, stage: str, max_retries: int, reason: str) -> dict[str, Any] | None:
    """Halve the batch and double accumulation of a run's train stage; None when no retry is left.

    The change is written to the resolved ``spec.yaml`` (what the next attempt reads), recorded as an
    override in ``status.json`` (so ``ck run`` keeps it when it rewrites the spec) and appended to the
    stage's ``adjustments``.
    """
    layout = RunLayout(Path(run_dir))
    with locked(layout.spec):
        spec = load_yaml(layout.spec.read_text())
        train = spec.get("train") or {}
        entry = status.read(layout.root)["stages"].get(stage, {})
        used = int(entry.get("oom_retries", 0))
        batch, accum = int(train.get("batch_size", 1)), int(train.get("gradient_accumulation", 1))
        if used >= max_retries or batch <= 1:
            why = (f"{used} out-of-memory retries used (limit {max_retries})" if used >= max_retries
                   else "the per-device batch size is already 1")
            status.update_stage(layout.root, stage, oom=True,
                                error=f"out of memory at batch_size {batch}; not retried: {why}.")
            return None
        new_batch, new_accum = batch // 2, accum * 2
        train["batch_size"], train["gradient_accumulation"] = new_batch, new_accum
        atomic_write_yaml(layout.spec, spec, parsed_copy=True)
    change = {"reason": reason, "at": status.now(), "batch_size": [batch, new_batch],
              "gradient_accumulation": [accum, new_accum]}
    status.record_override(layout.root, "train.batch_size", new_batch)
    status.record_override(layout.root, "train.gradient_accumulation", new_accum)
    adjustments = list(entry.get("adjustments") or []) + [change]
    status.update_stage(layout.root, stage, oom_retries=used + 1, adjustments=adjustments, oom=False,
                        state=status.SUBMITTED, error=None)
    return change


#: Stage states a requeued job of several stages does not run again (``failed``: only on request,
#: ``ck run --retry-failed``).
FINISHED_ON_RESTART = (status.DONE, status.FAILED, status.CANCELLED)


def unfinished(run_dir: Path, stages: list[str], restart_count: int = 0) -> list[str]:
    """The stages of ``stages`` a job that runs them all still has to run: those not done, and when the
    job was requeued (``restart_count`` > 0) also not failed or cancelled (a requeue resumes what the
    time limit stopped; it retries nothing)."""
    entries = status.read(run_dir)["stages"]
    finished = FINISHED_ON_RESTART if restart_count > 0 else (status.DONE,)
    return [s for s in stages if entries.get(s, {}).get("state") not in finished]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry used by the job scripts; see the module docstring."""
    ap = argparse.ArgumentParser(prog="python -m cruijff_kit_slurm.recover")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("stages", nargs="+", metavar="stage")
    ap.add_argument("--exit-code", type=int, default=1)
    ap.add_argument("--out-offset", type=int, default=0)
    ap.add_argument("--err-offset", type=int, default=0)
    ap.add_argument("--max-retries", type=int, default=2)
    ap.add_argument("--requeued", action="store_true", help="record that the job is being requeued")
    ap.add_argument("--unfinished", action="store_true", help="print the stages still to do")
    ap.add_argument("--restart-count", type=int, default=0, help="SLURM_RESTART_COUNT of the job")
    args = ap.parse_args(argv)
    if args.unfinished:
        print(" ".join(unfinished(args.run_dir, args.stages, args.restart_count)))
        return 0
    if args.requeued:
        entries = status.read(args.run_dir)["stages"]
        # one stage: as it always was; several: those the requeued job runs again
        todo = args.stages if len(args.stages) == 1 else unfinished(args.run_dir, args.stages, 1)
        for stage in todo:
            status.update_stage(args.run_dir, stage, state=status.SUBMITTED, error=None,
                                requeues=int(entries.get(stage, {}).get("requeues", 0)) + 1,
                                note="requeued before the time limit; resumes from its saved state")
        return 0
    if args.stages != ["train"]:
        return EXIT_NOT_OOM
    stage = "train"
    layout = RunLayout(args.run_dir.resolve())
    text = read_from(layout.log(stage, "err"), args.err_offset) + \
        read_from(layout.log(stage, "out"), args.out_offset)
    if not is_oom(text):
        return EXIT_NOT_OOM
    change = halve_batch(layout.root, stage, args.max_retries, f"out of memory (exit code {args.exit_code})")
    if change is None:
        print("[ck-slurm] out of memory; no retry left", file=sys.stderr)
        return EXIT_NO_RETRY
    print(f"[ck-slurm] out of memory: retrying with batch_size {change['batch_size'][1]} and "
          f"gradient_accumulation {change['gradient_accumulation'][1]} (same effective batch)", file=sys.stderr)
    return EXIT_RETRY


if __name__ == "__main__":
    sys.exit(main())
