"""Shared fixtures: the throwaway third-party plugin, tiny models, and a `ck` runner.

Fixtures that build something expensive are shared across pytest-xdist workers through a folder
next to the workers' temp folders, guarded by a file lock.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
TOY_PLUGIN = ROOT / "tests" / "toy_plugin"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


#: per-test time limit (seconds) by tier, so a hang fails the test instead of the whole run; an explicit
#: ``@pytest.mark.timeout`` wins, and ``--timeout`` (or ``PYTEST_TIMEOUT``) replaces them all
TIER_TIMEOUTS: dict[str, float] = {"slow": 900, "integration": 300}
UNIT_TIMEOUT: float = 120


def tier_timeout(item: pytest.Item) -> float:
    """The time limit of ``item``'s tier: the longest of its tier markers, 120 s for an unmarked test."""
    return max([UNIT_TIMEOUT, *(limit for tier, limit in TIER_TIMEOUTS.items() if item.get_closest_marker(tier))])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test without its own ``timeout`` marker the time limit of its tier."""
    if config.getoption("timeout", None) is not None or os.environ.get("PYTEST_TIMEOUT"):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(tier_timeout(item)))


def _gate_skip(nodeid: str, report: pytest.CollectReport | pytest.TestReport) -> None:
    """Turn a skip into a failure when a part of this repository is missing (always) or, under
    ``CI=true``, when its reason is not listed in ``tests/skip_reasons.py``."""
    from skip_reasons import allowed_in_ci, missing_from_repo

    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if missing_from_repo(reason):
        report.outcome = "failed"
        report.longrepr = (f"{nodeid} skipped because a part of this repository is missing; `make install` "
                           f"installs the core, every plugin and their dependencies: {reason}")
    elif IN_CI and not allowed_in_ci(reason):
        report.outcome = "failed"
        report.longrepr = (f"{nodeid} skipped under CI=true for a reason not listed in "
                           f"tests/skip_reasons.py: {reason}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """A skip in a test or its fixtures passes through the skip gate (``_gate_skip``)."""
    report = yield
    _gate_skip(item.nodeid, report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):  # type: ignore[no-untyped-def]
    """A skip while collecting a module (``pytest.importorskip`` at its top) passes the same gate."""
    report = yield
    _gate_skip(collector.nodeid, report)
    return report


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


def mount_tmpfs(folder: Path, size: str = "1m") -> Path:
    """Mount a real tmpfs of ``size`` at a new folder under ``folder`` (needs root, which CI has;
    elsewhere the calling test skips). Unmount with ``umount -l``."""
    mnt = folder / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    return mnt


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs mounted under tmp_path, unmounted afterwards."""
    mnt = mount_tmpfs(tmp_path)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)
