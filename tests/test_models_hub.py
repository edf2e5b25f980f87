"""Hub models without a hub: a folder in the hub cache layout is listed by `ck models list`, resolves
specs that name the model by hub id with HF_HUB_OFFLINE=1, and loads; downloads verify file hashes;
an unreachable hub gives a clear message."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_spec
from inspect_fixtures import write_dataset

from cruijff_kit._models import hub

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_hub_cache(cache: Path, model_dir: Path, hub_id: str = "acme/tiny-llama", commit: str = COMMIT) -> Path:
    """Lay out ``model_dir`` as the hub library does: blobs named by hash, snapshot symlinks, refs/main."""
    repo = hub.repo_folder(cache, hub_id)
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        if f.is_file() and not f.name.startswith("."):
            blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
            shutil.copyfile(f, blob)
            (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


@pytest.fixture
def cache(tmp_path: Path, tiny_llama: Path) -> Path:
    make_hub_cache(tmp_path / "cache", tiny_llama)
    return tmp_path / "cache"


def test_find_cached_reads_the_layout(cache: Path) -> None:
    snap = hub.find_cached("acme/tiny-llama", cache)
    assert snap == hub.repo_folder(cache, "acme/tiny-llama") / "snapshots" / COMMIT
    assert hub.find_cached("acme/tiny-llama", cache, COMMIT) == snap
    assert hub.find_cached("acme/tiny-llama", cache, "v2") is None
    assert hub.find_cached("acme/other", cache) is None
    assert hub.looks_like_hub_id("acme/tiny-llama") and not hub.looks_like_hub_id("./models/x")


def test_spec_with_hub_id_resolves_offline_and_is_listed(cache: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.runner import write_experiment
    from cruijff_kit._engine.spec import load_spec
    from cruijff_kit.inference._loading import resolve_target

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("CK_PROFILE", raising=False)
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "ck.profile.yaml").write_text(f"models_cache: {cache}\n")
    write_dataset(exp)
    spec = write_spec(exp, """
        experiment: hub-model
        model: {path: acme/tiny-llama}
        dataset: {plugin: json-instruct, path: data.json}
        eval: [{plugin: inspect, task: exact-match}]
    """)
    plan = make_plan(load_spec(spec))
    write_experiment(plan)
    snap = hub.find_cached("acme/tiny-llama", cache)
    run = plan.runs[0]
    assert run.spec["model"]["local_path"] == str(snap)
    assert resolve_target(run.layout.root) == (str(snap), None)

    res = subprocess.run([sys.executable, "-m", "cruijff_kit", "models", "list", "--json", "--cache-dir", str(cache),
                          "--experiments", str(exp)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(res.stdout)
    assert row["hub_id"] == "acme/tiny-llama" and row["commit"] == COMMIT and row["refs"] == ["main"]
    assert row["used_by"] == ["hub-model"]
    size = sum(p.stat().st_size for p in (hub.repo_folder(cache, "acme/tiny-llama") / "blobs").iterdir())
    assert row["size_bytes"] == size
    table = subprocess.run([sys.executable, "-m", "cruijff_kit", "models", "list", "--cache-dir", str(cache)],
                           capture_output=True, text=True, cwd=exp)
    assert "acme/tiny-llama" in table.stdout and "hub-model" in table.stdout


def test_loads_from_the_cache_offline(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cruijff_kit.inference import load

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = load(hub.find_cached("acme/tiny-llama", cache), device="cpu", progress=False)
    assert len(m.generate(["dog"], max_new_tokens=2)) == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("offline", [False, True])
def test_unreachable_hub_gives_a_clear_message(tmp_path: Path, offline: bool) -> None:
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}", "HF_TOKEN": "hf_secret_value_123"}
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        env.pop(var, None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    res = subprocess.run([sys.executable, "-m", "cruijff_kit", "models", "download", "acme/tiny-llama",
                          "--cache-dir", str(tmp_path / "c")], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "hf_secret_value_123" not in res.stderr
    assert "Cannot download acme/tiny-llama" in res.stderr
    if offline:
        assert "offline mode is on" in res.stderr
    else:
        assert "cannot be reached" in res.stderr and "login node" in res.stderr
    bad = subprocess.run([sys.executable, "-m", "cruijff_kit", "models", "download", "not-a-hub-id"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "not a hub id" in bad.stderr


def _download(url: str, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1"}
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        env.pop(var, None)
    return subprocess.run([sys.executable, "-m", "cruijff_kit", "models", "download", "acme/tiny-llama",
                           "--cache-dir", str(cache), *args], capture_output=True, text=True, env=env, timeout=300)


def test_download_from_a_local_hub_is_verified_and_recorded(tmp_path: Path, tiny_llama: Path) -> None:
    from hub_fixtures import fake_hub, model_files

    files = model_files(tiny_llama)
    cache = tmp_path / "cache"
    with fake_hub("acme/tiny-llama", files, COMMIT) as srv:
        res = _download(srv["url"], cache)
    assert res.returncode == 0, res.stdout + res.stderr
    snap = hub.find_cached("acme/tiny-llama", cache)
    assert snap is not None and snap.name == COMMIT
    assert {f.name for f in snap.iterdir()} == set(files)
    assert all((snap / n).read_bytes() == d for n, d in files.items())
    record = json.loads((cache / hub.RECORD).read_text())
    assert record["acme/tiny-llama"]["main"]["commit"] == COMMIT
    (row,) = hub.list_cached(cache)
    assert row.refs == ["main"] and row.size_bytes == sum(len(d) for d in files.values())


def test_download_refuses_a_file_that_fails_its_hash(tmp_path: Path, tiny_llama: Path) -> None:
    from hub_fixtures import fake_hub, model_files

    files = model_files(tiny_llama)
    weights = next(n for n in files if n.endswith(".safetensors"))
    tampered = bytearray(files[weights])
    tampered[-1] ^= 0xFF
    with fake_hub("acme/tiny-llama", files, COMMIT, served={weights: bytes(tampered)}) as srv:
        res = _download(srv["url"], tmp_path / "cache")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "fail verification" in res.stderr and weights in res.stderr and "Traceback" not in res.stderr
