"""Scriptable `ck`: `--json` on validate, plan, run, status and summarize (one JSON document on stdout),
the exit codes of docs/cli.md, and `ck validate` refusing what would fail later (a local model path,
an adapter folder, an inspect task file, a chat template that cannot mark the assistant's turns).

Everything goes through the real `ck` in a subprocess, with the toy plugin (no torch) except the chat
template test, which loads a tiny model's tokenizer.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import write_spec

TOY = """
experiment: toy
model: {path: some-org/some-model}
dataset: {plugin: toy-data}
train: {plugin: toy, epochs: 1, steps_per_epoch: 2}
eval:
  - {plugin: toy-eval, task: exact}
sweep:
  train.lora.rank: [4, 8]
"""
#: Per run: train, eval.exact.base, eval.exact.epoch_0 (the eval's defaults: the base model and the
#: last epoch, epoch 0 of one); 2 runs (the sweep of ranks 4 and 8). The base-model eval is the same in
#: both runs, so it executes once: 2 trains + 2 epoch evals + 1 shared base eval = 5 stages.
STAGES = {"train", "eval.exact.base", "eval.exact.epoch_0"}


def document(res: subprocess.CompletedProcess[str]) -> object:
    """The one JSON document on stdout (json.loads fails if stdout holds anything else)."""
    assert "Traceback" not in res.stderr, res.stderr
    return json.loads(res.stdout)


def test_validate_plan_run_status_summarize_json(tmp_path, with_toy, ck):
    spec = write_spec(tmp_path, TOY)

    res = ck("validate", str(spec), "--json")
    assert res.returncode == 0, res.stderr
    valid = document(res)
    assert valid["ok"] is True and valid["exit_code"] == 0 and valid["experiment"] == "toy"
    assert (valid["run_count"], valid["stage_count"]) == (2, 5) and valid["swept"] == ["train.lora.rank"]
    assert sorted(r["sweep"]["train.lora.rank"] for r in valid["runs"]) == [4, 8]
    assert all(set(r["stages"]) == STAGES and r["type"] == "finetune" for r in valid["runs"])
    names = {r["name"] for r in valid["runs"]}
    assert len(names) == 2

    res = ck("plan", str(spec), "--json")
    assert res.returncode == 0, res.stderr
    planned = document(res)
    assert {r["name"] for r in planned["runs"]} == names and planned["stage_count"] == 5
    assert planned["plan_file"] == str(tmp_path / "runs" / "toy" / "plan.md")
    assert Path(planned["plan_file"]).is_file()

    res = ck("run", str(spec), "--json")  # the local scheduler's progress lines go to stderr
    assert res.returncode == 0, res.stderr
    ran = document(res)
    assert ran["ok"] is True and len(ran["submitted"]) == 5 and ran["already_done"] == 0
    shared = [s for s in ran["submitted"] if s["run"] not in names]
    assert [s["stage"] for s in shared] == ["eval.exact.base"] and ran["unfinished"] == []
    assert {s["stage"] for s in ran["submitted"]} == STAGES
    again = document(ck("run", str(spec), "--json"))
    assert again["submitted"] == [] and again["already_done"] == 5

    res = ck("status", str(spec), "--json")
    assert res.returncode == 0, res.stderr
    rows = document(res)  # one row per run and stage; the shared base eval on each run's row, marked
    assert len(rows) == 6 and {r["state"] for r in rows} == {"done"} and {r["run"] for r in rows} == names
    assert {r["run"]: r.get("shared") for r in rows if r["stage"] == "eval.exact.base"} == {
        n: f"shared/{shared[0]['run']}" for n in names}

    res = ck("summarize", str(spec), "--json", "--no-plots")
    assert res.returncode == 0, res.stderr
    summary = document(res)
    # one row per run x eval stage; the toy evaluator scores the base 0.5 and an adapter 1.0
    assert len(summary["rows"]) == 4 and {r["run"] for r in summary["rows"]} == names
    assert sorted((r["target"], r["accuracy"]) for r in summary["rows"]) == [
        ("base", 0.5), ("base", 0.5), ("epoch_0", 1.0), ("epoch_0", 1.0)]
    assert sorted(Path(f).name for f in summary["files"]) == ["summary.csv", "summary.md"]


def test_a_failed_stage_makes_run_and_status_exit_1(tmp_path, with_toy, ck):
    spec = write_spec(tmp_path, TOY.split("sweep:")[0].replace("steps_per_epoch: 2", "steps_per_epoch: 2, "
                                                                "fail_at_step: 1"))
    res = ck("run", str(spec), "--json")
    assert res.returncode == 1, res.stderr
    ran = document(res)
    assert ran["ok"] is False and ran["exit_code"] == 1
    assert [(u["stage"], u["state"]) for u in ran["unfinished"]] == [("train", "failed")]
    assert "toy failure at step 1" in ran["unfinished"][0]["error"]

    shown = ck("status", str(spec))
    assert shown.returncode == 1 and "toy failure at step 1" in shown.stdout
    res = ck("status", str(spec), "--json")
    assert res.returncode == 1
    states = {r["stage"]: r["state"] for r in document(res)}
    # the base eval needs no training; the epoch's eval waits for the failed train
    assert states == {"train": "failed", "eval.exact.base": "done", "eval.exact.epoch_0": "pending"}


def test_a_missing_local_model_path_is_refused_at_validate(tmp_path, with_toy, ck):
    spec = write_spec(tmp_path, TOY.replace("some-org/some-model", "./models/nope"))
    res = ck("validate", str(spec))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "at `model.path`" in res.stderr and str(tmp_path / "models" / "nope") in res.stderr
    assert "cannot be a hub id" in res.stderr

    res = ck("validate", str(spec), "--json")  # the error as a document too: the field by name
    assert res.returncode == 2
    error = document(res)["error"]
    assert error["path"] == "model.path" and error["file"] == str(spec) and error["exit_code"] == 2

    # a name that may be a hub id is valid (downloaded later), with a note of how to fetch it now
    spec = write_spec(tmp_path, TOY.replace("some-org/some-model", "acme/not-downloaded"))
    res = ck("validate", str(spec), env={"HF_HUB_CACHE": str(tmp_path / "empty-cache")})
    assert res.returncode == 0, res.stderr
    assert "ck models download acme/not-downloaded" in res.stderr
    (tmp_path / "models" / "nope").mkdir(parents=True)  # the folder exists: valid
    spec = write_spec(tmp_path, TOY.replace("some-org/some-model", "./models/nope"))
    assert ck("validate", str(spec)).returncode == 0


EVAL_ONLY = """
experiment: eval-only
model: {path: some-org/some-model, adapter: adapters/nope}
dataset: {plugin: toy-data}
eval:
  - {plugin: toy-eval, task: exact}
"""


def test_a_missing_adapter_folder_is_refused_at_validate(tmp_path, with_toy, ck):
    spec = write_spec(tmp_path, EVAL_ONLY)
    res = ck("validate", str(spec))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "at `model.adapter`" in res.stderr and str(tmp_path / "adapters" / "nope") in res.stderr
    assert "does not exist" in res.stderr
    (tmp_path / "adapters").mkdir()
    (tmp_path / "adapters" / "nope").write_text("not a folder")
    res = ck("validate", str(spec))
    assert res.returncode == 2 and "at `model.adapter`" in res.stderr and "is a file" in res.stderr
    (tmp_path / "adapters" / "nope").unlink()
    (tmp_path / "adapters" / "nope").mkdir()
    assert ck("validate", str(spec)).returncode == 0


def test_a_missing_inspect_task_file_is_named_by_its_field(tmp_path, ck):
    (tmp_path / "d.json").write_text(json.dumps({s: [{"input": "a", "output": "A"}]
                                                 for s in ("train", "validation", "test")}))
    spec = write_spec(tmp_path, """
        experiment: tasks
        model: {path: some-org/some-model}
        dataset: {plugin: json-instruct, path: d.json}
        eval:
          - {plugin: inspect, task: tasks/nope.py@my_task}
        """)
    res = ck("validate", str(spec))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "at `eval[0].task`" in res.stderr and str(tmp_path / "tasks" / "nope.py") in res.stderr


#: A chat template without `{% generation %}` markers (TRL cannot patch a template it does not know).
PLAIN_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                  "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_a_template_that_cannot_mark_assistant_turns_is_refused_for_multi_turn_data(tmp_path, tiny_llama, ck):
    def turn(word: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": word}, {"role": "assistant", "content": word.upper()}]

    data = tmp_path / "chat"
    data.mkdir()
    # train: rows 1 and 3 have two assistant turns, row 2 one
    (data / "train.json").write_text(json.dumps([{"messages": turn("the") + turn("be")},
                                                 {"messages": turn("to")},
                                                 {"messages": turn("of") + turn("and")}]))
    (data / "validation.json").write_text(json.dumps([{"messages": turn("a")}]))
    (data / "test.json").write_text(json.dumps([{"messages": turn("in")}]))
    spec = write_spec(tmp_path, f"""
        experiment: template
        model: {{path: {tiny_llama}}}
        dataset: {{plugin: json-chat, path: chat}}
        train: {{plugin: trl, epochs: 1, max_seq_length: 256, chat_template: {json.dumps(PLAIN_TEMPLATE)}}}
        """)
    res = ck("validate", str(spec))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "at `train.chat_template`" in res.stderr
    assert "2 of 3 `train` conversations (the first: row 1)" in res.stderr
    assert "assistant_only_loss: false" in res.stderr  # the fix
    # training on whole conversations needs no marks
    assert ck("validate", str(spec), "--set", "train.assistant_only_loss=false").returncode == 0


def test_exit_codes_are_documented():
    """docs/cli.md lists every exit code of ExitCode with its name."""
    from cruijff_kit._base.errors import ExitCode

    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    for code in ExitCode:
        assert f"| {int(code)} |" in section, code
