"""Shared fixtures: the throwaway third-party plugin, tiny models, and a `ck` runner.

Fixtures that build something expensive are shared across pytest-xdist workers through a folder
next to the workers' temp folders, guarded by a file lock.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
TOY_PLUGIN = ROOT / "tests" / "toy_plugin"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder shared by all xdist workers of this session."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    path = root / "shared"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def toy_site(shared_dir: Path) -> Path:
    """The toy third-party plugin distribution, built and installed with pip into its own folder."""
    target = shared_dir / "toy-site"
    with FileLock(str(target) + ".lock"):
        if not (target / ".done").exists():
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                 "--target", str(target), str(TOY_PLUGIN)],
                check=True, capture_output=True, text=True,
            )
            (target / ".done").write_text("ok")
    return target


@pytest.fixture
def with_toy(toy_site: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make the toy plugin visible to this process and to subprocesses; fresh plugin registry."""
    from cruijff_kit._api import registry as plugins

    monkeypatch.syspath_prepend(str(toy_site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(toy_site), os.environ.get("PYTHONPATH", "")]))
    plugins.registry.cache_clear()
    yield toy_site
    plugins.registry.cache_clear()


@pytest.fixture
def ck(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the real `ck` CLI in a subprocess: ck("plan", "spec.yaml") -> CompletedProcess."""

    def run(*args: str, cwd: Path | None = None, timeout: float = 600, check: bool = False,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, **(env or {})}
        res = subprocess.run([sys.executable, "-m", "cruijff_kit", *args], cwd=cwd or tmp_path, text=True,
                             capture_output=True, timeout=timeout, env=full_env)
        if check and res.returncode != 0:
            raise AssertionError(f"ck {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    return run


@pytest.fixture(scope="session")
def tiny_model_factory(shared_dir: Path) -> Callable[..., Path]:
    """Build (once per session, shared by workers) a tiny random model: factory(family="llama3")."""

    def build(family: str = "llama3", **kwargs: object) -> Path:
        from cruijff_kit._models import build_tiny_model

        suffix = "-".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
        out = shared_dir / f"tiny-{family}{('-' + suffix) if suffix else ''}"
        with FileLock(str(out) + ".lock"):
            if not (out / ".done").exists():
                build_tiny_model(out, family=family, **kwargs)
                (out / ".done").write_text("ok")
        return out

    return build


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_factory: Callable[..., Path]) -> Path:
    """A tiny Llama-3-style model folder (random weights, local tokenizer)."""
    return tiny_model_factory("llama3")


@pytest.fixture(scope="session")
def tiny_qwen(tiny_model_factory: Callable[..., Path]) -> Path:
    """A tiny Qwen2-style model folder."""
    return tiny_model_factory("qwen2")


def write_spec(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    """Write a spec file (dedented) and return its path."""
    import textwrap

    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path
