"""``env.json``: what a stage ran with (package versions, git commit, python, hardware, command)."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import re
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


#: Prefix of the distributions of cruijff-kit and its plugins (all recorded), in normalized form.
OWN_PREFIX = "cruijff-kit"


def _normalized(name: str) -> str:
    """A distribution name as packaging normalizes it (``Cruijff_Kit.X`` -> ``cruijff-kit-x``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _own_metadata_dirs() -> list[Path]:
    """The ``*.dist-info``/``*.egg-info`` folders on ``sys.path`` whose name starts with cruijff-kit's.

    Only folder names are listed (no metadata file is read), in ``sys.path`` order.
    """
    found: list[Path] = []
    for entry in sys.path:
        try:
            with os.scandir(entry or ".") as it:
                for e in it:
                    if (e.name.endswith((".dist-info", ".egg-info")) and _normalized(e.name).startswith(OWN_PREFIX)
                            and e.is_dir()):
                        found.append(Path(e.path))
        except OSError:
            continue
    return found


@cache
def package_versions() -> dict[str, str]:
    """Installed versions of the packages that matter, plus every cruijff-kit plugin distribution.

    Reads the metadata of those distributions only (not of every installed one): the first found on
    ``sys.path`` of each name, as ``importlib.metadata.version`` does.
    """
    out: dict[str, str] = {}
    seen: set[str] = set()
    dists: list[md.Distribution] = []
    for name in PACKAGES:
        try:
            dists.append(md.distribution(name))
        except md.PackageNotFoundError:
            continue
    dists.extend(md.PathDistribution(folder) for folder in _own_metadata_dirs())
    for dist in dists:
        name = dist.metadata["Name"] or ""
        key = _normalized(name)
        if not name or key in seen or not (key in PACKAGES or key.startswith(OWN_PREFIX)):
            continue
        seen.add(key)
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
