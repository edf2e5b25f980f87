"""Plan-time checks of a ``trl`` run that need no heavy import: quantization backend, trackers, splits."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

from cruijff_kit import Resources, SpecError
from cruijff_kit_trl.config import TRACKER_MODULES, TrlConfig

if TYPE_CHECKING:  # pragma: no cover
    from cruijff_kit import PlannedRun


def _spec_file(run: PlannedRun) -> str | None:
    return run.spec.get("run", {}).get("spec_file")


def bitsandbytes_backends() -> set[str] | None:
    """Devices the installed bitsandbytes has a 4-bit backend for, without importing it; None if missing."""
    spec = find_spec("bitsandbytes")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg = Path(next(iter(spec.submodule_search_locations)))
    found: set[str] = set()
    if (pkg / "backends" / "cpu").is_dir() or any(pkg.glob("libbitsandbytes_cpu*")):
        found.add("cpu")
    if any(pkg.glob("libbitsandbytes_cuda*")) or any(pkg.glob("libbitsandbytes_rocm*")):
        found.add("cuda")
    return found


def quantization_problem(device: str) -> str | None:
    """Why 4-bit NF4 quantization cannot run on ``device`` ("cpu" or "cuda") here, or None when it can."""
    backends = bitsandbytes_backends()
    if backends is None:
        return ("method: qlora needs bitsandbytes, which is not installed in this environment. Install it "
                "(`pip install bitsandbytes`; version 0.50 quantizes on CPU and GPU), or use method: lora.")
    if device not in backends:
        where = "this CPU" if device == "cpu" else "a GPU"
        return (f"method: qlora needs a bitsandbytes build that can quantize on {where}, and the installed one "
                f"has backends for {sorted(backends) or 'no device'} only. Install bitsandbytes 0.50 or later (it has a "
                "CPU backend and CUDA builds), run on a machine with a supported GPU, or use method: lora.")
    return None


def check_run(run: PlannedRun, config: TrlConfig) -> None:
    """Everything ``ck plan`` can check about a ``trl`` run without importing torch."""
    from cruijff_kit.training import check_targets, check_validation_split

    check_targets(run, config)
    file = _spec_file(run)
    if "lm_head" in config.lora.targets:
        raise SpecError("TRL computes log-probabilities from `lm_head.weight` directly, so a LoRA adapter on "
                        "lm_head would never train.", file=file, path="train.lora.targets",
                        hint="Remove lm_head from the targets (or train with plugin: torchtune).")
    sched = run.spec.get("scheduler") or {}
    resources = Resources.model_validate(sched.get("resources", {}))
    # Quantization is checked here only when this machine is the one that trains; else at stage start.
    if config.method == "qlora" and sched.get("plugin") == "local":
        problem = quantization_problem("cuda" if resources.gpus > 0 else "cpu")
        if problem:
            raise SpecError(problem, file=file, path="train.method")
    if config.precision == "fp16" and resources.gpus == 0:
        raise SpecError("precision fp16 needs a GPU, and this run asks for none (scheduler.resources.gpus: 0).",
                        file=file, path="train.precision", hint="Use precision: auto (fp32 on CPU).")
    missing = [t for t in config.report_to if find_spec(TRACKER_MODULES[t]) is None]
    if missing and sched.get("plugin") == "local":
        raise SpecError(f"report_to asks for {missing}, which is not installed here.", file=file,
                        path="train.report_to",
                        hint=f"Install it with `pip install 'cruijff-kit-trl[{missing[0]}]'`, or remove it.")
    check_validation_split(run, config)
