"""Faults and secrets: nothing secret is written, and a bad output folder fails clearly."""

from __future__ import annotations

import os

import pytest
from conftest import write_spec

SECRETS = {"HF_TOKEN": "hf_fake_token_123456", "WANDB_API_KEY": "wandb-fake-key-abcdef",
           "OPENAI_API_KEY": "sk-fake-openai-987654", "RUNPOD_API_KEY": "rp-fake-runpod-555555"}

SPEC = """
experiment: secrets
description: "uses {key}"
model: {{path: org/model}}
dataset: {{plugin: toy-data}}
train: {{plugin: toy, epochs: 1}}
eval: [{{plugin: toy-eval, task: t}}]
"""


def scan(folder) -> list[str]:
    hits = []
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path}: {name}" for name, value in SECRETS.items() if value.encode() in data]
    return hits


def test_no_secret_lands_in_any_written_file(tmp_path, with_toy, ck):
    # the user pasted a key into the spec's description: refused (spec.yaml is read back, never rewritten)
    spec = write_spec(tmp_path, SPEC.format(key=SECRETS["OPENAI_API_KEY"]))
    res = ck("run", str(spec), env=SECRETS)
    exp = tmp_path / "runs" / "secrets"
    assert res.returncode == 2 and "at `description`" in res.stderr and "$OPENAI_API_KEY" in res.stderr
    assert not (exp / "spec.yaml").exists() and not (exp / "runs").exists()
    spec = write_spec(tmp_path, SPEC.format(key="$OPENAI_API_KEY"))
    res = ck("run", str(spec), env=SECRETS, check=True)
    assert (exp / "spec.yaml").exists() and list((exp / "runs").iterdir())
    assert scan(exp) == []
    for value in SECRETS.values():
        assert value not in res.stdout + res.stderr


@pytest.mark.skipif(os.geteuid() == 0 and not os.environ.get("CK_TEST_READONLY"),
                    reason="runs as root: root ignores directory permissions; covered by the unwritable-path test")
def test_read_only_output_folder(tmp_path, with_toy, ck):  # pragma: no cover - non-root only
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    spec = write_spec(tmp_path, SPEC.format(key="x").replace("experiment: secrets", "experiment: s\noutput_dir: ro"))
    res = ck("run", str(spec))
    assert res.returncode == 2 and "Traceback" not in res.stderr and "ro" in res.stderr


def test_unwritable_output_path_fails_clearly(tmp_path, with_toy, ck):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    spec = write_spec(tmp_path, SPEC.format(key="x").replace("experiment: secrets",
                                                             "experiment: s\noutput_dir: blocker/out"))
    res = ck("run", str(spec))
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert "blocker" in res.stderr and "output_dir" in res.stderr
