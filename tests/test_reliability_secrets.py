"""A real experiment (trl training and inspect evaluation of a tiny model) with fake secrets in the
environment: no file it writes holds any of them, including the members of inspect's .eval zips."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest
from conftest import write_spec
from trl_fixtures import write_capitalize_data

SECRETS = {"HF_TOKEN": "hf_fakeTokenQ8f3k2LmN0pZ", "WANDB_API_KEY": "wandbfake0123456789abcdef0123456789abcd",
           "OPENAI_API_KEY": "sk-fake-Zx9Yw8Vu7Ts6Rq5Po4", "RUNPOD_API_KEY": "rpa_FAKE7H6G5F4E3D2C1B0A"}


def blobs(path: Path) -> list[tuple[str, bytes]]:
    """The file's bytes, and for a zip (inspect .eval logs) every member's decompressed bytes too."""
    if sys.version_info < (3, 14):
        import zipfile_zstd  # noqa: F401  (inspect writes zstd members; this teaches zipfile to read them)

    data = path.read_bytes()
    out = [(str(path), data)]
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            out += [(f"{path}!{name}", zf.read(name)) for name in zf.namelist()]
    return out


def scan(folder: Path) -> tuple[list[str], int, int]:
    """(hits, files scanned, zip members scanned) for every secret value, raw and in JSON-escaped form."""
    hits, files, members = [], 0, 0
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        files += 1
        for where, data in blobs(path):
            members += "!" in where
            hits += [f"{where}: {name}" for name, value in SECRETS.items() if value.encode() in data]
    return hits, files, members


@pytest.mark.integration
def test_trl_and_inspect_experiment_writes_no_secret(tmp_path, tiny_llama, ck):
    from cruijff_kit._api.registry import registry

    if not {"trl"} <= set(registry().names("trainer")) or "inspect" not in registry().names("evaluator"):
        pytest.skip("the trl trainer or the inspect evaluator is not installed")
    data = write_capitalize_data(tmp_path, n_train=8, n_val=4, n_test=4, n_words=8)
    spec = write_spec(tmp_path, f"""
        experiment: secrets
        model: {{path: {tiny_llama}}}
        prompt: {{template: "Capitalize: {{input}}"}}
        dataset: {{plugin: json-instruct, path: {data.name}}}
        train: {{plugin: trl, epochs: 1, batch_size: 4, max_steps: 2, learning_rate: 0.01}}
        eval:
          - {{plugin: inspect, task: exact-match, checkpoints: all, limit: 2, generation: {{max_tokens: 4}}}}
    """)
    res = ck("run", str(spec), env=SECRETS, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    exp = tmp_path / "runs" / "secrets"
    (run_dir,) = (exp / "runs").iterdir()
    evals = list(run_dir.rglob("*.eval"))
    assert len(evals) == 2 and (run_dir / "train" / "epoch_0" / "adapter").is_dir()
    assert (run_dir / "env.json").exists() and list((run_dir / "logs").iterdir())
    hits, files, members = scan(tmp_path)
    assert hits == []
    assert files > 20 and members > 4  # the scan really saw the run's files and the logs' members
    for value in SECRETS.values():
        assert value not in res.stdout + res.stderr
    # `ck status` and `ck summarize` output carry none either
    for args in (("status", str(spec)), ("summarize", str(spec))):
        out = ck(*args, env=SECRETS)
        assert not any(v in out.stdout + out.stderr for v in SECRETS.values())
    hits, _, _ = scan(tmp_path)  # summarize writes report files
    assert hits == []


def test_scan_sees_a_secret_inside_a_zstd_zip_member(tmp_path):
    """The scanner itself: a secret only inside a compressed .eval-style member is found."""
    import zipfile_zstd  # noqa: F401

    with zipfile.ZipFile(tmp_path / "log.eval", "w", compression=zipfile.ZIP_ZSTANDARD) as zf:  # type: ignore[attr-defined]
        zf.writestr("samples/1.json", '{"env": "' + SECRETS["WANDB_API_KEY"] + '"}' + " pad" * 1000)
    assert SECRETS["WANDB_API_KEY"].encode() not in (tmp_path / "log.eval").read_bytes()
    hits, files, members = scan(tmp_path)
    assert hits == [f"{tmp_path / 'log.eval'}!samples/1.json: WANDB_API_KEY"] and files == 1 and members == 1
