"""`ck new plugin`: each generated distribution installs with pip, is listed by `ck plugins`, passes
its own generated test, and (dataset, evaluator) runs in a spec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_spec

from cruijff_kit._base.errors import SpecError
from cruijff_kit._scaffold import new_plugin


def _install(src: Path, site: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(src)], check=True, capture_output=True, text=True)


def _env(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One distribution of every kind, installed into one site folder."""
    root = tmp_path_factory.mktemp("scaffold")
    site = root / "site"
    for kind, name in (("dataset", "jsonl-rows"), ("evaluator", "exact-eval"), ("trainer", "my-trainer")):
        _install(new_plugin(kind, name, root), site)
    return root, site


def test_listed_by_ck_plugins(generated: tuple[Path, Path]) -> None:
    _, site = generated
    res = subprocess.run([sys.executable, "-m", "cruijff_kit", "plugins", "--json"], capture_output=True,
                         text=True, env=_env(site), check=True)
    rows = {(p["kind"], p["name"]): p for p in json.loads(res.stdout)["plugins"]}
    for kind, name in (("dataset", "jsonl-rows"), ("evaluator", "exact-eval"), ("trainer", "my-trainer")):
        assert (kind, name) in rows, f"{kind} {name} not listed"
        assert rows[(kind, name)]["distribution"] == f"ck-{name}"


@pytest.mark.parametrize("dist", ["ck-jsonl-rows", "ck-exact-eval", "ck-my-trainer"])
def test_generated_tests_pass(generated: tuple[Path, Path], dist: str) -> None:
    root, site = generated
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                         cwd=root / dist, capture_output=True, text=True, env=_env(site))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "passed" in res.stdout and "failed" not in res.stdout


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
        new_plugin("scheduler", "mine", tmp_path)
    new_plugin("dataset", "again", tmp_path)
    with pytest.raises(SpecError, match="would overwrite"):
        new_plugin("dataset", "again", tmp_path)
