"""Dataset plugins json-instruct, json-chat, parquet, hf; the canonical form; `ck data convert`."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before datasets is imported: the hub is never reachable here
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cruijff_kit._api.kinds import Prompt
from cruijff_kit._api.registry import plugin_class
from cruijff_kit._base.errors import DataError
from cruijff_kit._datatools.convert import convert_to_parquet
from cruijff_kit.data import _readers as readers
from cruijff_kit.data._canonical import split_target

DATA = Path(__file__).parent / "data"
INSTRUCT = DATA / "capitalize_instruct.json"
CHAT = DATA / "chat"
PROMPT = Prompt(system="You capitalize words.", template="Capitalize: {input}")


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    readers.clear_cache()
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def offline_hf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Builders cache under tmp_path; the hub is off even if datasets was imported before this module."""
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def make(name: str, base_dir: Path | None = None, **options: Any) -> Any:
    """A dataset plugin object built like the planner does (Config validated)."""
    cls = plugin_class("dataset", name)
    return cls(cls.Config.model_validate(options), base_dir=base_dir)


def rows(dd: Any) -> dict[str, list[dict[str, Any]]]:
    return {split: ds.to_list() for split, ds in dd.items()}


def write_json(path: Path, value: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def instruct_file(tmp_path: Path, train: list[Any], **other: list[Any]) -> Path:
    return write_json(tmp_path / "data" / "x.json", {"train": train, **other})


def error_of(fn: Any) -> str:
    with pytest.raises(DataError) as info:
        fn()
    return str(info.value)


def run(train: bool = True, evals: tuple[str, ...] = ("test",), prompt: dict | None = None) -> Any:
    """What check(run) reads of a planned run: its resolved spec."""
    spec = {"train": {"plugin": "trl"} if train else None,
            "prompt": prompt or {"system": None, "template": "{input}"},
            "eval": [{"plugin": "inspect", "split": s, "prompt": None} for s in evals]}
    return SimpleNamespace(spec=spec)


GOOD = [{"input": "a", "output": "A"}, {"input": "b", "output": "B"}]


# --------------------------------------------------------------------------- loading the fixtures
def test_json_instruct_loads_the_fixture_with_the_default_prompt() -> None:
    dd = make("json-instruct", base_dir=DATA, path="capitalize_instruct.json").load(None)
    assert {s: len(d) for s, d in dd.items()} == {"train": 16, "validation": 4, "test": 4}
    assert dd["train"].column_names == ["messages", "input", "output"]
    assert dd["train"][0] == {"messages": [{"role": "user", "content": "apple"},
                                           {"role": "assistant", "content": "APPLE"}],
                              "input": "apple", "output": "APPLE"}


def test_prompt_system_and_template_render_instruct_rows() -> None:
    dd = make("json-instruct", path=str(INSTRUCT)).load(PROMPT)
    assert dd["test"][0]["messages"] == [
        {"role": "system", "content": "You capitalize words."},
        {"role": "user", "content": "Capitalize: umbrella"},
        {"role": "assistant", "content": "UMBRELLA"}]
    assert dd["test"][0]["output"] == "UMBRELLA"
    # braces other than {input} are left alone
    dd = make("json-instruct", path=str(INSTRUCT)).load({"template": 'JSON {"w": "{input}"}'})
    assert dd["train"][0]["messages"][0] == {"role": "user", "content": 'JSON {"w": "apple"}'}


def test_template_without_input_is_refused() -> None:
    msg = error_of(lambda: make("json-instruct", path=str(INSTRUCT)).load({"template": "Capitalize!"}))
    assert "has no `{input}`" in msg


def test_json_chat_loads_the_fixture_and_adds_the_system_prompt_only_where_missing() -> None:
    dd = make("json-chat", path=str(CHAT)).load(PROMPT)
    assert {s: len(d) for s, d in dd.items()} == {"train": 9, "validation": 2, "test": 2}
    assert dd["train"].column_names == ["messages"]
    first, second = dd["train"][0]["messages"], dd["train"][1]["messages"]
    assert first[0] == {"role": "system", "content": "You answer in capital letters."}  # had its own
    assert [m["role"] for m in first] == ["system", "user", "assistant"]
    assert second[0] == {"role": "system", "content": "You capitalize words."}  # had none
    assert dd["train"][8]["messages"][-1] == {"role": "assistant", "content": "QUIET"}


def test_json_chat_reads_jsonl_and_drops_extra_message_keys(tmp_path: Path) -> None:
    folder = tmp_path / "chatl"
    folder.mkdir()
    lines = [json.dumps({"messages": [{"role": "user", "content": f"q{i}", "name": "x"},
                                      {"role": "assistant", "content": f"a{i}"}], "id": i}) for i in range(3)]
    (folder / "train.jsonl").write_text("\n".join(lines[:2]) + "\n\n" + lines[2] + "\n", encoding="utf-8")
    dd = make("json-chat", path=str(folder)).load(None)
    assert dd["train"].to_list()[2] == {"messages": [{"role": "user", "content": "q2"},
                                                     {"role": "assistant", "content": "a2"}], "id": 2}


def test_splits_mapping_and_limit(tmp_path: Path) -> None:
    path = write_json(tmp_path / "d.json", {"train": GOOD * 5, "dev": GOOD, "test": GOOD})
    ds = make("json-instruct", path=str(path), splits={"validation": "dev"}, limit={"train": 3})
    dd = ds.load(None)
    assert {s: len(d) for s, d in dd.items()} == {"validation": 2, "train": 3, "test": 2}
    assert ds.describe()["rows"] == {"validation": 2, "train": 3, "test": 2}
    assert {s: len(d) for s, d in make("json-instruct", path=str(path), limit=1).load(None).items()} == \
        {"train": 1, "dev": 1, "test": 1}
    msg = error_of(lambda: make("json-instruct", path=str(path), splits={"validation": "devv"}).load(None))
    assert "has no split `devv` (named in dataset.splits.validation)" in msg
    assert "Did you mean `dev`?" in msg


def test_extra_columns_are_kept_and_must_have_one_type(tmp_path: Path) -> None:
    path = instruct_file(tmp_path, [{"input": "a", "output": "A", "id": 1}, {"input": "b", "output": "B"}])
    assert make("json-instruct", path=str(path)).load(None)["train"]["id"] == [1, None]
    path = instruct_file(tmp_path, [{"input": "a", "output": "A", "id": 1}, {"input": "b", "output": "B", "id": "x"}])
    msg = error_of(lambda: make("json-instruct", path=str(path)).load(None))
    assert "split `train`" in msg and "one type per column" in msg


def test_split_target_gives_prompt_and_target() -> None:
    dd = make("json-instruct", path=str(INSTRUCT)).load(PROMPT)
    prompt, target = split_target(dd["test"][1]["messages"])
    assert target == "VIOLIN" and [m["role"] for m in prompt] == ["system", "user"]
    assert split_target([{"role": "user", "content": "hi"}]) == ([{"role": "user", "content": "hi"}], None)


# --------------------------------------------------------------------------- parquet and convert
def test_convert_json_instruct_to_parquet_round_trip(tmp_path: Path) -> None:
    written = convert_to_parquet(INSTRUCT, tmp_path / "pq")
    assert written == {"train": 16, "validation": 4, "test": 4}
    assert sorted(p.name for p in (tmp_path / "pq").iterdir()) == ["test.parquet", "train.parquet",
                                                                   "validation.parquet"]
    from_json = make("json-instruct", path=str(INSTRUCT)).load(PROMPT)
    from_pq = make("parquet", path=str(tmp_path / "pq")).load(PROMPT)
    assert rows(from_pq) == rows(from_json)
    assert {s: d.features for s, d in from_pq.items()} == {s: d.features for s, d in from_json.items()}
    assert make("parquet", path=str(tmp_path / "pq")).describe(PROMPT) == \
        make("json-instruct", path=str(INSTRUCT)).describe(PROMPT)


def test_convert_json_chat_folder_to_parquet_round_trip(tmp_path: Path) -> None:
    assert convert_to_parquet(CHAT, tmp_path / "pqc") == {"train": 9, "validation": 2, "test": 2}
    assert rows(make("parquet", path=str(tmp_path / "pqc")).load(PROMPT)) == \
        rows(make("json-chat", path=str(CHAT)).load(PROMPT))
    assert make("parquet", path=str(tmp_path / "pqc")).describe(PROMPT) == \
        make("json-chat", path=str(CHAT)).describe(PROMPT)


def test_convert_saved_arrow_dataset_to_parquet(tmp_path: Path) -> None:
    import datasets

    raw = datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"input": "x", "output": "X", "n": 1}, {"input": "y", "output": "Y", "n": 2}]),
        "test": datasets.Dataset.from_list([{"input": "z", "output": "Z", "n": 3}])})
    raw.save_to_disk(str(tmp_path / "disk"))
    assert convert_to_parquet(tmp_path / "disk", tmp_path / "pq") == {"train": 2, "test": 1}
    assert rows(make("parquet", path=str(tmp_path / "pq")).load(PROMPT)) == \
        rows(make("hf", path=str(tmp_path / "disk")).load(PROMPT))
    assert make("parquet", path=str(tmp_path / "pq")).load(None)["train"]["n"] == [1, 2]


def test_convert_refuses_existing_destination_and_parquet_source(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    assert "already exists and is not an empty folder" in error_of(
        lambda: convert_to_parquet(INSTRUCT, tmp_path / "out"))
    convert_to_parquet(INSTRUCT, tmp_path / "pq")
    assert "already holds parquet files" in error_of(lambda: convert_to_parquet(tmp_path / "pq", tmp_path / "p2"))
    bad = instruct_file(tmp_path, [{"input": "a", "output": None}])
    assert "`output` must be a string, got null" in error_of(lambda: convert_to_parquet(bad, tmp_path / "p3"))
    assert not (tmp_path / "p3").exists() and not list(tmp_path.glob(".p3*"))


def test_parquet_shards_make_one_split(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "shards"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(GOOD), folder / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist([{"input": "c", "output": "C"}]), folder / "train-00001-of-00002.parquet")
    dd = make("parquet", path=str(folder)).load(None)
    assert dd["train"]["output"] == ["A", "B", "C"]


# --------------------------------------------------------------------------- hf
def test_hf_load_from_disk_round_trip(tmp_path: Path) -> None:
    canonical = make("json-instruct", path=str(INSTRUCT)).load(PROMPT)
    canonical.save_to_disk(str(tmp_path / "saved"))
    again = make("hf", path=str(tmp_path / "saved")).load(PROMPT)
    assert rows(again) == rows(canonical)
    # a single Dataset saved alone is the train split; relative paths resolve against the spec folder
    canonical["validation"].save_to_disk(str(tmp_path / "one"))
    ds = make("hf", base_dir=tmp_path, path="one")
    assert ds.describe()["rows"] == {"train": 4}
    assert ds.load(PROMPT)["train"].to_list() == canonical["validation"].to_list()


def test_hf_local_json_builder_with_column_names(tmp_path: Path, offline_hf: None) -> None:
    for split, words in (("train", ["sun", "moon", "star"]), ("test", ["sky"])):
        (tmp_path / f"{split}.jsonl").write_text(
            "".join(json.dumps({"question": w, "answer": w.upper()}) + "\n" for w in words), encoding="utf-8")
    ds = make("hf", base_dir=tmp_path, path="json", data_files={"train": "train.jsonl", "test": "test.jsonl"},
              input_column="question", output_column="answer")
    dd = ds.load(PROMPT)
    assert dd["train"].column_names == ["messages", "input", "output"]
    assert dd["test"][0]["messages"][1:] == [{"role": "user", "content": "Capitalize: sky"},
                                             {"role": "assistant", "content": "SKY"}]
    assert ds.describe() == {"rows": {"train": 3, "test": 1}, "chars": {"train": 22, "test": 6}}
    ds.check(run(evals=("test",)))
    wrong = make("hf", base_dir=tmp_path, path="json", data_files={"train": "train.jsonl"})
    msg = error_of(lambda: wrong.load(None))
    assert "neither a `messages` column nor `input` and `output` columns (its columns: question, answer)" in msg


def test_hf_messages_column(tmp_path: Path) -> None:
    import datasets

    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "HI"}]
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"dialog": conv}])}).save_to_disk(str(tmp_path / "d"))
    dd = make("hf", path=str(tmp_path / "d"), messages_column="dialog").load(None)
    assert dd["train"].to_list() == [{"messages": conv}]


def test_hf_unreachable_hub_gives_a_clear_error(tmp_path: Path, offline_hf: None) -> None:
    ds = make("hf", path="someone/no-such-dataset")
    assert ds.describe() == {}  # nothing known without the network
    ds.check(run())  # plan-time checks do not touch the network
    msg = error_of(lambda: ds.load(None))
    assert msg.startswith("could not load `someone/no-such-dataset` from the dataset hub")
    assert "save_to_disk" in msg and "HF_HUB_OFFLINE" in msg
    assert "does not exist" in error_of(lambda: make("hf", path="./missing/folder").load(None))
    assert "set dataset.data_files" in error_of(lambda: make("hf", path="json").load(None))
    assert "matches no file" in error_of(lambda: make("hf", path="json", data_files="nope/*.json").load(None))


# --------------------------------------------------------------------------- error messages
def test_null_output_names_file_split_and_row(tmp_path: Path) -> None:
    path = instruct_file(tmp_path, GOOD + [{"input": "c", "output": None}])
    msg = error_of(lambda: make("json-instruct", path=str(path)).load(None))
    assert msg == ("data/x.json: split `train`, row 2: `output` must be a string, got null. "
                   "Fix the row or remove it.")
    # the same message at plan time
    assert error_of(lambda: make("json-instruct", path=str(path)).describe()) == msg


@pytest.mark.parametrize(("row", "expected"), [
    ({"input": "a"}, "row 1: `output` is missing (keys: input)."),
    ({"input": 3, "output": "A"}, "row 1: `input` must be a string, got a number (3)."),
    (["a", "A"], "row 1: a row must be an object with `input` and `output`, got a list."),
    ({"messages": [{"role": "user", "content": "a"}]}, "chat rows need the json-chat plugin"),
])
def test_bad_instruct_rows(tmp_path: Path, row: Any, expected: str) -> None:
    path = instruct_file(tmp_path, [GOOD[0], row])
    msg = error_of(lambda: make("json-instruct", path=str(path)).load(None))
    assert msg.startswith("data/x.json: split `train`, row 1: ")
    assert expected in msg


@pytest.mark.parametrize(("row", "expected"), [
    ({"messages": [{"role": "bot", "content": "x"}]},
     "row 1: message 0 has unknown role `bot`; roles are system, user, assistant."),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistent", "content": "y"}]},
     "message 1 has unknown role `assistent`; roles are system, user, assistant. Did you mean `assistant`?"),
    ({"messages": [{"role": "user"}]}, "row 1: message 0 (user) has no `content`."),
    ({"messages": [{"role": "user", "content": None}]}, "row 1: message 0 (user) has no `content`."),
    ({"messages": [{"content": "x"}]}, "row 1: message 0 has no `role`"),
    ({"messages": []}, "row 1: `messages` must be a non-empty list of {role, content} objects, got an empty list."),
    ({"messages": "hi"}, "got a string ('hi')."),
    ({"input": "a", "output": "b"}, "`messages` is missing (keys: input, output). This row has `input`/`output`"),
])
def test_bad_chat_rows(tmp_path: Path, row: Any, expected: str) -> None:
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "A"}]}
    write_json(tmp_path / "c" / "train.json", [good, row])
    msg = error_of(lambda: make("json-chat", path=str(tmp_path / "c")).load(None))
    assert msg.startswith("c/train.json: split `train`, row 1")
    assert expected in msg
    assert msg.endswith("Fix the row or remove it.")


def test_bad_jsonl_rows_name_the_line(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    good = json.dumps({"messages": [{"role": "user", "content": "a"}]})
    (folder / "test.jsonl").write_text(f"{good}\n\n{json.dumps({'messages': [{'role': 'usr', 'content': 'b'}]})}\n")
    msg = error_of(lambda: make("json-chat", path=str(folder)).load(None))
    assert msg.startswith("c/test.jsonl: split `test`, row 1 (line 3): message 0 has unknown role `usr`")
    (folder / "test.jsonl").write_text(f"{good}\n{{oops\n")
    assert error_of(lambda: make("json-chat", path=str(folder)).load(None)) == (
        "c/test.jsonl: line 2 is not valid JSON (column 2): Expecting property name enclosed in double quotes. "
        "Each line of a .jsonl file must be one JSON object.")


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"train": [\n  {"input": "a", "output": "A"},\n  {"input": "b" "output": "B"}\n]}\n')
    msg = error_of(lambda: make("json-instruct", path=str(path)).load(None))
    assert msg.startswith("bad.json: not valid JSON at line 3, column 17: Expecting ',' delimiter.")
    # JSON Lines content in a .json file gets a hint
    write_json(tmp_path / "c" / "train.json", {})
    (tmp_path / "c" / "train.json").write_text('{"messages": []}\n{"messages": []}\n')
    assert "name it .jsonl" in error_of(lambda: make("json-chat", path=str(tmp_path / "c")).load(None))


def test_wrong_top_level_types(tmp_path: Path) -> None:
    path = write_json(tmp_path / "list.json", GOOD)
    msg = error_of(lambda: make("json-instruct", path=str(path)).load(None))
    assert msg == ("list.json: the top level must be an object with `train`, `validation` and `test` lists of "
                   '{input, output} rows, got a list. Wrap the rows as {"train": [...]}.')
    path = write_json(tmp_path / "obj.json", {"train": {"input": "a", "output": "A"}})
    assert "obj.json: split `train` must be a list of {input, output} rows, got an object." in error_of(
        lambda: make("json-instruct", path=str(path)).load(None))
    write_json(tmp_path / "c" / "train.json", {"messages": [{"role": "user", "content": "a"}]})
    msg = error_of(lambda: make("json-chat", path=str(tmp_path / "c")).load(None))
    assert msg == ("c/train.json: the top level must be a list of {messages: [...]} rows, got an object. "
                   "It holds a single conversation: put it in a list.")


def test_empty_train_split(tmp_path: Path) -> None:
    path = instruct_file(tmp_path, [], test=GOOD)
    msg = error_of(lambda: make("json-instruct", path=str(path)).load(None))
    assert msg.startswith("data/x.json: split `train` has no rows.")
    assert error_of(lambda: make("json-instruct", path=str(path)).check(run())) == msg


def test_non_utf8_bytes(tmp_path: Path) -> None:
    path = tmp_path / "latin.json"
    path.write_bytes(b'{"train": [\n {"input": "caf' + b"\xe9" + b'", "output": "CAFE"}]}')
    msg = error_of(lambda: make("json-instruct", path=str(path)).load(None))
    assert msg.startswith("latin.json: not valid UTF-8: byte 0xe9 at line 2, column 16.")
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"train": GOOD}).encode())
    assert len(make("json-instruct", path=str(bom)).load(None)["train"]) == 2


def test_missing_and_wrong_kind_of_path(tmp_path: Path) -> None:
    assert error_of(lambda: make("json-instruct", base_dir=tmp_path, path="nope.json").load(None)) == (
        "nope.json does not exist. Check dataset.path (relative paths are relative to the spec file's folder).")
    assert "is a folder; json-instruct reads one JSON file" in error_of(
        lambda: make("json-instruct", path=str(CHAT)).load(None))
    assert "is a file; json-chat reads a folder" in error_of(lambda: make("json-chat", path=str(INSTRUCT)).load(None))
    assert "is a file; the parquet plugin reads a folder" in error_of(
        lambda: make("parquet", path=str(INSTRUCT)).load(None))
    (tmp_path / "empty").mkdir()
    assert "holds no .parquet files" in error_of(lambda: make("parquet", path="empty").load(None))
    assert "holds no .json or .jsonl files" in error_of(lambda: make("json-chat", path="empty").load(None))


def test_parquet_rows_are_checked_at_plan_time_with_the_same_message(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "pq"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(GOOD * 3 + [{"input": "x", "output": None}]), folder / "train.parquet")
    msg = error_of(lambda: make("parquet", path=str(folder)).describe())
    assert msg == ("pq/train.parquet: split `train`, row 6: `output` must be a string, got null. "
                   "Fix the row or remove it.")
    assert error_of(lambda: make("parquet", path=str(folder)).load(None)) == msg
    assert make("parquet", path=str(folder), limit=6).describe()["rows"] == {"train": 6}  # bad row cut off

    conv = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "A"}]
    bad = [{"role": "user", "content": "b"}, {"role": "robot", "content": "B"}]
    pq.write_table(pa.Table.from_pylist([{"messages": conv}, {"messages": bad}]), folder / "train.parquet")
    msg = error_of(lambda: make("parquet", path=str(folder)).describe())
    assert msg.startswith("pq/train.parquet: split `train`, row 1: message 1 has unknown role `robot`")
    assert error_of(lambda: make("parquet", path=str(folder)).load(None)) == msg

    pq.write_table(pa.Table.from_pylist([{"q": "a", "a": "b"}]), folder / "train.parquet")
    assert "neither a `messages` column nor `input` and `output` columns (its columns: q, a)" in error_of(
        lambda: make("parquet", path=str(folder)).load(None))
    (folder / "train.parquet").write_text("not parquet")
    assert "not a readable parquet file" in error_of(lambda: make("parquet", path=str(folder)).load(None))


# --------------------------------------------------------------------------- describe and check
def test_describe_counts_rows_and_rendered_characters() -> None:
    ds = make("json-instruct", path=str(INSTRUCT))
    data = json.loads(INSTRUCT.read_text())
    for prompt in (None, PROMPT):
        dd = ds.load(prompt)
        expected = {s: sum(len(m["content"]) for r in d for m in r["messages"]) for s, d in rows(dd).items()}
        assert ds.describe(prompt) == {"rows": {s: len(v) for s, v in data.items()}, "chars": expected}
    chat = make("json-chat", path=str(CHAT))
    dd = chat.load(PROMPT)
    assert chat.describe(PROMPT)["chars"] == {
        s: sum(len(m["content"]) for r in d for m in r["messages"]) for s, d in rows(dd).items()}
    assert make("json-instruct", path=str(INSTRUCT), limit=2).describe()["chars"] == {
        "train": len("appleAPPLEbananaBANANA"), "validation": len("queenQUEENriverRIVER"),
        "test": len("umbrellaUMBRELLAviolinVIOLIN")}


def test_describe_is_cached_per_file_and_sees_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = instruct_file(tmp_path, GOOD)
    assert make("json-instruct", path=str(path)).describe()["rows"] == {"train": 2}
    reads = []
    real = readers.read_text
    monkeypatch.setattr(readers, "read_text", lambda p: reads.append(p) or real(p))
    for _ in range(3):  # new plugin objects, as a sweep's runs have: no re-reading
        assert make("json-instruct", path=str(path)).describe()["rows"] == {"train": 2}
    assert reads == []
    instruct_file(tmp_path, GOOD * 2, test=GOOD)  # another size: the cache key changes
    assert make("json-instruct", path=str(path)).describe()["rows"] == {"train": 4, "test": 2}
    assert len(reads) == 1


def test_check_reports_plan_time_errors(tmp_path: Path) -> None:
    ds = make("json-instruct", path=str(INSTRUCT))
    ds.check(run(evals=("test", "validation")))
    only_test = write_json(tmp_path / "t.json", {"test": GOOD})
    msg = error_of(lambda: make("json-instruct", path=str(only_test)).check(run()))
    assert msg == ("the run trains, but t.json has no `train` split (its splits: `test`). Add one, or map a "
                   "split to it with dataset.splits (e.g. `splits: {train: NAME}`).")
    make("json-instruct", path=str(only_test)).check(run(train=False))  # a control run needs no train split
    msg = error_of(lambda: ds.check(run(evals=("test", "valid"))))
    assert msg.startswith("eval[1] reads split `valid`, which ")
    assert "capitalize_instruct.json does not have (its splits: `train`, `validation`, `test`). " \
           "Did you mean `validation`?" in msg
    assert "dataset.limit names split `dev`" in error_of(
        lambda: make("json-instruct", path=str(INSTRUCT), limit={"dev": 2}).check(run()))
    assert "has no `{input}`" in error_of(lambda: ds.check(run(prompt={"template": "Capitalize"})))
    make("json-chat", path=str(CHAT)).check(run(prompt={"template": "no input needed for chat rows"}))
    assert "does not exist" in error_of(lambda: make("parquet", path="nowhere").check(run()))
    bad = instruct_file(tmp_path, GOOD, test=[{"input": "a"}])
    assert "split `test`, row 0: `output` is missing" in error_of(
        lambda: make("json-instruct", path=str(bad)).check(run()))


# --------------------------------------------------------------------------- the CLI and import cost
def ck(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "cruijff_kit", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_ck_data_convert_cli(tmp_path: Path) -> None:
    done = ck("data", "convert", str(INSTRUCT), "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["train: 16 rows", "validation: 4 rows", "test: 4 rows", "Wrote out"]
    assert len(make("parquet", path=str(tmp_path / "out")).load(None)["train"]) == 16

    instruct_file(tmp_path, GOOD + [{"input": "c", "output": None}])
    done = ck("data", "convert", "data/x.json", "out2", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == ("Error: data/x.json: split `train`, row 2: `output` must be a string, got null. "
                           "Fix the row or remove it.\n")
    assert "Traceback" not in done.stderr and not (tmp_path / "out2").exists()


def test_registration_and_describe_import_neither_datasets_nor_pyarrow(tmp_path: Path) -> None:
    code = ("import sys\nfrom cruijff_kit._api.registry import plugin_class\n"
            "cls = plugin_class('dataset', 'json-instruct')\n"
            f"print(cls(cls.Config(path={str(INSTRUCT)!r})).describe()['rows'])\n"
            "print(sorted(m for m in ('datasets', 'pyarrow', 'torch') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["{'train': 16, 'validation': 4, 'test': 4}", "[]"]
