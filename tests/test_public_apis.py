"""Third-party libraries are used through their public API; every private import is listed with its reason.

Also: ``ck models download`` verifies with huggingface_hub's ``verify_repo_checksums`` (a corrupted file in
the cache is refused by name, expected and found hash computed here with hashlib), the hub cache folder
is the one ``huggingface_hub.constants`` derives, and a hub id's ``config.json`` is the one its
``refs/main`` names.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "core" / "src", *sorted((ROOT / "plugins").glob("*/*/src"))]
THIRD_PARTY = ("accelerate", "bitsandbytes", "datasets", "huggingface_hub", "inspect_ai", "litellm", "openai",
               "peft", "runpod", "submitit", "tiktoken", "torch", "torchao", "torchtune", "transformers", "trl",
               "vllm")
#: Libraries whose documented API is the top-level package (plus these public submodules): any other
#: submodule is internal even without a leading underscore.
TOP_LEVEL_ONLY: dict[str, tuple[str, ...]] = {"submitit": ("submitit.helpers",), "runpod": ("runpod.serverless",)}

_INSPECT_PIN = "inspect-ai is pinned to 0.3.285 (plugin pyproject, constraints.txt)"
_RUNPOD_SDK = ("the SDK's own GraphQL document, so requests match the SDK's; runpod's top-level calls lose the "
               "HTTP status and never retry. runpod is pinned to 1.12.x")

#: (file relative to the repo, private module or module.name) -> why no public API serves. Entries here need
#: the library pinned tightly, since private modules change without notice.
ALLOWED: dict[tuple[str, str], str] = {
    ("plugins/evaluators/inspect/src/cruijff_kit_inspect/provider.py", "inspect_ai.model._providers.hf"):
        "the ck provider extends inspect's hf provider (HuggingFaceAPI and its helpers); inspect-ai exports no "
        "public base class for it. " + _INSPECT_PIN,
    ("plugins/evaluators/inspect/src/cruijff_kit_inspect/provider.py", "inspect_ai.model._providers.util"):
        "HFHandler (tool-call parsing of the hf provider) has no public export. " + _INSPECT_PIN,
    ("plugins/evaluators/inspect/src/cruijff_kit_inspect/provider.py",
     "inspect_ai.model._providers.util.hidden_states"):
        "hidden-state serialisation of the hf provider has no public export. " + _INSPECT_PIN,
    ("plugins/evaluators/inspect/src/cruijff_kit_inspect/cli.py", "inspect_ai._util.registry"):
        "`ck eval` lists inspect's model providers to tell a provider/model string from a hub id: registry_find "
        "has no public export (registry_info comes from inspect_ai.util). " + _INSPECT_PIN,
    ("plugins/evaluators/inspect/src/cruijff_kit_inspect/tasks.py", "inspect_ai._eval.task.constants"):
        "no public API rewrites a task's logged args (the injected dataset is logged as a note). " + _INSPECT_PIN,
    ("plugins/evaluators/inspect/src/cruijff_kit_inspect/tasks.py", "inspect_ai._util.registry"):
        "registry_params / set_registry_params have no public export. " + _INSPECT_PIN,
    ("plugins/schedulers/slurm/src/cruijff_kit_slurm/slurmcli.py", "submitit.slurm.slurm"):
        "read_job_id (sacct job ids with pending array ranges) is not in submitit's top-level API; submitit is "
        "pinned to 1.5.x",
    ("plugins/schedulers/runpod/src/cruijff_kit_runpod/api.py", "runpod.user_agent"):
        "the SDK's User-Agent string, sent so requests match the SDK's; runpod is pinned to 1.12.x",
    ("plugins/schedulers/runpod/src/cruijff_kit_runpod/api.py", "runpod.api.queries.gpus"): _RUNPOD_SDK,
    ("plugins/schedulers/runpod/src/cruijff_kit_runpod/api.py", "runpod.api.queries.pods"): _RUNPOD_SDK,
    ("plugins/schedulers/runpod/src/cruijff_kit_runpod/api.py", "runpod.api.mutations.pods"): _RUNPOD_SDK,
}


def _private_module(module: str) -> bool:
    parts = module.split(".")
    if parts[0] not in THIRD_PARTY:
        return False
    if any(p.startswith("_") for p in parts[1:]):
        return True
    public = TOP_LEVEL_ONLY.get(parts[0])
    return public is not None and len(parts) > 1 and not any(
        module == m or module.startswith(m + ".") for m in public)


def private_import_sites(sources: list[Path], root: Path = ROOT) -> dict[tuple[str, str], list[int]]:
    """Every (file, module) where a source file imports a private module of a third-party library, or
    (file, ``module.name``) where it imports a private name (``_name``) from a public one, at module level
    or inside a function; with the line numbers of the imports."""
    found: dict[tuple[str, str], list[int]] = {}
    for src in sources:
        for path in sorted(src.rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            file = path.relative_to(root).as_posix()
            for node in ast.walk(tree):
                names: list[str] = []
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    module = node.module
                    if _private_module(module):
                        names = [module]
                    elif module.split(".")[0] in THIRD_PARTY:
                        names = [f"{module}.{a.name}" for a in node.names
                                 if a.name.startswith("_") and not a.name.startswith("__")]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names if _private_module(a.name)]
                for name in names:
                    found.setdefault((file, name), []).append(node.lineno)
    return found


def private_imports(sources: list[Path], root: Path = ROOT) -> set[tuple[str, str]]:
    """The (file, module) pairs of :func:`private_import_sites`."""
    return set(private_import_sites(sources, root))


def test_no_private_third_party_import_outside_the_allow_list() -> None:
    found = private_imports(SOURCES)
    unexplained = sorted(found - set(ALLOWED))
    assert not unexplained, (
        "Private third-party imports without a reason: " + ", ".join(f"{f}: {m}" for f, m in unexplained)
        + ". Use the library's public API, or add the import to ALLOWED in tests/test_public_apis.py with the"
        " reason, pin the library tightly and comment the import.")


def test_allow_list_has_no_stale_entries() -> None:
    stale = sorted(set(ALLOWED) - private_imports(SOURCES))
    assert not stale, f"ALLOWED names imports the code no longer makes: {stale}; remove them."


def _commented(lines: list[str], lineno: int) -> bool:
    """A ``# Private:`` comment on the import's line or in the block of imports and comments just above it."""
    i = lineno - 1
    if "# Private:" in lines[i]:
        return True
    while i > 0:
        i -= 1
        text = lines[i].strip()
        if "# Private:" in text:
            return True
        if not (text.startswith(("#", "from ", "import ")) or text.endswith(("(", ",", ")"))):
            return False
    return False


def test_each_allow_listed_import_carries_a_comment_saying_why_and_the_pin() -> None:
    sites = private_import_sites(SOURCES)
    missing = []
    for (file, module), linenos in sorted(sites.items()):
        if (file, module) not in ALLOWED:
            continue
        lines = (ROOT / file).read_text().splitlines()
        missing += [f"{file}:{n} ({module})" for n in linenos if not _commented(lines, n)]
    assert not missing, "add a '# Private: why; the pin' comment just above: " + ", ".join(missing)
    assert all("pinned" in why for why in ALLOWED.values())


def test_scanner_finds_planted_private_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "src" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text(
        "import os\nimport submitit\nfrom submitit.helpers import Checkpointable\nfrom transformers import AutoModel\n"
        "from submitit.slurm.slurm import read_job_id\nimport runpod.api.queries.pods\n"
        "from huggingface_hub import _CACHED_NO_EXIST, __version__\nfrom os import _exit\n"
        "def f():\n    from runpod._internal import x\n    import huggingface_hub._snapshot\n"
        "    from litellm._logging import verbose_logger\n    from torchao.quantization import _x as y\n")
    a = "src/pkg/a.py"
    assert private_import_sites([tmp_path / "src"], tmp_path) == {
        (a, "submitit.slurm.slurm"): [5], (a, "runpod.api.queries.pods"): [6],
        (a, "huggingface_hub._CACHED_NO_EXIST"): [7], (a, "runpod._internal"): [10],
        (a, "huggingface_hub._snapshot"): [11], (a, "litellm._logging"): [12], (a, "torchao.quantization._x"): [13]}


def test_comment_check_sees_a_missing_comment() -> None:
    lines = ["x = 1", "# Private: why; pinned", "from a._b import c", "from a._d import e", "y = 2",
             "from a._f import g"]
    assert _commented(lines, 3) and _commented(lines, 4) and not _commented(lines, 6)


# --------------------------------------------------------------------------- hub verification
TINY = {"config.json": b'{"model_type": "llama"}\n', "model.safetensors": bytes(range(256)) * 40}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _download(url: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1"}
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        env.pop(var, None)
    return subprocess.run([sys.executable, "-m", "cruijff_kit", "models", "download", "acme/tiny",
                           "--cache-dir", str(cache)], capture_output=True, text=True, env=env, timeout=300)


def test_download_refuses_a_corrupted_file_already_in_the_cache(tmp_path: Path) -> None:
    from hub_fixtures import fake_hub

    cache = tmp_path / "cache"
    with fake_hub("acme/tiny", TINY, COMMIT) as srv:
        first = _download(srv["url"], cache)
        assert first.returncode == 0, first.stdout + first.stderr
        record = (cache / "cruijff_kit_models.json").read_text()
        weights = cache / "models--acme--tiny" / "blobs" / hashlib.sha256(TINY["model.safetensors"]).hexdigest()
        bad = b"X" + TINY["model.safetensors"][1:]  # same size: only the hash tells
        weights.write_bytes(bad)
        second = _download(srv["url"], cache)
    assert second.returncode == 2, second.stdout + second.stderr
    err = " ".join(second.stderr.split())
    assert "Traceback" not in second.stderr
    assert (f"model.safetensors: sha256 expected {hashlib.sha256(TINY['model.safetensors']).hexdigest()}, "
            f"found {hashlib.sha256(bad).hexdigest()}") in err
    assert "config.json" not in err  # the intact file is not blamed
    assert "Delete" in err and "models--acme--tiny" in err and "ck models download" in err
    assert (cache / "cruijff_kit_models.json").read_text() == record  # not recorded again


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git (the expected blob id)")
def test_download_refuses_a_served_small_file_that_fails_its_git_blob_id(tmp_path: Path) -> None:
    from hub_fixtures import fake_hub

    bad = b'{"model_type": "llamb"}\n'
    with fake_hub("acme/tiny", TINY, COMMIT, served={"config.json": bad}) as srv:
        res = _download(srv["url"], tmp_path / "cache")
    assert res.returncode == 2, res.stdout + res.stderr
    blob = subprocess.run(["git", "hash-object", "--stdin"], input=TINY["config.json"], capture_output=True,
                          check=True).stdout.decode().strip()
    found = hashlib.sha1(b"blob %d\0" % len(bad) + bad).hexdigest()
    assert f"config.json: git-sha1 expected {blob}, found {found}" in " ".join(res.stderr.split())
    assert not (tmp_path / "cache" / "cruijff_kit_models.json").exists()


def test_verification_listing_has_the_metadata_deadline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from huggingface_hub import HfApi

    from cruijff_kit._api.retry import DeadlineExceeded
    from cruijff_kit._models import hubnet

    calls = []

    def hangs(self: HfApi, *args: object, **kwargs: object) -> object:
        calls.append(args)
        time.sleep(5)
        return iter(())

    monkeypatch.setattr(HfApi, "list_repo_tree", hangs)
    monkeypatch.setattr(hubnet, "BACKOFF", 0.01)
    snap = tmp_path / "models--acme--tiny" / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (snap / "config.json").write_bytes(TINY["config.json"])
    api = hubnet.deadlined_api(0.2, "the hub's file hashes of acme/tiny")
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="file hashes of acme/tiny"):
        api.verify_repo_checksums("acme/tiny", revision=COMMIT, cache_dir=tmp_path)
    assert time.monotonic() - t0 < 3 and len(calls) == hubnet.ATTEMPTS


# --------------------------------------------------------------------------- hub cache folder
CACHE_VARS = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "HUGGINGFACE_CO_STAGING")


def _cases(tmp: Path) -> dict[str, dict[str, str]]:
    return {
        "none": {},
        "XDG_CACHE_HOME": {"XDG_CACHE_HOME": str(tmp / "xdg")},
        "HF_HOME": {"HF_HOME": str(tmp / "hfhome"), "XDG_CACHE_HOME": str(tmp / "xdg")},
        "HUGGINGFACE_HUB_CACHE": {"HUGGINGFACE_HUB_CACHE": str(tmp / "legacy"), "HF_HOME": str(tmp / "hfhome")},
        "HF_HUB_CACHE": {"HF_HUB_CACHE": str(tmp / "new"), "HUGGINGFACE_HUB_CACHE": str(tmp / "legacy")},
        "$VAR in HF_HOME": {"HF_HOME": "$CK_TEST_ROOT/hfhome", "CK_TEST_ROOT": str(tmp / "root")},
        "$VAR in HF_HUB_CACHE": {"HF_HUB_CACHE": "${CK_TEST_ROOT}/c", "CK_TEST_ROOT": str(tmp / "root")},
        "~ in HUGGINGFACE_HUB_CACHE": {"HUGGINGFACE_HUB_CACHE": "~/legacy-hub"},
    }


def test_hub_cache_folder_is_the_one_huggingface_hub_derives(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """For each variable, huggingface_hub's constant in a fresh process (an independent value) equals the
    folder both users of the cache derive in this process, after the environment changed at runtime."""
    from cruijff_kit._engine.hubcache import default_hub_cache
    from cruijff_kit.training import find_config

    base = {k: v for k, v in os.environ.items() if k not in CACHE_VARS}
    base["HOME"] = str(tmp_path / "home")
    answers = {}
    for name, extra in _cases(tmp_path).items():
        env = {**base, **extra}
        out = subprocess.run([sys.executable, "-c", "from huggingface_hub import constants; "
                              "print(constants.HF_HUB_CACHE)"], capture_output=True, text=True, env=env, check=True)
        expected = Path(out.stdout.strip())
        for var in (*CACHE_VARS, "CK_TEST_ROOT"):
            monkeypatch.delenv(var, raising=False)
        for k, v in {"HOME": base["HOME"], **extra}.items():
            monkeypatch.setenv(k, v)
        assert default_hub_cache() == expected, name
        repo = expected / "models--acme--where" / "snapshots" / COMMIT
        repo.mkdir(parents=True, exist_ok=True)
        (repo / "config.json").write_text(json.dumps({"case": name}))
        (repo.parent.parent / "refs").mkdir(exist_ok=True)
        (repo.parent.parent / "refs" / "main").write_text(COMMIT)
        assert find_config("acme/where") == repo / "config.json", name
        answers[name] = expected
    assert len(set(answers.values())) == len(answers)  # every variable changed the folder


def test_hub_id_config_is_the_snapshot_refs_main_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cruijff_kit.training import find_config

    cache = tmp_path / "hub"
    repo = cache / "models--acme--two"
    old, new = repo / "snapshots" / ("1" * 40), repo / "snapshots" / ("2" * 40)
    for snap, layers in ((old, 2), (new, 4)):
        snap.mkdir(parents=True)
        (snap / "config.json").write_text(json.dumps({"num_hidden_layers": layers}))
    os.utime(old / "config.json", (1_000_000, 1_000_000))  # the newer snapshot is newer on disk too
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("1" * 40)
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert find_config("acme/two") == old / "config.json"
    assert find_config("acme/two").read_text() == json.dumps({"num_hidden_layers": 2})
    assert find_config("acme/absent") is None
    (repo / "refs" / "main").unlink()  # no ref: two snapshots are ambiguous, one is the one
    assert find_config("acme/two") is None
    (new / "config.json").unlink()
    assert find_config("acme/two") == old / "config.json"


# --------------------------------------------------------------------------- hub cache listing
C1, C2 = "a" * 40, "b" * 40


def _snapshot(repo: Path, commit: str, files: dict[str, bytes]) -> None:
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "snapshots" / commit).mkdir(parents=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (repo / "snapshots" / commit / name).symlink_to(blob)


def test_list_cached_reports_each_snapshot_like_the_hub_cache_scan(tmp_path: Path) -> None:
    from huggingface_hub import scan_cache_dir

    from cruijff_kit._models.hub import list_cached

    repo = tmp_path / "models--acme--tiny"
    _snapshot(repo, C1, {"config.json": b"{}", "model.safetensors": b"w" * 300})
    _snapshot(repo, C2, {"config.json": b'{"v": 2}'})
    (repo / "refs" / "refs" / "pr").mkdir(parents=True)
    (repo / "refs" / "main").write_text(C2)
    (repo / "refs" / "refs" / "pr" / "1").write_text(C1)
    _snapshot(tmp_path / "datasets--acme--data", C1, {"d.json": b"[]"})  # not a model: not listed

    rows = [(r.hub_id, r.commit, r.refs, r.size_bytes, r.path) for r in list_cached(tmp_path)]
    assert rows == [("acme/tiny", C1, ["refs/pr/1"], 2 + 300, str(repo / "snapshots" / C1)),
                    ("acme/tiny", C2, ["main"], 8, str(repo / "snapshots" / C2))]
    (scanned,) = [r for r in scan_cache_dir(tmp_path).repos if r.repo_type == "model"]
    assert {(r.commit_hash, r.size_on_disk) for r in scanned.revisions} == {(c, s) for _, c, _, s, _ in rows}


def test_list_cached_still_lists_a_corrupted_download_and_an_absent_cache_is_empty(tmp_path: Path) -> None:
    from cruijff_kit._models.hub import list_cached

    repo = tmp_path / "models--acme--broken"
    _snapshot(repo, C1, {"config.json": b"{}", "model.safetensors": b"w" * 50})
    next((repo / "blobs").glob("*")).unlink()  # one blob gone: the hub's scan calls the repo corrupted
    (row,) = list_cached(tmp_path)
    assert (row.hub_id, row.commit, row.refs) == ("acme/broken", C1, [])
    assert row.size_bytes in (2, 50)  # the file whose blob is left
    assert list_cached(tmp_path / "absent") == []


# --------------------------------------------------------------------------- inspect providers
def test_ck_eval_knows_the_providers_of_inspects_model_registry() -> None:
    import importlib.util

    from inspect_ai.model import get_model

    path = ROOT / "plugins/evaluators/inspect/src/cruijff_kit_inspect/cli.py"
    spec = importlib.util.spec_from_file_location("ck_inspect_cli_source", path)
    assert spec is not None and spec.loader is not None
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    known = cli.known_providers()
    assert {"openai", "anthropic", "hf", "vllm", "mockllm", "ck"} <= known
    assert get_model("mockllm/model") is not None  # a listed provider inspect resolves
    with pytest.raises(Exception, match="litellm"):  # inspect 0.3.285 has no plain `litellm` provider
        get_model("litellm/some-model")
    assert "litellm" not in known
    assert cli._is_model_string("openai/gpt-4o-mini") and not cli._is_model_string("meta-llama/Llama-3.2-1B")
