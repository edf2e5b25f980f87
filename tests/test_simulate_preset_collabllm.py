"""`ck simulate` under the default `collabllm` scoring preset, against a real HTTP server on 127.0.0.1.

The judge model of the fake server is scripted here to answer CollabLLM's own prompts (accuracy,
interactivity, extraction of the final document or code); every reward stored with a conversation
is then recomputed from the stored conversation: cl100k tokens with tiktoken's own ``cl100k_base``
encoding (read from litellm's copy of the table), BLEU values worked out by hand, pass rates by
counting the tests the scripted code passes.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fake_openai
import pytest
from fake_openai import FakeOpenAI
from simulate_fixtures import (
    key_in_environment,
    participant,
    read_conversations,
    running_server,
    write_sim_spec,
)

fake_server = pytest.fixture(running_server, name="fake_server")
api_key = pytest.fixture(key_in_environment, name="api_key")

EXTRACT_START = "You are a thorough and diligent conversation analyzer."
# BLEU of "The answer is 4." against "The answer is 3." (16 characters each, one differs, at index 14):
# character n-gram precisions 15/16, 13/15, 12/14, 11/13 (the n-grams that hold index 14 miss), equal
# lengths so no brevity penalty: the geometric mean (15*13*12*11 / (16*15*14*13)) ** (1/4) = (132/224) ** 0.25.
BLEU_ONE_OFF = (132 / 224) ** 0.25
PLUS, MINUS = "def add(a, b):\n    return a + b\n", "def add(a, b):\n    return a - b\n"
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(0, 0) == 0"]


def scripted_judge(prompt: str) -> str:
    """CollabLLM's judge and extraction prompts answered by fixed rules on the conversation in them."""
    if "*accuracy*" in prompt:
        response = prompt.split("<|The Start of The Model's Response|>\n")[1].split("\n<|The End of")[0]
        truth = re.search(r"Ground Truth Answer: (.*)\n", prompt).group(1)  # type: ignore[union-attr]
        ok = any(m["role"] == "assistant" and truth in m["content"] for m in json.loads(response))
        return json.dumps({"thought": "compared", "accuracy": int(ok)})
    if "*interactivity*" in prompt:
        asks = re.search(r"^Assistant: [^\n]*\?$", prompt, re.M)
        return json.dumps({"thought": "rated", "interactivity": 1.0 if asks else 0.25})
    assert prompt.startswith(EXTRACT_START), prompt[:200]
    last = re.findall(r"^\*\*Assistant\*\*: (.*)$", prompt, re.M)[-1]
    if "a/an document" in prompt:
        document = ("The answer is 3." if last.startswith("The answer is") else
                    "The answer is 4." if last.startswith("Let me work") else "")
        return json.dumps({"thought": "the last version", "final_completion": document})
    assert "a/an runnable code" in prompt
    return json.dumps({"thought": "the code", "final_completion": PLUS if last.startswith("The answer is") else MINUS})


@pytest.fixture
def judged(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The fake server's `judge` model answers CollabLLM's prompts; the prompts it got, in order."""
    prompts: list[str] = []
    original = fake_openai.reply_for

    def reply_for(body: dict[str, Any], first: bool) -> str:
        if body.get("model") != "judge":
            return original(body, first)
        prompts.append(body["messages"][-1]["content"])
        return scripted_judge(prompts[-1])

    monkeypatch.setattr(fake_openai, "reply_for", reply_for)
    return prompts


def cl100k_tokens(text: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """tiktoken's own cl100k_base encoding, its table read from litellm's wheel (no download)."""
    import tiktoken

    spec = importlib.util.find_spec("litellm")
    assert spec is not None and spec.submodule_search_locations
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(Path(spec.submodule_search_locations[0]) / "litellm_core_utils"
                                                 / "tokenizers"))
    return len(tiktoken.get_encoding("cl100k_base").encode(text, disallowed_special=()))


def futures(row: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]]:
    """(candidate, future, whole session of the future) for every future of a scored conversation."""
    for turn in row["turns"]:
        history = row["messages"][:turn["message_index"]]
        for cand in turn["candidates"]:
            for future in cand["continuations"]:
                yield cand, future, [*history, {"role": "assistant", "content": cand["completion"]},
                                     *future["messages"]]


def assistant_tokens(session: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> float:
    text = " ".join(m["content"] for m in session if m["role"] == "assistant")
    return cl100k_tokens(text, monkeypatch) / 1000


def simulate(spec: Path) -> tuple[Any, str]:
    from cruijff_kit._engine.spec import load_spec
    from cruijff_kit._simulate.command import report, simulate

    summary = simulate(load_spec(spec), progress=False)
    assert summary.failed == 0
    return summary, report(summary)[0]


def test_a_spec_without_preset_gets_collabllm_question_answering(
        tmp_path: Path, fake_server: FakeOpenAI, api_key: str, judged: list[str],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    scoring = {"candidates": 2, "horizon": 1, "judge": participant(fake_server.url, "judge")}
    spec = write_sim_spec(tmp_path, fake_server.url, stops=[1, 9], top={"train": {"plugin": "trl"}},
                          simulate={"max_turns": 2, "scoring": scoring})
    from cruijff_kit._cli import main

    for command in (["validate", str(spec)], ["plan", str(spec), "--no-write"]):
        capsys.readouterr()
        main(command)  # plan time (before the output exists) names the preset
        err = capsys.readouterr().err
        assert "Note: simulate.scoring uses preset `collabllm`, the default" in err, (command, err)

    summary, message = simulate(spec)
    assert summary.finished == 2
    assert "preset `collabllm`, the default: CollabLLM's official reward, task type question-answering" in message
    assert "(accuracy x 1, interactivity x 0.5, token_amount x -0.5), 3 futures per candidate" in message
    rows = read_conversations(tmp_path / "sim" / "conversations.jsonl")
    seen = set()
    for row in rows:
        for turn in row["turns"]:
            for cand in turn["candidates"]:
                assert len(cand["continuations"]) == 3  # CollabLLM's three futures per candidate
        for _, future, session in futures(row):
            accuracy = float(any(row["task"]["answer"] in m["content"] for m in session if m["role"] == "assistant"))
            asks = any(m["role"] == "assistant" and m["content"].endswith("?") for m in session)
            want = {"accuracy": accuracy, "interactivity": 1.0 if asks else 0.25,
                    "token_amount": assistant_tokens(session, monkeypatch)}
            assert future["rewards"] == pytest.approx(want, abs=1e-12)
            assert future["score"] == pytest.approx(want["accuracy"] + 0.5 * want["interactivity"]
                                                    - 0.5 * want["token_amount"], abs=1e-12)
            seen.add((accuracy, asks))
        for turn in row["turns"]:  # the user's next message comes from the chosen candidate's longest future
            after = turn["message_index"] + 1
            if after < len(row["messages"]):
                chosen = turn["candidates"][turn["chosen"]]["continuations"]
                longest = sorted(chosen, key=lambda f: len(f["messages"]))[-1]
                assert row["messages"][after] == longest["messages"][0]
    assert len(seen) >= 2  # the judge's answers vary over the futures
    assert judged and all(p.startswith(("You are a helpful and meticulous evaluator.",
                                         "You are a helpful and meticulous conversation evaluator.")) for p in judged)



def test_document_editing_scores_the_extracted_document_by_bleu(
        tmp_path: Path, fake_server: FakeOpenAI, api_key: str, judged: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    scoring = {"task_type": "document-editing", "candidates": 3, "horizon": 1,
               "judge": participant(fake_server.url, "judge")}
    spec = write_sim_spec(tmp_path, fake_server.url, stops=[1], simulate={"max_turns": 1, "scoring": scoring,
                                                                           "conversations_per_task": 2})
    (tmp_path / "tasks.json").write_text(json.dumps([
        {"id": "note", "input": "Write a one-line note on 1+2, stop after 1", "output": "The answer is 3."}]))
    summary, message = simulate(spec)
    assert summary.finished == 2 and "task type document-editing" in message
    values = []
    for row in read_conversations(tmp_path / "sim" / "conversations.jsonl"):
        for cand, future, session in futures(row):
            text = cand["completion"]
            bleu = 1.0 if text.startswith("The answer is") else BLEU_ONE_OFF if text.startswith("Let me") else 0.0
            tokens = assistant_tokens(session, monkeypatch)
            assert set(future["rewards"]) == {"document->bleu", "token_amount"}
            assert future["rewards"]["document->bleu"] == pytest.approx(bleu, abs=1e-12)
            assert future["rewards"]["token_amount"] == pytest.approx(tokens, abs=1e-12)
            assert future["score"] == pytest.approx(bleu - 0.1 * tokens, abs=1e-12)
            values.append(bleu)
    assert {1.0, BLEU_ONE_OFF} <= set(values)  # both hand-checked values occur
    extractions = [p for p in judged if p.startswith(EXTRACT_START)]
    assert len(extractions) == len(values) and all("a/an document that was generated" in p for p in extractions)


def test_code_generation_runs_the_tests_on_the_extracted_code(
        tmp_path: Path, fake_server: FakeOpenAI, api_key: str, judged: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    scoring = {"task_type": "code-generation", "candidates": 2, "continuations": 1, "horizon": 1,
               "judge": participant(fake_server.url, "judge")}
    spec = write_sim_spec(tmp_path, fake_server.url, stops=[1], simulate={"max_turns": 1, "scoring": scoring,
                                                                           "conversations_per_task": 3})
    (tmp_path / "tasks.json").write_text(json.dumps([
        {"id": "add", "input": "Write add(a, b) and check it on 1+2, stop after 1", "output": PLUS,
         "tests": ADD_TESTS, "extraction_requirement": "start with def add(a, b):"}]))
    summary, _ = simulate(spec)
    assert summary.finished == 3
    values = []
    for row in read_conversations(tmp_path / "sim" / "conversations.jsonl"):
        for cand, future, session in futures(row):
            # a + b passes all three tests; a - b only add(0, 0) == 0
            rate = 1.0 if cand["completion"].startswith("The answer is") else 1 / 3
            tokens = assistant_tokens(session, monkeypatch)
            assert future["rewards"] == pytest.approx({"runnable code->pass_rate": rate, "token_amount": tokens},
                                                      abs=1e-12)
            assert future["score"] == pytest.approx(rate - 0.5 * tokens, abs=1e-12)
            values.append(rate)
    assert {1.0, 1 / 3} <= set(values)
    extractions = [p for p in judged if p.startswith(EXTRACT_START)]
    assert len(extractions) == len(values)
    assert all("a/an runnable code that" in p and "Addtional requirement:\nstart with def add(a, b):" in p
               for p in extractions)


def _section(url: str, scoring: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"tasks": {"path": "tasks.json", **extra}, "user": participant(url, "sim-user"),
            "assistant": participant(url, "helper"), "scoring": scoring}


@pytest.mark.parametrize(("scoring", "tasks", "words"), [
    ({"preset": "ck", "task_type": "document-editing", "judge": {"plugin": "openai"}}, {},
     ["simulate.scoring", "needs preset collabllm"]),
    ({"preset": "ck"}, {}, ["simulate.scoring", "preset ck needs `metrics`"]),
    ({"judge": {"plugin": "openai"}, "metrics": {"i": {"type": "interactivity", "prompt": "rate {chat_history}"}}},
     {}, ["simulate.scoring", "CollabLLM's own interactivity prompt", "preset: ck"]),
    ({"task_type": "document-editing"}, {}, ["document->bleu", "needs a model", "scoring.judge"]),
    ({"preset": "ck", "metrics": {"p": {"type": "pass_rate", "model": {"plugin": "openai"}}}}, {},
     ["metric `p` (pass_rate) sets a model", "preset collabllm"]),
    ({"task_type": "document-editing", "metrics": {"a": {"type": "exact_match"}}, "judge": {"plugin": "openai"}}, {},
     ["either task_type", "or metrics"]),
])
def test_scoring_settings_that_do_not_fit_the_preset_are_refused(scoring: dict[str, Any], tasks: dict[str, Any],
                                                                  words: list[str]) -> None:
    from cruijff_kit._base.errors import SpecError
    from cruijff_kit._simulate.config import parse_config

    with pytest.raises(SpecError) as info:
        parse_config(_section("http://127.0.0.1:9/v1", scoring, **tasks), file="spec.yaml")
    text = str(info.value)
    assert "spec.yaml" in text and all(w in text for w in words), text


def test_bleu_needs_the_reference_answer(tmp_path: Path, api_key: str) -> None:
    from cruijff_kit._base.errors import SpecError
    from cruijff_kit._engine.spec import load_spec
    from cruijff_kit._simulate.config import load_simulation

    url = "http://127.0.0.1:9/v1"
    spec = write_sim_spec(tmp_path, url, stops=[1], simulate={
        "tasks": {"answer_field": None},
        "scoring": {"task_type": "document-editing", "judge": participant(url, "judge")}})
    with pytest.raises(SpecError) as info:
        load_simulation(load_spec(spec))
    assert info.value.path == "simulate.scoring.metrics.document->bleu" and "answer_field" in str(info.value)


def test_the_scoring_snippets_of_the_docs_validate() -> None:
    import yaml

    from cruijff_kit._simulate.config import ScoringConfig

    page = (Path(__file__).resolve().parents[1] / "docs" / "simulation.md").read_text(encoding="utf-8")
    blocks = [yaml.safe_load(b)["scoring"] for b in re.findall(r"```yaml\n(.*?)```", page, re.S)
              if b.startswith("scoring:")]
    presets = [ScoringConfig.model_validate(b).preset for b in blocks]
    assert sorted(presets) == ["ck", "collabllm"]
