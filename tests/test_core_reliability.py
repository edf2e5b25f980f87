"""Faults and secrets: nothing secret is written, and a bad output folder fails clearly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

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


#: as root, the `ck` of the read-only-folder test runs as `nobody`, keeping only the right to read and
#: search any folder (CAP_DAC_READ_SEARCH: the interpreter and the toy plugin may live in root's folders);
#: writing still needs the folder's permission, as for any user
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]


@pytest.fixture
def user_folder(tmp_path):
    """A folder of the user that runs `ck`, and the command prefix that runs it as that user.

    As root (which ignores permissions) the user is `nobody`, its folder a fresh one under the system's
    temp folder (pytest's own is root's, 0700), so every check `ck` makes sees an unprivileged user."""
    if os.geteuid() != 0:
        yield tmp_path, []
        return
    assert shutil.which("setpriv"), "running the tests as root needs setpriv (util-linux) to drop to `nobody`"
    folder = Path(tempfile.mkdtemp(prefix="ck-nobody-"))
    try:
        (folder / "home").mkdir()
        for path in (folder, folder / "home"):
            os.chown(path, 65534, 65534)
        yield folder, AS_NOBODY
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_read_only_output_folder(user_folder, with_toy):
    folder, as_user = user_folder
    out = folder / "ro"
    out.mkdir()
    os.chown(out, os.stat(folder).st_uid, os.stat(folder).st_gid)
    out.chmod(0o555)
    spec = write_spec(folder, SPEC.format(key="x").replace("experiment: secrets", "experiment: s\noutput_dir: ro"))
    env = {**os.environ, "HOME": str(folder / "home")} if as_user else None
    res = subprocess.run([*as_user, sys.executable, "-m", "cruijff_kit", "run", str(spec)], cwd=folder,
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert str(out) in res.stderr and "output_dir" in res.stderr, res.stderr
    assert list(out.iterdir()) == []


def test_unwritable_output_path_fails_clearly(tmp_path, with_toy, ck):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    spec = write_spec(tmp_path, SPEC.format(key="x").replace("experiment: secrets",
                                                             "experiment: s\noutput_dir: blocker/out"))
    res = ck("run", str(spec))
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert "blocker" in res.stderr and "output_dir" in res.stderr
