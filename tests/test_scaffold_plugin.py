"""`ck new plugin`: each generated distribution (all five kinds) installs with pip into one temporary
folder, is listed by `ck plugins`, passes its own generated tests, and works in a spec: the dataset and
evaluator in a stage here; the trainer, scheduler, dataset and evaluator together through `ck run` (the
trainer trains the tiny model for real and inspect evaluates its adapters); the simulator as the user
(and assistant) of `ck simulate`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import write_spec

from cruijff_kit._base.errors import SpecError
from cruijff_kit._scaffold import new_plugin

#: (kind, name) of the distribution generated for each kind.
GENERATED = (("dataset", "jsonl-rows"), ("evaluator", "exact-eval"), ("trainer", "my-trainer"),
             ("scheduler", "one-by-one"), ("simulator", "by-function"))


def _install(sources: list[Path], site: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), *map(str, sources)], check=True, capture_output=True, text=True)


def _env(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One distribution of every kind, installed into one site folder (seen through PYTHONPATH)."""
    root = tmp_path_factory.mktemp("scaffold")
    site = root / "site"
    _install([new_plugin(kind, name, root) for kind, name in GENERATED], site)
    return root, site


def test_listed_by_ck_plugins(generated: tuple[Path, Path]) -> None:
    _, site = generated
    res = subprocess.run([sys.executable, "-m", "cruijff_kit", "plugins", "--json"], capture_output=True,
                         text=True, env=_env(site), check=True)
    rows = {(p["kind"], p["name"]): p for p in json.loads(res.stdout)["plugins"]}
    for kind, name in GENERATED:
        assert (kind, name) in rows, f"{kind} {name} not listed"
        assert rows[(kind, name)]["distribution"] == f"ck-{name}"


@pytest.mark.parametrize("dist", [f"ck-{name}" for _, name in GENERATED])
def test_generated_tests_pass(generated: tuple[Path, Path], dist: str) -> None:
    root, site = generated
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                         cwd=root / dist, capture_output=True, text=True, env=_env(site))
    assert res.returncode == 0, res.stdout + res.stderr
    (test_file,) = (root / dist / "tests").glob("test_*.py")
    count = test_file.read_text().count("\ndef test_")
    assert count >= 3 and f"{count} passed" in res.stdout, res.stdout


def _greedy_answer(model_dir: Path, prompt: str, max_new_tokens: int) -> str:
    """The greedy answer of the model in ``model_dir`` to ``prompt`` as a chat turn, from transformers alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype="float32").eval()
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.integration
def test_generated_dataset_and_evaluator_run_in_a_spec(generated: tuple[Path, Path], tmp_path: Path,
                                                       tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A control run: the generated dataset feeds the generated evaluator on the tiny model."""
    from cruijff_kit._api import registry as plugins
    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.runner import write_experiment
    from cruijff_kit._engine.spec import load_spec
    from cruijff_kit._engine.stage import run_stage

    _, site = generated
    monkeypatch.syspath_prepend(str(site))
    plugins.registry.cache_clear()
    try:
        # the target of "dog" is the tiny model's own greedy answer (from transformers alone), so exactly
        # that row is answered right: accuracy 1/3 (a random model does not answer HOUSE or KITE)
        greedy = _greedy_answer(tiny_llama, "dog", max_new_tokens=3)
        assert greedy.strip(), "the tiny model's greedy answer is blank: no target to build from it"
        targets = {"dog": greedy.strip(), "house": "HOUSE", "kite": "KITE"}
        rows = [{"split": "test", "input": w, "output": t} for w, t in targets.items()]
        (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        spec = write_spec(tmp_path, f"""
            experiment: scaffolded
            model: {{path: {tiny_llama}}}
            dataset: {{plugin: jsonl-rows, path: rows.jsonl}}
            eval:
              - {{plugin: exact-eval, task: exact, max_new_tokens: 3, device: cpu}}
        """)
        plan = make_plan(load_spec(spec))
        write_experiment(plan)
        run = plan.runs[0]
        res = run_stage(run.layout.root, "eval.exact.base")
        assert res["samples"] == 3 and res["accuracy"]["value"] == pytest.approx(1 / 3)
        answers = [json.loads(a) for a in
                   (run.layout.eval_dir("exact", "base") / "answers.jsonl").read_text().splitlines()]
        assert [a["target"] for a in answers] == list(targets.values())
        assert answers[0]["answer"] == greedy and [a["correct"] for a in answers] == [True, False, False]

        bad = write_spec(tmp_path, """
            experiment: scaffolded
            model: {path: m}
            dataset: {plugin: jsonl-rows, path: rows.jsonl, colour: red}
        """, name="bad.yaml")
        with pytest.raises(SpecError, match="colour"):
            make_plan(load_spec(bad))
    finally:
        plugins.registry.cache_clear()


def test_refuses_bad_names_and_overwrites(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not a usable plugin name"):
        new_plugin("dataset", "My Data", tmp_path)
    with pytest.raises(SpecError, match="has no template"):
        new_plugin("tracker", "mine", tmp_path)
    new_plugin("dataset", "again", tmp_path)
    with pytest.raises(SpecError, match="would overwrite"):
        new_plugin("dataset", "again", tmp_path)


def test_every_kind_is_offered_and_imports_only_public_names(tmp_path: Path) -> None:
    """`ck new plugin KIND` offers the five kinds, and no template imports a private name of the core."""
    from click.testing import CliRunner
    from test_architecture import _check_public_imports

    from cruijff_kit._scaffold.commands import new

    for kind, name in GENERATED:
        res = CliRunner().invoke(new, ["plugin", kind, name, "--dir", str(tmp_path)])
        assert res.exit_code == 0, res.output
        assert (tmp_path / f"ck-{name}" / "src" / f"ck_{name.replace('-', '_')}" / "plugin.py").is_file()
    files = sorted(tmp_path.rglob("*.py"))
    assert len(files) == 3 * len(GENERATED)
    bad, used = _check_public_imports(files)
    assert bad == [] and "cruijff_kit.training" in used and "cruijff_kit.status" in used


# --------------------------------------------------------------------------- through `ck run`
WORDS = ["apple", "house", "kite", "river", "stone", "cloud", "tree", "bird"]


def _answer_loss(model_dir: Path, adapter: Path | None, words: list[str]) -> float:
    """Mean cross-entropy of the answers (each word in capitals) after the chat prompt, from transformers and
    peft alone: the tokens of the full chat text past the tokens of the prompt text."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    losses = []
    for word in words:
        user = [{"role": "user", "content": word}]
        prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template([*user, {"role": "assistant", "content": word.upper()}], tokenize=False)
        assert full.startswith(prompt)
        start = len(tok(prompt, add_special_tokens=False)["input_ids"])
        ids = torch.tensor([tok(full, add_special_tokens=False)["input_ids"]])
        labels = ids.clone()
        labels[0, :start] = -100
        with torch.no_grad():
            losses.append(float(model(input_ids=ids, labels=labels).loss))
    return sum(losses) / len(losses)


def _rows_file(folder: Path) -> None:
    rows = [{"split": "train", "input": w, "output": w.upper()} for w in WORDS]
    rows += [{"split": "test", "input": w, "output": w.upper()} for w in WORDS[:3]]
    (folder / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))


@pytest.mark.integration
@pytest.mark.timeout(600)  # three processes load torch; slow on a loaded machine
def test_ck_run_trains_with_the_generated_trainer_on_the_generated_scheduler(
        generated: tuple[Path, Path], tmp_path: Path, tiny_llama: Path, ck: Any) -> None:
    """One `ck run`: the generated scheduler runs each stage as a subprocess; the generated trainer trains the
    tiny model for real on the generated dataset; inspect evaluates the last adapter (the generated evaluator
    runs through `ck run` in the next test)."""
    from inspect_ai.log import read_eval_log

    _, site = generated
    _rows_file(tmp_path)
    spec = write_spec(tmp_path, f"""
        experiment: scaffolded
        seed: 3
        model: {{path: {tiny_llama}}}
        dataset: {{plugin: jsonl-rows, path: rows.jsonl}}
        train: {{plugin: my-trainer, epochs: 2, batch_size: 4, learning_rate: 0.01, validation: false}}
        eval:
          - {{plugin: inspect, task: exact-match, include_base: false, generation: {{max_tokens: 4}}}}
        scheduler: {{plugin: one-by-one, env: {{OMP_NUM_THREADS: "1"}}}}
    """)
    res = ck("run", str(spec), env=_env(site), timeout=540)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "scaffolded" / "runs").iterdir()
    stages = json.loads((run_dir / "status.json").read_text())["stages"]
    assert set(stages) == {"train", "eval.exact-match.epoch_1"}
    for name, entry in stages.items():
        assert entry["state"] == "done" and entry["scheduler"] == "one-by-one" and entry["exit_code"] == 0, name
        assert f"{run_dir.name} {name}: done" in res.stdout  # the scheduler's line per stage

    # 8 rows in batches of 4: 2 optimizer steps per epoch, 4 in all, each logged with a finite loss
    rows = [json.loads(line) for line in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and [r["epoch"] for r in rows] == [0.5, 1.0, 1.5, 2.0]
    assert all(r["train_loss"] > 0 and r["learning_rate"] > 0 for r in rows)
    for epoch in (0, 1):
        adapter = run_dir / "train" / f"epoch_{epoch}" / "adapter"
        info = json.loads((adapter / "cruijff_kit.json").read_text())
        assert info["trainer"] == "my-trainer" and info["epoch"] == epoch and info["method"] == "lora"
        config = json.loads((adapter / "adapter_config.json").read_text())
        assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"] and config["r"] == 8
    # trained for real: the answers' loss under the last adapter is below the base model's (transformers + peft)
    base = _answer_loss(tiny_llama, None, WORDS)
    tuned = _answer_loss(tiny_llama, run_dir / "train" / "epoch_1" / "adapter", WORDS)
    assert tuned < base - 0.1, (base, tuned)

    results = json.loads((run_dir / "eval" / "results.json").read_text())["exact-match"]
    assert set(results) == {"epoch_1"}
    log = read_eval_log(str(run_dir / results["epoch_1"]["log"]))
    assert log.status == "success" and len(log.samples) == 3 and log.eval.metadata["finetuned"] is True
    assert [s.target for s in log.samples] == [w.upper() for w in WORDS[:3]]


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_the_generated_scheduler_reports_a_failed_training_and_runs_no_stage_after_it(
        generated: tuple[Path, Path], tmp_path: Path, tiny_llama: Path, ck: Any) -> None:
    """max_steps 1 of 2 epochs never reaches epoch 1, which save_epochs keeps: the train stage fails with the
    reason, the evaluation of epoch 1 is not started (pending, with why), the base's runs."""
    _, site = generated
    _rows_file(tmp_path)
    spec = write_spec(tmp_path, f"""
        experiment: stops
        model: {{path: {tiny_llama}}}
        dataset: {{plugin: jsonl-rows, path: rows.jsonl}}
        train: {{plugin: my-trainer, epochs: 2, batch_size: 4, max_steps: 1, validation: false}}
        eval:
          - {{plugin: exact-eval, task: exact, max_new_tokens: 2, device: cpu}}
        scheduler: {{plugin: one-by-one}}
    """)
    res = ck("run", str(spec), env=_env(site), timeout=540)
    assert res.returncode != 0
    (run_dir,) = (tmp_path / "runs" / "stops" / "runs").iterdir()
    stages = json.loads((run_dir / "status.json").read_text())["stages"]
    assert stages["train"]["state"] == "failed" and "max_steps" in stages["train"]["error"]
    assert (run_dir / "train" / "epoch_0" / "adapter" / "adapter_config.json").exists()
    assert stages["eval.exact.epoch_1"]["state"] == "pending"
    assert "did not finish" in stages["eval.exact.epoch_1"]["error"]
    assert stages["eval.exact.base"]["state"] == "done"  # the generated evaluator, through `ck run`
    assert json.loads((run_dir / "eval" / "results.json").read_text())["exact"]["base"]["samples"] == 3


def test_plan_refuses_what_the_generated_trainer_does_not_implement(generated: tuple[Path, Path], tmp_path: Path,
                                                                   ck: Any) -> None:
    _, site = generated
    _rows_file(tmp_path)
    spec = write_spec(tmp_path, """
        experiment: refused
        model: {path: some/model}
        dataset: {plugin: jsonl-rows, path: rows.jsonl}
        train: {plugin: my-trainer, precision: fp16, validation: false}
    """)
    res = ck("validate", str(spec), env=_env(site))
    assert res.returncode != 0
    assert "train.precision" in res.stderr and "fp16 needs loss scaling" in res.stderr, res.stderr


# --------------------------------------------------------------------------- through `ck simulate`
PEOPLE = '''
import json


def user(messages, **generation):
    """Opens with the task's opening (an option), ends the chat once the assistant has answered."""
    prompt = messages[-1]["content"]
    answered = generation["opening"] in prompt
    text = "thanks [[TERMINATE CHAT]]" if answered else generation["opening"]
    return json.dumps({"current_answer": "", "thought": f"t={generation['temperature']}", "response": text})
'''


def test_ck_simulate_with_the_generated_simulator(generated: tuple[Path, Path], tmp_path: Path, ck: Any) -> None:
    """The generated simulator as the user (a function in a file beside the spec, with options) and as the
    assistant (the example `echo` in the installed package)."""
    _, site = generated
    (tmp_path / "people.py").write_text(PEOPLE)
    (tmp_path / "tasks.json").write_text(json.dumps({"train": [{"id": "a", "input": "2+3?", "output": "5"},
                                                               {"id": "b", "input": "1+1?", "output": "2"}]}))
    spec = write_spec(tmp_path, """
        experiment: sim
        model: {path: models/none}
        dataset: {plugin: multiturn, path: sim/conversations.jsonl}
        simulate:
          tasks: {path: tasks.json}
          output: sim/conversations.jsonl
          max_turns: 3
          user: {plugin: by-function, function: people.py:user, temperature: 0.25, options: {opening: Help me}}
          assistant: {plugin: by-function, function: ck_by_function.plugin:echo}
    """)
    res = ck("simulate", str(spec), env=_env(site), timeout=100)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    conversations = {c["conv_id"]: c for c in map(json.loads, (tmp_path / "sim" / "conversations.jsonl")
                                                  .read_text().splitlines())}
    assert set(conversations) == {"a", "b"}
    for conv in conversations.values():
        # user opens, the assistant echoes it, the user ends with the marker: one assistant turn
        assert [(m["role"], m["content"]) for m in conv["messages"][:2]] == [("user", "Help me"), ("assistant", "Help me")]
        assert conv["messages"][0]["thought"] == "t=0.25"
        assert conv["ended_by"] == "marker" and conv["num_turns"] == 1
        assert conv["participants"] == {"user": "by-function:people.py:user",
                                        "assistant": "by-function:ck_by_function.plugin:echo"}

    text = spec.read_text().replace("people.py:user", "people.py:nobody").replace("sim/", "sim-bad/")
    bad = write_spec(tmp_path, text, name="bad.yaml")
    res = ck("simulate", str(bad), env=_env(site), timeout=100)
    assert res.returncode != 0 and "has no function `nobody`" in res.stderr, res.stderr


def test_a_generated_dataset_plugin_installs_the_library_its_datasetdict_needs(tmp_path: Path) -> None:
    """A dataset plugin returns a `datasets.DatasetDict`; a plain `pip install cruijff-kit` has no `datasets`,
    so the generated dataset distribution asks for the core's `data` extra, which brings it."""
    import tomllib

    from packaging.requirements import Requirement

    root = Path(__file__).resolve().parents[1]
    for kind, name in GENERATED:
        folder = new_plugin(kind, name, tmp_path)
        (req,) = (Requirement(r) for r in tomllib.loads((folder / "pyproject.toml").read_text())["project"]
                  ["dependencies"])
        assert req.name == "cruijff-kit" and req.extras == ({"data"} if kind == "dataset" else set()), (kind, req)
    core = tomllib.loads((root / "core" / "pyproject.toml").read_text())["project"]
    formats = tomllib.loads((root / "plugins" / "datasets" / "formats" / "pyproject.toml").read_text())["project"]
    data = [Requirement(r) for r in core["optional-dependencies"]["data"]]
    brought = {r.name for r in data}
    for r in data:
        if r.name == "cruijff-kit-formats":
            brought |= {Requirement(x).name for extra in r.extras for x in formats["optional-dependencies"][extra]}
    assert "datasets" in brought
