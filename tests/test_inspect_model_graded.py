"""The built-in ``model-graded`` task for real: the tiny local model answers, a real HTTP server speaking
the OpenAI API grades (inspect's model_graded_fact prompt), and results.json reports the grader's verdicts.
The grader's API key must not reach any file of the run folder."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from conftest import write_spec

pytest.importorskip("inspect_ai")

API_KEY = "sk-grader-key-7f3a9c1e"
ROWS = [
    {"input": "Say yes. [expect C]", "output": "yes"},
    {"input": "Name a fruit. [expect C]", "output": "apple"},
    {"input": "Name a colour. [expect I]", "output": "red"},
    {"input": "Count to three. [expect C]", "output": "one two three"},
    {"input": "Spell dog in capitals.", "output": "DOG"},  # graded on the submission's content
]


def _file_texts(root: Path) -> dict[str, bytes]:
    """Every file under ``root``, with the members of zip files (.eval logs) read uncompressed."""
    out: dict[str, bytes] = {}
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        out[str(path)] = path.read_bytes()
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                for member in z.namelist():
                    out[f"{path}!{member}"] = z.read(member)
    return out


def test_model_graded_task_with_a_local_grader(tmp_path: Path, tiny_llama: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from fake_openai import FakeOpenAI
    from inspect_ai.log import read_eval_log

    from cruijff_kit import status
    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.runner import write_experiment
    from cruijff_kit._engine.spec import load_spec
    from cruijff_kit._engine.stage import run_stage

    (tmp_path / "qa.json").write_text(json.dumps({"train": ROWS[:1], "test": ROWS}))
    spec = write_spec(tmp_path, f"""
        experiment: graded
        model: {{path: {tiny_llama}}}
        dataset: {{plugin: json-instruct, path: qa.json}}
        eval:
          - {{plugin: inspect, task: model-graded, grader: openai-api/local/fact-grader,
             generation: {{max_tokens: 4}}, batch_size: 5, device: cpu}}
    """)
    monkeypatch.setenv("LOCAL_API_KEY", API_KEY)
    plan = make_plan(load_spec(spec))
    write_experiment(plan)
    run = plan.runs[0]
    with FakeOpenAI(api_key=API_KEY) as server:
        monkeypatch.setenv("LOCAL_BASE_URL", server.url)
        res = run_stage(run.layout.root, "eval.model-graded.base")
        stats = server.stats
    # one grading request per sample, all authorised, none refused
    assert stats.models == {"fact-grader": len(ROWS)}
    assert stats.statuses == {200: len(ROWS)} and stats.auth == {f"Bearer {API_KEY}": len(ROWS)}

    assert status.read(run.layout.root)["stages"]["eval.model-graded.base"]["state"] == "done"
    log = read_eval_log(str(run.layout.root / res["log"]))
    assert log.status == "success" and log.eval.model == f"ck/{tiny_llama}"
    completions = [s.output.completion for s in log.samples]
    grades = [next(iter(s.scores.values())).value for s in log.samples]
    dog = "C" if "dog" in completions[4].lower() else "I"
    assert grades == ["C", "C", "I", "C", dog]
    # the grader saw the tiny model's own answer and the expert answer
    grading = next(iter(log.samples[2].scores.values())).metadata["grading"]
    assert "[Expert]: red" in grading[0]["content"] and completions[2] in grading[0]["content"]

    entry = json.loads(run.layout.results.read_text())["model-graded"]["base"]
    assert entry == res and entry["status"] == "success" and entry["samples"] == len(ROWS)
    (scorer,) = entry["scorers"]
    assert scorer == log.results.scores[0].name
    assert entry[f"{scorer}/accuracy"]["value"] == pytest.approx((3 + (dog == "C")) / len(ROWS))

    leaks = [name for name, data in _file_texts(run.layout.root).items() if API_KEY.encode() in data]
    assert not leaks, f"the grader's API key was written to {leaks}"
