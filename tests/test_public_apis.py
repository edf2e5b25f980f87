"""Third-party libraries are used through their public API; every private import is listed with its reason.

Also checks the hub-file hashes now computed by huggingface_hub's own helpers against hashlib and git.
"""

from __future__ import annotations

import ast
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "core" / "src", *sorted((ROOT / "plugins").glob("*/*/src"))]
THIRD_PARTY = ("inspect_ai", "submitit", "runpod", "huggingface_hub", "transformers", "torch", "torchtune",
               "trl", "peft", "datasets", "vllm", "openai")

#: (file relative to the repo, private module) -> why no public API serves. Entries here need the library
#: pinned tightly, since private modules change without notice.
ALLOWED: dict[tuple[str, str], str] = {
    ("plugins/evaluators/inspect/src/cruijff_kit_inspect/provider.py", "inspect_ai.model._providers.hf"):
        "the ck provider extends inspect's hf provider (HuggingFaceAPI and its helpers); inspect-ai exports no "
        "public base class for it",
    ("plugins/evaluators/inspect/src/cruijff_kit_inspect/provider.py", "inspect_ai.model._model"):
        "ModelAPI's __init__ is called past HuggingFaceAPI's; imported from its defining module",
    ("plugins/evaluators/inspect/src/cruijff_kit_inspect/provider.py", "inspect_ai.model._providers.util"):
        "HFHandler (tool-call parsing of the hf provider) has no public export",
    ("plugins/evaluators/inspect/src/cruijff_kit_inspect/provider.py",
     "inspect_ai.model._providers.util.hidden_states"):
        "hidden-state serialisation of the hf provider has no public export",
    ("plugins/evaluators/inspect/src/cruijff_kit_inspect/cli.py", "inspect_ai._util.registry"):
        "`ck eval` reads inspect's model registry to tell a provider/model string from a hub id; inspect-ai "
        "exports no public way to list model providers",
    ("plugins/evaluators/inspect/src/cruijff_kit_inspect/tasks.py", "inspect_ai._eval.task.constants"):
        "no public API rewrites a task's logged args (the injected dataset is logged as a note)",
    ("plugins/evaluators/inspect/src/cruijff_kit_inspect/tasks.py", "inspect_ai._util.registry"):
        "registry_params / set_registry_params have no public export",
}


def _is_private(module: str) -> bool:
    parts = module.split(".")
    return parts[0] in THIRD_PARTY and any(p.startswith("_") for p in parts[1:])


def private_imports(sources: list[Path], root: Path = ROOT) -> set[tuple[str, str]]:
    """Every (file, module) where a source file imports a private module of a third-party library,
    at module level or inside a function."""
    found = set()
    for src in sources:
        for path in sorted(src.rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                modules: list[str] = []
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    modules = [node.module]
                elif isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                for module in modules:
                    if _is_private(module):
                        found.add((path.relative_to(root).as_posix(), module))
    return found


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


def test_allow_listed_imports_carry_a_comment_saying_why() -> None:
    for file in sorted({f for f, _ in ALLOWED}):
        assert "# Private:" in (ROOT / file).read_text(), f"{file}: add a '# Private: ...' comment at the import"


def test_scanner_finds_a_planted_private_import(tmp_path: Path) -> None:
    pkg = tmp_path / "src" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text("import os\nfrom submitit.core import core\n"
                              "def f():\n    from runpod._internal import x\n    import huggingface_hub._snapshot\n")
    assert private_imports([tmp_path / "src"], tmp_path) == {
        ("src/pkg/a.py", "runpod._internal"), ("src/pkg/a.py", "huggingface_hub._snapshot")}


# --------------------------------------------------------------------------- hub hashes
def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    from cruijff_kit._models.hub import sha256_file

    data = bytes(range(256)) * 9000  # > 1 MiB: more than one chunk
    (tmp_path / "w.bin").write_bytes(data)
    assert sha256_file(tmp_path / "w.bin") == hashlib.sha256(data).hexdigest()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_blob_sha1_matches_git_hash_object(tmp_path: Path) -> None:
    from cruijff_kit._models.hub import git_blob_sha1

    f = tmp_path / "config.json"
    f.write_text('{"model_type": "llama"}\n')
    expected = subprocess.run(["git", "hash-object", str(f)], capture_output=True, text=True, check=True).stdout
    assert git_blob_sha1(f) == expected.strip()


def test_verify_snapshot_refuses_a_corrupted_file(tmp_path: Path) -> None:
    from cruijff_kit._models.hub import verify_snapshot

    big, small = b"weights" * 1000, b'{"a": 1}'
    (tmp_path / "model.safetensors").write_bytes(big)
    (tmp_path / "config.json").write_bytes(small)
    blob = hashlib.sha1(b"blob %d\0" % len(small) + small).hexdigest()
    files = [{"path": "model.safetensors", "sha256": hashlib.sha256(big).hexdigest()},
             {"path": "config.json", "sha256": None, "blob_id": blob}]
    assert verify_snapshot(tmp_path, files) == []
    (tmp_path / "model.safetensors").write_bytes(b"X" + big[1:])
    (tmp_path / "config.json").write_bytes(b'{"a": 2}')
    assert verify_snapshot(tmp_path, files) == [
        "model.safetensors: sha256 differs from the hub's",
        "config.json: content differs from the hub's (git blob id)"]


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
