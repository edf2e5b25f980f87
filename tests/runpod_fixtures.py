"""Helpers for the runpod scheduler's tests: a fake RunPod (API + containers) and a fake bucket on
127.0.0.1, a user profile pointing at them, a spec that uses the toy plugins, and `ck` in-process.

Use the fixtures as ``fake_runpod = pytest.fixture(running_fake_runpod, name="fake_runpod")`` (and
``running_fake_store``) in a test module."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fake_runpod import FakeObjectStore, FakeRunPod

BUCKET = "ck-bucket"


def running_fake_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeObjectStore]:
    """An S3-compatible bucket server; the AWS variables hold its credentials."""
    store = FakeObjectStore().start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", store.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", store.secret_key)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    yield store
    store.stop()


def running_fake_runpod(with_toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRunPod]:
    """The RunPod API on 127.0.0.1 (RUNPOD_API_BASE_URL points there) whose pods run here."""
    from cruijff_kit_runpod import pods
    from cruijff_kit_runpod.api import RunPodApi

    monkeypatch.setenv("RUNPOD_API_KEY", "test-key")
    monkeypatch.setattr(RunPodApi, "backoff", 0.01)
    monkeypatch.setattr(pods, "_PRICE_CACHE", {})
    monkeypatch.setattr(pods, "SELF_TERMINATE_GRACE", 20.0)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    fake = FakeRunPod(container_root=tmp_path / "containers", base_env=env).start()
    monkeypatch.setenv("RUNPOD_API_BASE_URL", fake.url)
    yield fake
    fake.stop()


def profile_data(store: FakeObjectStore, **runpod: object) -> dict[str, object]:
    """A profile's content: RunPod settings and the fake bucket."""
    section: dict[str, object] = {
        "gpu_type": "NVIDIA A100 80GB PCIe", "cloud_type": "SECURE", "image": "example/ck-image:1",
        "install": [], "secrets": ["HF_TOKEN", "WANDB_API_KEY"],
        "store": {"bucket": BUCKET, "prefix": "ck", "endpoint_url": store.url, "region": "us-east-1",
                  "addressing_style": "path"},
    }
    section.update(runpod)
    return {"runpod": section}


def write_profile(folder: Path, store: FakeObjectStore, **runpod: object) -> Path:
    """``ck.profile.yaml`` beside the spec."""
    path = folder / "ck.profile.yaml"
    path.write_text(yaml.safe_dump(profile_data(store, **runpod), sort_keys=False))
    return path


def write_toy_spec(folder: Path, *, scheduler: str = "", train: str = "", name: str = "spec.yaml") -> Path:
    """A finetune spec with the toy plugins (train, eval of base and last epoch) on the runpod scheduler."""
    model = folder / "models" / "base"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text('{"model_type": "toy"}')
    text = textwrap.dedent("""\
        experiment: rp
        model: {path: models/base}
        dataset: {plugin: toy-data}
        train:
          plugin: toy
          epochs: 1
        %TRAIN%
        eval:
          - {plugin: toy-eval, task: toy, include_base: true}
        scheduler:
          plugin: runpod
          resources: {gpus: 1, time: "00:10:00"}
          poll_seconds: 0.2
        %SCHED%
        """)
    text = text.replace("%TRAIN%\n", textwrap.indent(textwrap.dedent(train), "  ") if train else "")
    text = text.replace("%SCHED%\n", textwrap.indent(textwrap.dedent(scheduler), "  ") if scheduler else "")
    path = folder / name
    path.write_text(text)
    return path


def run_ck(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The real `ck` CLI in this process (the fakes run in its threads): (exit code, output)."""
    from cruijff_kit._cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out + out.err


def run_dirs(folder: Path) -> list[Path]:
    """The run folders of the toy spec's experiment."""
    return sorted(p for p in (folder / "runs" / "rp" / "runs").iterdir() if p.is_dir())


def stages(run_dir: Path) -> dict[str, dict]:
    """A run's status entries by stage."""
    return json.loads((run_dir / "status.json").read_text())["stages"]
