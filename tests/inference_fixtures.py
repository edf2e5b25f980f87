"""Helpers of the inference tests: a run folder as a trainer leaves it, with a real tiny adapter."""

from __future__ import annotations

from pathlib import Path

import yaml
from inspect_fixtures import train_adapter


def make_run_folder(model_dir: Path, root: Path, steps: int = 15) -> Path:
    """``root/runs/brave-otter-000000`` with spec.yaml (``model.local_path``) and ``train/epoch_0/adapter``."""
    run = root / "runs" / "brave-otter-000000"
    train_adapter(model_dir, run / "train" / "epoch_0" / "adapter", steps=steps)
    (run / "spec.yaml").write_text(yaml.safe_dump({"model": {"path": str(model_dir), "local_path": str(model_dir)}}))
    return run
