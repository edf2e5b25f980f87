"""Several eval stages of one run in one process load the base model once, swap the adapters, and
give exactly what a fresh load per target gives.

Two LoRA adapters are trained for real (different seeds and steps) on the tiny Llama; the stages
``base``, ``epoch_0`` and ``epoch_1`` run through ``ck stage``'s code one after another in this
process, in an order that swaps adapter -> base -> adapter -> adapter. Loads are counted by
wrapping ``from_pretrained``; the expected completions are computed here with plain transformers +
peft (a fresh load per target, the same prompts, batch and settings)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import write_spec
from inspect_fixtures import DATA, train_adapter, write_dataset

from cruijff_kit import status

pytest.importorskip("inspect_ai")
pytest.importorskip("peft")

TARGETS = ("epoch_1", "base", "epoch_0")
"""The order the stages run in: adapter -> base -> another adapter."""


def _plan(spec: Path) -> Any:
    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.runner import write_experiment
    from cruijff_kit._engine.spec import load_spec

    plan = make_plan(load_spec(spec))
    write_experiment(plan)
    return plan


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> dict[int, Path]:
    """Two adapters of the tiny model, trained for real: epoch 0 and epoch 1 (different weights)."""
    root = tmp_path_factory.mktemp("reuse-adapters")
    return {0: train_adapter(tiny_llama, root / "epoch_0" / "adapter", steps=20, seed=0),
            1: train_adapter(tiny_llama, root / "epoch_1" / "adapter", steps=40, seed=1)}


def _run(root: Path, tiny_llama: Path, adapters: dict[int, Path], merge: str = "no") -> Any:
    """A planned fine-tune run (2 epochs) whose adapters are the trained ones; train marked done."""
    import shutil

    write_dataset(root)
    spec = write_spec(root, f"""
        experiment: reuse
        model: {{path: {tiny_llama}}}
        dataset: {{plugin: json-instruct, path: data.json}}
        train: {{plugin: trl, epochs: 2}}
        eval:
          - plugin: inspect
            task: exact-match
            checkpoints: all
            scorers: [match, includes]
            generation: {{max_tokens: 6}}
            batch_size: 4
            device: cpu
            merge_adapter: "{merge}"
    """)
    run = _plan(spec).runs[0]
    for epoch, src in adapters.items():
        shutil.copytree(src.parent, run.layout.adapter_dir(epoch).parent, dirs_exist_ok=True)
    status.update_stage(run.layout.root, "train", state=status.DONE)
    return run


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every base model load (``AutoModelForCausalLM.from_pretrained``), by path; the shared base dropped."""
    import transformers
    from cruijff_kit_inspect.modelcache import BASES

    seen: list[str] = []
    original = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def counting(cls: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(str(path))
        return original(cls, path, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(counting))
    BASES.clear()
    yield seen
    BASES.clear()


def _evaluate(run: Any, targets: tuple[str, ...], fresh: bool) -> dict[str, Any]:
    """Run the eval stages of ``targets`` in order in this process; per target (completions, metrics).
    ``fresh`` drops the shared base before each stage (a fresh load per target)."""
    from cruijff_kit_inspect.modelcache import BASES
    from inspect_ai.log import read_eval_log

    from cruijff_kit._engine.stage import run_stage

    out = {}
    for target in targets:
        if fresh:
            BASES.clear()
        res = run_stage(run.layout.root, f"eval.exact-match.{target}")
        log = read_eval_log(str(run.layout.root / res["log"]))
        assert log.status == "success"
        metrics = {k: v["value"] for k, v in res.items() if isinstance(v, dict) and "value" in v}
        out[target] = ([s.output.completion for s in log.samples], metrics)
    return out


def _plain_completions(base: Path, adapter: Path | None, merge: bool = False) -> list[str]:
    """What a fresh load of ``base`` (+ ``adapter``) generates for the test prompts: plain transformers
    and peft, the chat template, one left-padded batch, greedy, 6 new tokens."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(adapter.parent if adapter is not None else base)
    tok.pad_token, tok.padding_side = tok.eos_token, "left"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
        if merge:
            model = model.merge_and_unload()
    model.eval()
    chats = [tok.apply_chat_template([{"role": "user", "content": r["input"]}], tokenize=False,
                                     add_generation_prompt=True) for r in DATA["test"]]
    enc = tok(chats, return_tensors="pt", padding=True)
    with torch.inference_mode():
        ids = model.generate(**enc, max_new_tokens=6, do_sample=False)
    return tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True,
                            clean_up_tokenization_spaces=False)


def test_one_base_load_for_all_targets_same_results_as_fresh_loads(
        tmp_path: Path, tiny_llama: Path, adapters: dict[int, Path], loads: list[str],
        capfd: pytest.CaptureFixture[str]) -> None:
    run = _run(tmp_path, tiny_llama, adapters)
    reused = _evaluate(run, TARGETS, fresh=False)
    assert loads == [str(tiny_llama)], f"the base was loaded {len(loads)} times for {len(TARGETS)} targets"
    # each stage reported its samples as they finished: 1/4 ... 4/4
    err = capfd.readouterr().err
    n = len(DATA["test"])
    for done in range(1, n + 1):
        assert err.count(f"[samples] {done}/{n} ") == len(TARGETS), err[-2000:]

    (tmp_path / "fresh").mkdir()
    fresh_run = _run(tmp_path / "fresh", tiny_llama, adapters)
    loads.clear()
    fresh = _evaluate(fresh_run, TARGETS, fresh=True)
    assert len(loads) == len(TARGETS)

    for target in TARGETS:
        assert reused[target] == fresh[target], target
    # and what plain transformers + peft generate on a fresh load of each target
    expected = {"base": _plain_completions(tiny_llama, None),
                "epoch_0": _plain_completions(tiny_llama, run.layout.adapter_dir(0)),
                "epoch_1": _plain_completions(tiny_llama, run.layout.adapter_dir(1))}
    for target in TARGETS:
        assert reused[target][0] == expected[target], target
    assert len({tuple(v) for v in expected.values()}) == 3, "the adapters must change the answers"
    results = json.loads(run.layout.results.read_text())["exact-match"]
    assert set(results) == set(TARGETS)
    st = status.read(run.layout.root)["stages"]
    assert all(st[f"eval.exact-match.{t}"]["state"] == "done" for t in TARGETS)


def test_merged_adapter_never_reaches_the_next_target(
        tmp_path: Path, tiny_llama: Path, adapters: dict[int, Path], loads: list[str]) -> None:
    """merge_adapter: memory folds the adapter into the weights: the next target gets a fresh base."""
    run = _run(tmp_path, tiny_llama, adapters, merge="memory")
    reused = _evaluate(run, ("epoch_0", "base", "epoch_1"), fresh=False)
    assert len(loads) == 2, "a merged base must be reloaded for the next target, once per merge"
    assert reused["base"][0] == _plain_completions(tiny_llama, None)
    assert reused["epoch_0"][0] == _plain_completions(tiny_llama, run.layout.adapter_dir(0), merge=True)
    assert reused["epoch_1"][0] == _plain_completions(tiny_llama, run.layout.adapter_dir(1), merge=True)
