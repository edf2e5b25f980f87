"""The inspect evaluator for real on CPU: the tiny base model and a LoRA checkpoint evaluated through
`ck stage`'s code, .eval logs read back with inspect's log API and compared with results.json; a user
task file; `ck eval`; and the plan-time errors for bad input."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import write_spec
from inspect_fixtures import DATA, train_adapter, write_dataset

from cruijff_kit import status
from cruijff_kit._base.errors import SpecError, StageError

pytest.importorskip("inspect_ai")
pytest.importorskip("peft")


def _plan(spec: Path) -> Any:
    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.runner import write_experiment
    from cruijff_kit._engine.spec import load_spec

    plan = make_plan(load_spec(spec))
    write_experiment(plan)
    return plan


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Any:
    """A fine-tune run whose epoch_0 adapter was trained for real; base and epoch_0 evaluated."""
    from cruijff_kit._engine.stage import run_stage

    root = tmp_path_factory.mktemp("inspect-finetune")
    write_dataset(root)
    spec = write_spec(root, f"""
        experiment: cap
        model: {{path: {tiny_llama}}}
        dataset: {{plugin: json-instruct, path: data.json}}
        train: {{plugin: trl, epochs: 1}}
        eval:
          - plugin: inspect
            task: exact-match
            checkpoints: all
            scorers: [match, includes, {{name: classification, ignore_case: false}}]
            generation: {{max_tokens: 5}}
            batch_size: 4
            device: cpu
    """)
    run = _plan(spec).runs[0]
    train_adapter(tiny_llama, run.layout.adapter_dir(0))
    status.update_stage(run.layout.root, "train", state=status.DONE)
    for stage in ("eval.exact-match.base", "eval.exact-match.epoch_0"):
        run_stage(run.layout.root, stage)
    return run


def test_base_and_checkpoint_logs_match_results(finetuned: Any, tiny_llama: Path) -> None:
    from inspect_ai.log import read_eval_log

    results = json.loads(finetuned.layout.results.read_text())["exact-match"]
    assert set(results) == {"base", "epoch_0"}
    completions = {}
    for target, entry in results.items():
        log_path = finetuned.layout.root / entry["log"]
        assert log_path.parent == finetuned.layout.eval_dir("exact-match", target)
        assert [p.suffix for p in log_path.parent.iterdir()] == [".eval"]
        log = read_eval_log(str(log_path))
        assert log.status == "success"
        assert log.eval.model == f"ck/{tiny_llama}"
        meta = log.eval.metadata
        assert meta["run"] == finetuned.name and meta["target"] == target and meta["base_model"] == str(tiny_llama)
        assert meta["finetuned"] is (target == "epoch_0") and meta["epoch"] == (0 if target == "epoch_0" else None)
        assert log.eval.model_args.get("adapter") == (str(finetuned.layout.adapter_dir(0))
                                                      if target == "epoch_0" else None)
        assert log.plan.config.seed == 42 and log.plan.config.max_tokens == 5
        # every configured scorer is reported, with the log's values and standard errors
        assert entry["scorers"] == [s.name for s in log.results.scores] == ["match", "includes", "classification"]
        for score in log.results.scores:
            for key, metric in score.metrics.items():
                if key == "stderr":
                    assert entry[f"{score.name}/accuracy"]["stderr"] == pytest.approx(metric.value)
                else:
                    assert entry[f"{score.name}/{key}"]["value"] == pytest.approx(metric.value)
        assert entry["samples"] == log.results.total_samples == len(DATA["test"])
        assert entry["status"] == "success" and entry["target"] == target
        assert log.samples[0].target == "APPLE"
        assert log.samples[0].input[-1].text == "apple"
        completions[target] = [s.output.completion for s in log.samples]
        labels = entry["confusion_matrix"]["classification"]["labels"]
        assert labels[: len(DATA["test"])] == sorted(r["output"] for r in DATA["test"])
    assert completions["base"] != completions["epoch_0"], "the adapter changed nothing"
    st = status.read(finetuned.layout.root)["stages"]
    assert st["eval.exact-match.base"]["state"] == st["eval.exact-match.epoch_0"]["state"] == "done"


MC = {"train": [{"input": "Capital of Italy?", "output": "A", "choices": ["Rome", "Paris"]}],
      "test": [{"input": "Capital of France?", "output": "Paris", "choices": ["Rome", "Paris"]},
               {"input": "Capital of Italy?", "output": "A", "choices": ["Rome", "Paris"]},
               {"input": "Capital of Spain?", "output": "B", "choices": ["Lisbon", "Madrid"]}]}


def test_user_task_file_choice_prefix_and_risk(tmp_path: Path, tiny_llama: Path) -> None:
    """A control run with two evals: a user task file (given the run's split and task_args) and the
    built-in choice task with a prefilled answer start and the logprob risk scorer."""
    from inspect_ai.log import read_eval_log

    from cruijff_kit._engine.stage import run_stage

    (tmp_path / "mc.json").write_text(json.dumps(MC))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "shout.py").write_text(textwrap.dedent("""
        from inspect_ai import Task, task
        from inspect_ai.scorer import includes
        from inspect_ai.solver import generate

        @task
        def shout(dataset, limit_to=1):
            return Task(dataset=dataset[:limit_to], solver=[generate()], scorer=includes())
    """))
    spec = write_spec(tmp_path, f"""
        experiment: user-task
        model: {{path: {tiny_llama}}}
        dataset: {{plugin: json-instruct, path: mc.json}}
        eval:
          - {{plugin: inspect, task: tasks/shout.py@shout, task_args: {{limit_to: 2}},
             scorers: [includes, continuous], generation: {{max_tokens: 3}}}}
          - {{plugin: inspect, task: choice, generation: {{max_tokens: 2, assistant_prefix: "ANSWER:"}},
             scorers: [choice, {{name: risk, options: [A, B]}}]}}
    """)
    run = _plan(spec).runs[0]
    assert [s.name for s in run.stages] == ["eval.shout.base", "eval.choice.base"]
    res = run_stage(run.layout.root, "eval.shout.base")
    log = read_eval_log(str(run.layout.root / res["log"]))
    assert log.eval.task == "shout" and len(log.samples) == 2
    assert log.eval.task_args == {"dataset": "<the run's dataset split: 3 samples>", "limit_to": 2}
    assert res["scorers"] == ["includes", "continuous"]  # the spec's scorers replace the task's
    assert res["continuous/parse_rate"] == {"value": 0.0, "stderr": None}

    res = run_stage(run.layout.root, "eval.choice.base")
    log = read_eval_log(str(run.layout.root / res["log"]))
    assert [s.target for s in log.samples] == ["B", "A", "B"]  # choice text mapped to its letter
    assert log.samples[0].choices == ["Rome", "Paris"]
    first = log.samples[0]
    assert [m.text for m in first.messages if m.role == "assistant"][0] == "ANSWER:"
    assert log.plan.config.logprobs is True  # turned on by the risk scorer
    top = first.output.choices[0].logprobs.content[0].top_logprobs
    assert len(top) == 20 and not any("\u0120" in t.token for t in top)  # token text, not BPE pieces
    assert res["scorers"] == ["choice", "risk"]
    # the tiny model has neither A nor B among the top log-probabilities of its first answer token, so no
    # sample is scored (test_risk_scorer_recomputed_from_the_log scores some)
    check_risk(res, log, "A", "B")
    assert set(json.loads(run.layout.results.read_text())) == {"shout", "choice"}


def check_risk(res: dict[str, Any], log: Any, neg: str, pos: str) -> list[float]:
    """The risk scorer's results recomputed from the log's own top-20 log-probabilities of the first
    answer token: a sample is scored when its target is an option and both options (any spacing) are
    among them; risk = P(pos) / (P(neg) + P(pos)), the answer pos when risk >= 0.5. Returns the risks."""
    risks, correct = [], []
    for sample in log.samples:
        mass = {neg: 0.0, pos: 0.0}
        for t in sample.output.choices[0].logprobs.content[0].top_logprobs:
            if t.token.strip() in mass:
                mass[t.token.strip()] += math.exp(t.logprob)
        if sample.target in mass and mass[neg] > 0 and mass[pos] > 0:
            risks.append(mass[pos] / (mass[neg] + mass[pos]))
            correct.append((pos if risks[-1] >= 0.5 else neg) == sample.target)
    n = len(log.samples)
    assert res["risk/coverage"]["value"] == pytest.approx(len(risks) / n)
    assert res["risk/n_unscored"]["value"] == n - len(risks)
    assert res["risk/accuracy"]["value"] == pytest.approx(sum(correct) / n)
    if risks:
        assert res["risk/mean_risk"]["value"] == pytest.approx(sum(risks) / len(risks), rel=1e-6)
    else:
        assert "risk/mean_risk" not in res
    return risks


def test_risk_scorer_recomputed_from_the_log(tmp_path: Path, tiny_llama: Path) -> None:
    """Options the tiny model does rank high after these prompts (` th`, `ful`, with and without a space):
    the samples whose target is one of them are scored, the one whose target is not (`Paris`) is not."""
    from inspect_ai.log import read_eval_log

    from cruijff_kit._engine.stage import run_stage

    rows = [{"input": "Say the", "output": "th"}, {"input": "Say mall", "output": "ful"},
            {"input": "Capital of France?", "output": "Paris"}]
    (tmp_path / "risk.json").write_text(json.dumps({"train": rows[:1], "test": rows}))
    spec = write_spec(tmp_path, f"""
        experiment: risk
        model: {{path: {tiny_llama}}}
        dataset: {{plugin: json-instruct, path: risk.json}}
        eval:
          - {{plugin: inspect, task: exact-match, scorers: [{{name: risk, options: [th, ful]}}],
             generation: {{max_tokens: 1}}, device: cpu}}
    """)
    run = _plan(spec).runs[0]
    res = run_stage(run.layout.root, "eval.exact-match.base")
    log = read_eval_log(str(run.layout.root / res["log"]))
    assert [s.target for s in log.samples] == ["th", "ful", "Paris"]
    risks = check_risk(res, log, "th", "ful")
    assert len(risks) == 2, "the tiny model no longer ranks `th` and `ful` high: choose other options"
    assert log.samples[2].scores["risk"].metadata["reason"] == "target 'Paris' is not one of the options ['th', 'ful']"


def test_ck_eval_one_off(finetuned: Any, tiny_llama: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cruijff_kit._cli import _add_plugin_commands, cli

    _add_plugin_commands()
    data = write_dataset(tmp_path)
    res = CliRunner().invoke(cli, ["eval", str(tiny_llama), "--adapter", str(finetuned.layout.adapter_dir(0)),
                                   "--task", "includes", "--dataset", str(data), "--limit", "2",
                                   "--set", "generation.max_tokens=3", "--output", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "includes/accuracy" in res.output
    (run_dir,) = (tmp_path / "out" / "ck-eval" / "runs").iterdir()
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert list(results["includes"]) == ["adapter"] and results["includes"]["adapter"]["samples"] == 2


# --------------------------------------------------------------------------- bad input
BASE = """
    experiment: bad
    model: {{path: {model}{adapter}}}
    dataset: {{plugin: json-instruct, path: data.json}}
    {train}
    eval:
      - {{plugin: inspect, {eval}}}
"""


@pytest.mark.parametrize(("train", "adapter", "ev", "message"), [
    ("", "", "task: exact-macth", "Did you mean `exact-match`"),
    ("", "", "task: nope.py@t", "nope.py does not exist"),
    ("", "", "task: tasks.py@missing", "has no function `missing`"),
    ("", ", adapter: .", "task: includes", "not a PEFT adapter folder"),  # a folder, no adapter_config.json
    ("train: {plugin: trl, epochs: 1}", "", "task: includes, checkpoints: [2]", "never saved"),
    ("", "", "task: includes, split: tset", "split `tset`"),
    ("", "", "task: includes, backend: vllm", "needs the vllm package"),
    ("train: {plugin: trl, epochs: 1}", "", "task: includes, model: openai/gpt-4o-mini",
     "has no checkpoints"),
])
def test_plan_time_errors(tmp_path: Path, tiny_llama: Path, train: str, adapter: str, ev: str,
                          message: str) -> None:
    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.spec import load_spec

    if "vllm" in ev:
        import importlib.util

        if importlib.util.find_spec("vllm") is not None:
            pytest.skip("vllm is installed here")
    write_dataset(tmp_path)
    (tmp_path / "tasks.py").write_text("from inspect_ai import task\n\n@task\ndef other():\n    pass\n")
    spec = write_spec(tmp_path, BASE.format(model=tiny_llama, adapter=adapter, train=train, eval=ev))
    with pytest.raises(SpecError, match=message) as info:
        make_plan(load_spec(spec))
    assert str(spec) in str(info.value) and "eval[0]" in str(info.value)


def test_checkpoint_missing_at_run_time_is_a_stage_error(tmp_path: Path, tiny_llama: Path) -> None:
    from cruijff_kit._engine.stage import run_stage

    write_dataset(tmp_path)
    spec = write_spec(tmp_path, BASE.format(model=tiny_llama, adapter="", train="train: {plugin: trl, epochs: 1}",
                                            eval="task: includes, include_base: false"))
    run = _plan(spec).runs[0]
    status.update_stage(run.layout.root, "train", state=status.DONE)
    with pytest.raises(StageError, match="checkpoint was not saved"):
        run_stage(run.layout.root, "eval.includes.epoch_0")
    assert status.read(run.layout.root)["stages"]["eval.includes.epoch_0"]["state"] == "failed"


def test_provider_continues_a_prefilled_answer(tiny_llama: Path) -> None:
    from cruijff_kit_inspect.provider import CkModelAPI
    from inspect_ai.model import ChatMessageAssistant, ChatMessageUser
    from transformers import AutoTokenizer

    api = object.__new__(CkModelAPI)  # the chat rendering only needs the tokenizer settings
    api.tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    api.chat_template = api.use_chat_template = api.enable_thinking = None
    user = [ChatMessageUser(content="apple")]
    prompt = api.hf_chat(user, [])
    assert prompt.endswith("assistant<|end_header_id|>\n\n")
    assert api.hf_chat([*user, ChatMessageAssistant(content="The answer is")], []) == prompt + "The answer is"
    assert api._token_text("\u01201") == " 1"


@pytest.mark.integration
def test_ck_run_trains_with_trl_then_evaluates_base_and_epoch(tmp_path: Path, tiny_llama: Path, ck: Any) -> None:
    """The whole pipeline through `ck run`: trl trains one epoch, inspect evaluates base and epoch_0."""
    from inspect_ai.log import read_eval_log

    from cruijff_kit._api.registry import registry

    if "trl" not in registry().names("trainer"):
        pytest.skip("the trl trainer plugin is not installed")
    write_dataset(tmp_path)
    spec = write_spec(tmp_path, f"""
        experiment: pipeline
        model: {{path: {tiny_llama}}}
        dataset: {{plugin: json-instruct, path: data.json}}
        train: {{plugin: trl, epochs: 1, batch_size: 4, learning_rate: 0.01}}
        eval:
          - {{plugin: inspect, task: exact-match, checkpoints: all, generation: {{max_tokens: 4}}}}
    """)
    res = ck("run", str(spec), timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    (run_dir,) = (tmp_path / "runs" / "pipeline" / "runs").iterdir()
    results = json.loads((run_dir / "eval" / "results.json").read_text())["exact-match"]
    assert set(results) == {"base", "epoch_0"}
    for target, entry in results.items():
        log = read_eval_log(str(run_dir / entry["log"]))
        assert log.status == "success" and log.eval.metadata["finetuned"] is (target == "epoch_0")
        assert entry["match/accuracy"]["value"] == log.results.scores[0].metrics["accuracy"].value
    assert json.loads((run_dir / "status.json").read_text())["stages"]["train"]["state"] == "done"


def test_inspect_model_string_against_a_local_openai_server(tmp_path: Path, tiny_llama: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`model:` evaluates any inspect model string; here a real HTTP server speaking the OpenAI API,
    whose reply depends on the request's seed (44 -> works the sum out step by step)."""
    from fake_openai import FakeOpenAI

    from cruijff_kit._engine.stage import run_stage

    rows = [{"input": "What is 2+3?", "output": "5"}, {"input": "What is 10+4?", "output": "14"},
            {"input": "What is 1+1?", "output": "3"}]
    (tmp_path / "sums.json").write_text(json.dumps({"train": rows, "test": rows}))
    spec = write_spec(tmp_path, f"""
        experiment: remote
        seed: 44
        model: {{path: {tiny_llama}}}
        dataset: {{plugin: json-instruct, path: sums.json}}
        eval:
          - {{plugin: inspect, task: includes, model: openai-api/local/assistant, scorers: [includes, continuous]}}
    """)
    run = _plan(spec).runs[0]
    with FakeOpenAI() as server:
        monkeypatch.setenv("LOCAL_BASE_URL", server.url)
        monkeypatch.setenv("LOCAL_API_KEY", "test-key")
        res = run_stage(run.layout.root, "eval.includes.base")
        assert server.stats.models == {"assistant": 3}
    assert res["model"] == "openai-api/local/assistant" and res["finetuned"] is False
    assert res["includes/accuracy"]["value"] == pytest.approx(2 / 3)
    # "Let me work it out step by step: 2 plus 3 ..." -> first numbers 2, 10, 1 against 5, 14, 3
    assert res["continuous/mae"]["value"] == pytest.approx((3 + 4 + 2) / 3)
