"""``env.json``: what a stage ran with (package versions, git commit, python, hardware, command)."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import socket
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

from cruijff_kit._base.fileio import update_json
from cruijff_kit._base.secrets import scrub
from cruijff_kit.status import now

PACKAGES = ("cruijff-kit", "torch", "transformers", "peft", "trl", "torchtune", "torchao", "accelerate",
            "bitsandbytes", "inspect-ai", "datasets", "tokenizers", "openai", "submitit", "pydantic", "pluggy")


@cache
def package_versions() -> dict[str, str]:
    """Installed versions of the packages that matter, plus every cruijff-kit plugin distribution."""
    out: dict[str, str] = {}
    for dist in md.distributions():
        name = dist.metadata["Name"] or ""
        if name.lower() in PACKAGES or name.lower().startswith("cruijff-kit"):
            out[name] = dist.version
    return dict(sorted(out.items()))


def git_commit(folder: Path) -> str | None:
    """The commit of the git checkout holding ``folder`` (None outside git)."""
    try:
        res = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def hardware() -> dict[str, Any]:
    """CPU count, memory and (when torch is already imported) accelerators."""
    info: dict[str, Any] = {"cpus": os.cpu_count(), "machine": platform.machine()}
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gb"] = round(pages * size / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    else:
        info["gpus"] = []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        info["cuda_visible_devices"] = visible
    return info


def record(run_dir: Path, stage: str, seed: int, spec_dir: str | None = None) -> None:
    """Merge this stage's environment into ``env.json`` (secrets never written)."""
    entry = scrub({
        "started": now(),
        "host": socket.gethostname(),
        "command": sys.argv,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hardware": hardware(),
        "job_id": os.environ.get("SLURM_JOB_ID") or os.environ.get("RUNPOD_POD_ID"),
    })

    def change(data: dict[str, Any]) -> None:
        data["seed"] = seed
        data["packages"] = package_versions()
        data["git_commit"] = git_commit(Path(spec_dir)) if spec_dir else None
        data.setdefault("stages", {})[stage] = entry

    update_json(Path(run_dir) / "env.json", change)
