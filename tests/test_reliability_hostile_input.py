"""Hostile YAML and JSON: a key written twice, an alias bomb, data nested thousands of levels deep or
one huge line give one short error naming the file (and the lines), never a traceback, a
RecursionError, a crash or the whole input echoed back.

Line numbers expected here are those of the files as written in each test (counted by hand).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from cruijff_kit._base import parsing
from cruijff_kit._base.errors import DataError, SpecError, clip, short_repr
from cruijff_kit._base.fileio import read_json, read_jsonl
from cruijff_kit._base.yamlfile import read_yaml

#: A valid spec of the toy plugins, 4 lines; tests append to it from line 5 on.
HEAD = (
    "experiment: toy\n"                      # line 1
    "model: {path: some-org/some-model}\n"   # line 2
    "dataset: {plugin: toy-data}\n"          # line 3
    "train: {plugin: toy, epochs: 1}\n"      # line 4
)

#: A billion laughs: line 5 anchors 9 strings, each next line 9 aliases of the one before (9^9 in all).
BOMB = HEAD + 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9))


def failed(res) -> str:
    """The error output of a `ck` command that must have failed with one `Error:` paragraph."""
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr and "RecursionError" not in res.stderr, res.stderr
    assert res.stderr.startswith("Error: "), res.stderr
    return res.stderr


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- YAML through `ck`
def test_a_key_twice_in_the_spec_names_both_lines(tmp_path, ck, with_toy):
    write(tmp_path / "spec.yaml", HEAD.replace("train: {plugin: toy, epochs: 1}\n", "")
          + "train:\n"          # line 4
          + "  plugin: toy\n"   # line 5
          + "  epochs: 2\n"     # line 6
          + "  seed: 1\n"       # line 7
          + "  epochs: 3\n")    # line 8
    err = failed(ck("validate", "spec.yaml"))
    assert "spec.yaml" in err and "`epochs` appears twice" in err
    assert "line 6" in err and "line 8" in err and "`train`" in err


def test_a_key_twice_in_the_profile_names_the_profile_and_both_lines(tmp_path, ck, with_toy):
    write(tmp_path / "spec.yaml", HEAD)
    assert ck("validate", "spec.yaml").returncode == 0
    write(tmp_path / "ck.profile.yaml",
          "models_cache: cache-a\n"   # line 1
          "slurm:\n"                  # line 2
          "  account: lab\n"          # line 3
          "models_cache: cache-b\n")  # line 4
    err = failed(ck("validate", "spec.yaml"))
    assert "ck.profile.yaml" in err and "`models_cache` appears twice" in err
    assert "line 1" in err and "line 4" in err


def test_an_alias_bomb_in_the_spec_fails_fast_with_a_short_message(tmp_path, ck, with_toy):
    write(tmp_path / "spec.yaml", BOMB)
    start = time.perf_counter()
    res = ck("validate", "spec.yaml", timeout=60)
    took = time.perf_counter() - start
    err = failed(res)
    # l0 holds 10 values, l1 91, l2 820, l3 7,381, l4 66,430: by the end of line 9 the aliases reached
    # 90 + 819 + 7,380 + 66,429 = 74,718 values; the first alias of line 10 passes 100,000.
    assert "alias bomb" in err and "`*l4` at line 10" in err
    assert len(res.stdout) + len(res.stderr) < 2000
    assert took < 30  # the interpreter's start-up, not the bomb (measured in-process below)


def test_the_bomb_fails_in_well_under_a_second():
    for loader in (parsing.CheckedLoader, parsing.PyCheckedLoader):
        start = time.perf_counter()
        with pytest.raises(SpecError, match="alias bomb"):
            parsing.parse_yaml_text(BOMB, file="spec.yaml", loader=loader)
        assert time.perf_counter() - start < 0.5


def test_a_huge_value_in_the_spec_is_quoted_short(tmp_path, ck, with_toy):
    write(tmp_path / "spec.yaml", HEAD.replace("epochs: 1", "epochs: " + "x" * 1_000_000))
    res = ck("validate", "spec.yaml")
    err = failed(res)
    assert "spec.yaml" in err and "train.epochs" in err
    assert len(res.stdout) + len(res.stderr) < 2000


def test_an_alias_to_a_long_list_where_a_number_goes_is_quoted_short(tmp_path, ck, with_toy):
    write(tmp_path / "spec.yaml", HEAD
          + "description: &many [" + ", ".join(["word"] * 5000) + "]\n"
          + "seed: *many\n")
    res = ck("validate", "spec.yaml")
    err = failed(res)
    assert "at `description`" in err and "'word', 'word'" in err
    assert len(res.stdout) + len(res.stderr) < 2000


# --------------------------------------------------------------------------- JSON datasets through `ck`
def data_spec(tmp_path: Path, dataset: str) -> None:
    write(tmp_path / "spec.yaml", HEAD.replace("{plugin: toy-data}", dataset))


def test_deeply_nested_json_instruct_file_names_file_and_line(tmp_path, ck, with_toy):
    data_spec(tmp_path, "{plugin: json-instruct, path: data.json}")
    prefix = '  {"input": "b", "output": "B", "extra": '
    write(tmp_path / "data.json",
          '{"train": [\n'                               # line 1: depth 2
          '  {"input": "a", "output": "A"},\n'          # line 2
          + prefix + "[" * 5000 + "]" * 5000 + "}\n"    # line 3: the row is depth 3, its 98th `[` depth 101
          "]}\n")
    err = failed(ck("validate", "spec.yaml"))
    assert "data.json" in err and "nests more than 100 levels" in err
    assert f"line 3, column {len(prefix) + 98}" in err


def test_moderately_deep_row_is_refused_too(tmp_path, ck, with_toy):
    """150 levels parse with json's C decoder; the bound holds all the same."""
    data_spec(tmp_path, "{plugin: json-instruct, path: data.json}")
    write(tmp_path / "data.json",
          '{"train": [\n'                                                 # line 1
          '  {"input": "a", "output": "A", "extra": ' + "[" * 150 + "]" * 150 + "}\n"  # line 2
          "]}\n")
    err = failed(ck("validate", "spec.yaml"))
    assert "data.json" in err and "nests more than 100 levels" in err and "line 2" in err


def test_deeply_nested_jsonl_row_names_file_and_line(tmp_path, ck, with_toy):
    data_spec(tmp_path, "{plugin: json-chat, path: chat}")
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    write(tmp_path / "chat" / "train.jsonl",
          json.dumps(row) + "\n"                                                # line 1
          + "\n"                                                                # line 2 (blank)
          + json.dumps(row) + "\n"                                              # line 3
          + '{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}\n")            # line 4
    err = failed(ck("validate", "spec.yaml"))
    assert "train.jsonl" in err and "nests more than 100 levels" in err and "line 4" in err


def test_a_key_twice_in_a_json_dataset_row_names_the_key(tmp_path, ck, with_toy):
    data_spec(tmp_path, "{plugin: json-instruct, path: data.json}")
    write(tmp_path / "data.json",
          '{"train": [\n'                                        # line 1
          '  {"input": "a", "output": "A"},\n'                   # line 2
          '  {"input": "b", "output": "B", "input": "c"}\n'      # line 3
          "]}\n")
    err = failed(ck("validate", "spec.yaml"))
    assert "data.json" in err and 'key "input" appears twice' in err and "line 3" in err


def test_a_key_twice_in_a_jsonl_row_names_the_line(tmp_path, ck, with_toy):
    data_spec(tmp_path, "{plugin: json-chat, path: chat}")
    write(tmp_path / "chat" / "train.jsonl",
          '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'  # line 1
          '{"messages": [{"role": "user", "content": "a", "role": "system"}]}\n')                     # line 2
    err = failed(ck("validate", "spec.yaml"))
    assert "train.jsonl" in err and 'key "role" appears twice' in err and "line 2" in err


@pytest.mark.parametrize("line", [
    '{"messages": [{"role": "' + "r" * 1_000_000 + '", "content": "x"}]}',  # an unknown role, huge
    '{"' + "k" * 1_000_000 + '": 1}',                                       # no messages; one huge key
    '{"messages": [{"role": "user", "content": "' + "c" * 1_000_000 + '"}] ',  # cut off after 1 MB
], ids=["huge-role", "huge-key", "truncated"])
def test_a_huge_single_line_gives_a_short_message(tmp_path, ck, with_toy, line):
    data_spec(tmp_path, "{plugin: json-chat, path: chat}")
    write(tmp_path / "chat" / "train.jsonl", line + "\n")
    res = ck("validate", "spec.yaml")
    err = failed(res)
    assert "train.jsonl" in err
    assert len(res.stdout) + len(res.stderr) < 2000


# --------------------------------------------------------------------------- the loaders themselves
LOADERS = [pytest.param(parsing.CheckedLoader, id="libyaml"), pytest.param(parsing.PyCheckedLoader, id="python")]


@pytest.mark.parametrize("loader", LOADERS)
def test_anchors_merges_and_repeated_values_still_load(loader):
    text = ("base: &b {lr: 1, rank: 8}\n"
            "runs:\n"
            "  - {<<: *b, lr: 2}\n"
            "  - *b\n"
            "same: [1, 1, 1]\n")
    data = parsing.parse_yaml_text(text, loader=loader)
    assert data == yaml.safe_load(text)
    assert data["runs"][0] == {"lr": 2, "rank": 8}


@pytest.mark.parametrize("loader", LOADERS)
def test_keys_that_read_as_the_same_value_are_duplicates(loader):
    with pytest.raises(SpecError, match=r"appears twice.*line 1 and again at line 2"):
        parsing.parse_yaml_text("1: a\n1.0: b\n", file="x.yaml", loader=loader)
    with pytest.raises(SpecError, match=r"at `a\[1\]`: the key `k` appears twice.*line 3 and again at line 4"):
        parsing.parse_yaml_text("a:\n  - {k: 1}\n  - k: 1\n    k: 2\n", file="x.yaml", loader=loader)


@pytest.mark.parametrize("loader", LOADERS)
def test_deep_and_recursive_yaml_is_refused(loader):
    assert parsing.parse_yaml_text("[" * 100 + "]" * 100, loader=loader) is not None
    with pytest.raises(SpecError, match=r"nests more than 100 levels deep \(at line 2\)"):
        parsing.parse_yaml_text("a:\n  " + "[" * 100_000 + "]" * 100_000 + "\n", file="x.yaml", loader=loader)
    with pytest.raises(SpecError, match=r"the alias `\*a` at line 2 is inside the value it names"):
        parsing.parse_yaml_text("x: 1\na: &a [1, *a]\n", file="x.yaml", loader=loader)
    # aliases that each stay shallow but nest 60 + 60 levels when written out
    deep = "a0: &a0 " + "[" * 60 + "1" + "]" * 60 + "\n" + "a1: " + "[" * 60 + "*a0" + "]" * 60 + "\n"
    with pytest.raises(SpecError, match=r"the alias `\*a0` at line 2 makes the data nest more than 100"):
        parsing.parse_yaml_text(deep, file="x.yaml", loader=loader)


def test_more_aliases_than_the_bound_is_refused():
    many = "x: &x 1\nl: [" + ", ".join(["*x"] * parsing.MAX_ALIASES) + "]\n"
    assert len(parsing.parse_yaml_text(many)["l"]) == parsing.MAX_ALIASES
    with pytest.raises(SpecError, match="alias bomb"):
        parsing.parse_yaml_text(many.replace("[", "[*x, "), file="x.yaml")


def test_values_yaml_cannot_build_name_the_line(tmp_path):
    path = write(tmp_path / "spec.yaml", "experiment: x\nwhen: 2024-02-30\n")
    with pytest.raises(SpecError, match=r"spec.yaml: is not valid YAML near line 2.*2024-02-30"):
        read_yaml(path)
    path = write(tmp_path / "spec.yaml", "experiment: x\n\nseed: " + "9" * 5000 + "\n")
    with pytest.raises(SpecError, match=r"not valid YAML near line 3") as info:
        read_yaml(path)
    assert len(str(info.value)) < 600


def test_set_values_are_checked_like_files():
    from cruijff_kit._engine.spec import parse_overrides

    assert parse_overrides(["train.lora={rank: 4, alpha: 8}"]) == {"train.lora": {"rank": 4, "alpha": 8}}
    with pytest.raises(SpecError, match="`rank` appears twice"):
        parse_overrides(["train.lora={rank: 4, rank: 8}"])


def test_json_files_the_project_reads_back(tmp_path):
    """status.json and friends: hostile content is a DataError naming the file, a torn line is skipped."""
    path = write(tmp_path / "status.json", '{"stages": ' + "[" * 5000 + "]" * 5000 + "}")
    with pytest.raises(DataError, match=r"status.json: nests more than 100 levels deep \(line 1"):
        read_json(path)
    write(path, '{\n  "state": "done",\n  "state": "failed"\n}\n')
    with pytest.raises(DataError, match=r'status.json: the key "state" appears twice.*starts at line 1'):
        read_json(path)
    write(path, '{"state": "do')
    with pytest.raises(DataError, match=r"status.json: not valid JSON at line 1"):
        read_json(path)
    metrics = write(tmp_path / "metrics.jsonl", '{"step": 1}\n{"step": 2, "step": 3}\n{"st')
    with pytest.raises(DataError, match=r'metrics.jsonl: the key "step" appears twice in one object \(line 2\)'):
        read_jsonl(metrics)
    write(metrics, '{"step": 1}\n{"step": 2}\n{"st')
    assert read_jsonl(metrics) == [{"step": 1}, {"step": 2}]  # the torn last line of a crash


def test_a_json_number_python_cannot_convert_is_a_data_error():
    with pytest.raises(DataError, match="x.json: holds a value that cannot be read"):
        parsing.parse_json_text('{"n": ' + "7" * 5000 + "}", file="x.json")


def test_simulation_task_files_are_checked(tmp_path):
    from cruijff_kit._simulate.config import TaskSource
    from cruijff_kit.collab import load_tasks

    path = write(tmp_path / "tasks.jsonl", '{"input": "a"}\n{"input": "b", "input": "c"}\n')
    with pytest.raises(DataError, match=r'tasks.jsonl: the key "input" appears twice in one object \(line 2\)'):
        load_tasks(TaskSource(path=str(path)), path)
    path = write(tmp_path / "tasks.json", "[\n" + "[" * 5000 + "]" * 5000 + "\n]")
    with pytest.raises(DataError, match=r"tasks.json: nests more than 100 levels deep \(line 2"):
        load_tasks(TaskSource(path=str(path)), path)


def test_inference_text_files_are_checked(tmp_path):
    from cruijff_kit.inference._io import read_texts

    path = write(tmp_path / "texts.jsonl", '{"input": "a"}\n{"input": ' + "[" * 5000 + "]" * 5000 + "}\n")
    with pytest.raises(DataError, match=r"texts.jsonl: nests more than 100 levels deep \(line 2"):
        read_texts(path)


def test_the_cli_cuts_any_overlong_message_keeping_its_start_and_its_fix():
    from cruijff_kit._cli.main import shown_error

    text = shown_error(DataError("data.json: row 3: " + "x" * 100_000 + " Fix the row."))
    assert len(text) < 4000
    assert text.startswith("data.json: row 3: ") and text.endswith(" Fix the row.")
    assert "[…96,131 characters cut…]" in text  # 100,031 characters, 3,500 kept at the start and 400 at the end
    assert shown_error(DataError("short")) == "short"


def test_short_repr_never_builds_the_whole_value():
    row: list = ["lol"] * 9
    for _ in range(8):
        row = [row] * 9  # 9^9 strings, shared
    assert len(short_repr(row)) < 300
    assert len(clip("x" * 1_000_000)) < 300
