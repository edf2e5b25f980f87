"""The multi-turn ``collab`` eval task, for real: a simulated user and judges on a real OpenAI-compatible
HTTP server on 127.0.0.1 (``tests/fake_openai.py``), the tiny model under evaluation.

- the whole CollabLLM loop: ``ck simulate`` -> train SFT on the conversations -> multi-turn eval of
  the base and every epoch -> ``ck summarize`` rows with the reward and its components per target;
- a stage killed (SIGKILL) after two finished conversations resumes without holding any finished
  conversation again (no judge call for them, no second journal row);
- base and checkpoint face the same opening user turn (cached replies);
- the conversations of a round are generated in one batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_openai import FakeOpenAI
from kill_fixtures import KILL_AFTER
from simulate_fixtures import KEY, KEY_VAR, participant, read_conversations, write_sim_spec

pytest.importorskip("inspect_ai")
pytest.importorskip("peft")

HELD_OUT = [f"What is {a}+{b}? stop after {s}" for a, b, s in [(2, 5, 1), (4, 4, 2), (6, 1, 9), (3, 3, 2), (1, 8, 1)]]


def _env() -> dict[str, str]:
    return {**os.environ, KEY_VAR: KEY, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def ck(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cruijff_kit", *args], capture_output=True, text=True,
                          env=_env(), cwd=cwd, timeout=600)


def _plan(spec: Path) -> Any:
    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.runner import write_experiment
    from cruijff_kit._engine.spec import load_spec

    plan = make_plan(load_spec(spec))
    write_experiment(plan)
    return plan


def write_held_out(folder: Path) -> Path:
    rows = [{"id": f"held-{i}", "input": text, "output": str(eval(text.split("?")[0].removeprefix("What is ")))}
            for i, text in enumerate(HELD_OUT)]
    path = folder / "held_out.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def collab_eval(url: str, **extra: Any) -> dict[str, Any]:
    return {"plugin": "inspect", "task": "collab", "checkpoints": "all", "user": participant(url, "sim-user"),
            "judge": participant(url, "judge"), "max_turns": 2, "tasks": {"path": "held_out.jsonl"},
            "generation": {"max_tokens": 6}, "device": "cpu", "batch_size": 8, **extra}


def journal(run_dir: Path, target: str) -> list[dict[str, Any]]:
    return read_conversations(run_dir / "eval" / "collab" / target / "conversations.jsonl")


@pytest.mark.integration
def test_simulate_train_sft_then_collab_eval_of_base_and_every_epoch_resumes_after_sigkill(
        tmp_path: Path, tiny_llama: Path) -> None:
    train = {"plugin": "trl", "epochs": 2, "batch_size": 2, "max_seq_length": 256, "lora": {"rank": 4},
             "objective": "sft"}
    dataset = {"plugin": "multiturn", "path": "sim/conversations.jsonl", "threshold": 0.0,
               "splits": {"train": 0.75, "validation": 0.25}}
    with FakeOpenAI(api_key=KEY) as server:
        spec = write_sim_spec(tmp_path, server.url, stops=[1, 2, 9, 2], scoring=True, model=str(tiny_llama),
                              simulate={"max_turns": 2, "scoring": {"candidates": 2, "horizon": 1}},
                              top={"dataset": dataset, "train": train, "eval": [collab_eval(server.url)]})
        write_held_out(tmp_path)
        sim = ck("simulate", str(spec), "--no-progress", cwd=tmp_path)
        assert sim.returncode == 0, sim.stderr
        (run,) = _plan(spec).runs
        run_dir = run.layout.root
        train_res = ck("stage", str(run_dir), "train", cwd=tmp_path)
        assert train_res.returncode == 0, train_res.stderr[-3000:]

        # the base eval is killed right after its second finished conversation is journaled (conversations
        # are scored concurrently, so a third may be journaled in the instant before the kill lands)
        judged_before = server.stats.models["judge"]
        killed = subprocess.run(
            [sys.executable, "-c", KILL_AFTER, "cruijff_kit.collab._conversation", "Journal.add", "2",
             "stage", str(run_dir), "eval.collab.base"], capture_output=True, text=True, env=_env(), cwd=tmp_path,
            timeout=600)
        assert killed.returncode == -9, killed.stderr[-3000:]
        first = journal(run_dir, "base")
        assert 2 <= len(first) < len(HELD_OUT)
        judged_in_kill = server.stats.models["judge"] - judged_before

        # ck run does what is left: the base eval (resumed) and both epochs
        judged_before = server.stats.models["judge"]
        done = ck("run", str(spec), cwd=tmp_path)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        judged_after_kill = server.stats.models["judge"] - judged_before

    base = journal(run_dir, "base")
    ids = [r["conv_id"] for r in base]
    assert sorted(ids) == [f"held-{i}" for i in range(len(HELD_OUT))]  # each conversation once
    assert base[:len(first)] == first  # those finished before the kill were kept, not held again
    per_conversation = 2  # the default collabllm preset asks the judge for accuracy and interactivity
    assert judged_in_kill >= len(first) * per_conversation
    # three targets resumed or fresh: base (the conversations left) and epoch_0, epoch_1 (all 5 each)
    assert judged_after_kill == per_conversation * (len(HELD_OUT) - len(first) + 2 * len(HELD_OUT))

    # base and checkpoints faced the same opening user turn
    openings = {t: {r["conv_id"]: r["messages"][0]["content"] for r in journal(run_dir, t)}
                for t in ("base", "epoch_0", "epoch_1")}
    assert openings["base"] == openings["epoch_0"] == openings["epoch_1"]
    assert openings["base"]["held-0"] == f"Hi, I need some help. {HELD_OUT[0]}"
    cache = tmp_path / "runs" / "sim-test" / "collab" / "collab" / "user_replies.jsonl"
    assert len(cache.read_text().splitlines()) < sum(  # user turns of all targets, fewer calls: shared
        1 for t in ("base", "epoch_0", "epoch_1") for r in journal(run_dir, t) for m in r["messages"]
        if m["role"] == "user")

    # every conversation's scores and reward, recomputed by hand from the journal
    for target in ("base", "epoch_0", "epoch_1"):
        for row in journal(run_dir, target):
            s = row["scores"]
            asks = any(m["role"] == "assistant" and "?" in m["content"] for m in row["messages"])
            assert s["interactivity"] == (1.0 if asks else 0.0)
            assert s["reward"] == pytest.approx(1.0 * s["accuracy"] + 0.5 * s["interactivity"] - 0.5 * s["token_amount"])
            assert row["num_turns"] <= 2

    # the results and the summary: one row per target with the reward and its components
    results = json.loads((run_dir / "eval" / "results.json").read_text())["collab"]
    assert set(results) == {"base", "epoch_0", "epoch_1"}
    for target, entry in results.items():
        rows = journal(run_dir, target)
        mean_reward = sum(r["scores"]["reward"] for r in rows) / len(rows)
        assert entry["reward/mean"]["value"] == pytest.approx(mean_reward)
        assert entry["samples"] == len(HELD_OUT) and entry["headline"] == "reward/mean"
    summ = ck("summarize", str(tmp_path / "runs" / "sim-test"), "--no-plots", "--json", cwd=tmp_path)
    assert summ.returncode == 0, summ.stderr
    out = json.loads(summ.stdout)
    by_target = {r["target"]: r for r in out["rows"] if r.get("task") == "collab"}
    assert set(by_target) == {"base", "epoch_0", "epoch_1"}
    for target, row in by_target.items():
        for metric in ("reward/mean", "accuracy/mean", "interactivity/mean", "token_amount/mean"):
            assert row[metric] == pytest.approx(results[target][metric]["value"]), (target, metric)

    # inspect view shows each whole conversation: the log's sample messages are the journaled turns
    from inspect_ai.log import read_eval_log

    log = read_eval_log(str(run_dir / results["epoch_0"]["log"]))
    by_id = {r["conv_id"]: r for r in journal(run_dir, "epoch_0")}
    for sample in log.samples or []:
        turns = [(m.role, m.text) for m in sample.messages if m.role != "system"]
        assert turns == [(m["role"], m["content"]) for m in by_id[str(sample.id)]["messages"]]
    stages = json.loads((run_dir / "status.json").read_text())["stages"]  # what `ck status` shows
    assert {name: stages[name]["state"] for name in stages if name.startswith("eval.")} == {
        "eval.collab.base": "done", "eval.collab.epoch_0": "done", "eval.collab.epoch_1": "done"}
    assert yaml.safe_load((run_dir / "spec.yaml").read_text())["eval"][0]["task"] == "collab"


@pytest.mark.integration
def test_rounds_are_batched_and_the_run_split_is_the_default_task_source(
        tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without `tasks:` the eval's split of the run's dataset is held out (last user turn = task, final
    assistant turn = reference); each round's turns of the open conversations go to the model in one batch."""
    from conftest import write_spec
    from cruijff_kit_inspect import batching

    from cruijff_kit._engine.stage import run_stage

    sizes: list[list[int]] = []
    original = batching.Batcher.__init__

    def recording(self, loop):  # type: ignore[no-untyped-def]
        original(self, loop)
        sizes.append(self.sizes)

    monkeypatch.setattr(batching.Batcher, "__init__", recording)
    monkeypatch.setenv(KEY_VAR, KEY)
    rows = [{"input": text, "output": str(eval(text.split("?")[0].removeprefix("What is ")))} for text in HELD_OUT]
    (tmp_path / "data.json").write_text(json.dumps({"train": rows[:1], "test": rows}))
    with FakeOpenAI(api_key=KEY) as server:
        ev = collab_eval(server.url, preset="ck", metrics={"success": {"type": "numeric", "weight": 1.0},
                                              "length": {"type": "tokens", "weight": -0.1, "per": 100}})
        del ev["tasks"], ev["judge"]
        spec = write_spec(tmp_path, yaml.safe_dump({
            "experiment": "collab-split", "model": {"path": str(tiny_llama)}, "seed": 7,
            "dataset": {"plugin": "json-instruct", "path": "data.json"}, "eval": [ev]}))
        run_dir = _plan(spec).runs[0].layout.root
        run_stage(run_dir, "eval.collab.base")
        assert server.stats.models["judge"] == 0

    rows_out = journal(run_dir, "base")
    assert sorted(r["task"]["prompt"] for r in rows_out) == sorted(HELD_OUT)
    assert {r["task"]["answer"] for r in rows_out} == {"7", "8", "6", "9"}
    for r in rows_out:  # preset ck counts words and punctuation marks
        texts = [m["content"] for m in r["messages"] if m["role"] == "assistant"]
        assert r["scores"]["reward"] == pytest.approx(r["scores"]["success"] - 0.1 * r["scores"]["length"])
        assert r["scores"]["length"] == pytest.approx(sum(len(__import__("re").findall(r"\w+|[^\w\s]", t))
                                                          for t in texts) / 100)
    turns = sum(r["num_turns"] for r in rows_out)
    generated = [n for run in sizes for n in run]
    assert sum(generated) == turns and max(generated) >= 2 and len(generated) < turns
