"""A generated tabular dataset trains and evaluates end to end: `ck run` with the `tabular` dataset plugin,
the trl trainer on the tiny Llama, and the inspect evaluator with the calibration (`risk`) scorer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import write_spec
from data_tools_fixtures import CENSUS

from cruijff_kit.data import _provenance as provenance

pytestmark = pytest.mark.integration


def test_tabular_dataset_trains_and_evaluates_with_risk_scores(tmp_path: Path, tiny_llama: Path, ck: Any) -> None:
    from cruijff_kit._api.registry import registry

    reg = registry()
    for kind, name in (("trainer", "trl"), ("evaluator", "inspect"), ("dataset", "tabular")):
        if name not in reg.names(kind):
            pytest.skip(f"the {name} {kind} plugin is not installed")
    from inspect_ai.log import read_eval_log

    data = tmp_path / "data"
    data.mkdir()
    for name in ("census.dta", "census.schema.yaml"):
        shutil.copy(CENSUS / name, data / name)
    spec = write_spec(tmp_path, f"""
        experiment: census
        seed: 5
        model: {{path: {tiny_llama}}}
        dataset:
          plugin: tabular
          source: data/census.dta
          schema_file: data/census.schema.yaml
          features: [age, education, hours_per_week]
          target: {{column: income, threshold: 50000}}
          question: Income above 50,000? Answer 1 or 0.
          context: {{text: Survey data., placement: system}}
          perturb: {{synonyms: 0.5, copies: {{train: 2}}, splits: [train]}}
          splits: {{train: 0.6, validation: 0.2, test: 0.2}}
          balance: [train]
          subsample: {{train: 24, validation: 4, test: 6}}
          seed: 11
        train: {{plugin: trl, epochs: 1, batch_size: 4, learning_rate: 0.01, max_seq_length: 256}}
        eval:
          - plugin: inspect
            task: exact-match
            checkpoints: all
            generation: {{max_tokens: 2}}
            batch_size: 6
            device: cpu
            scorers: [{{name: risk, options: ["0", "1"], n_bins: 2}}, {{name: classification, labels: ["0", "1"]}}]
    """)
    assert ck("validate", str(spec)).returncode == 0
    res = ck("run", str(spec), timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    (generated,) = [p for p in (tmp_path / ".ck-cache").glob("tabular-*.json") if not p.name.endswith(".meta.json")]
    meta = provenance.read_meta(generated)
    assert meta is not None and meta["rows"] == {"train": 48, "validation": 4, "test": 6}
    assert meta["source"]["format"] == "stata" and meta["privacy"]["rows_left_machine"] is False
    test_rows = json.loads(generated.read_text())["test"]

    (run_dir,) = (tmp_path / "runs" / "census" / "runs").iterdir()
    assert json.loads((run_dir / "status.json").read_text())["stages"]["train"]["state"] == "done"
    assert (run_dir / "train" / "epoch_0" / "adapter" / "adapter_config.json").exists()
    results = json.loads((run_dir / "eval" / "results.json").read_text())["exact-match"]
    assert set(results) == {"base", "epoch_0"}
    for target, entry in results.items():
        assert entry["scorers"] == ["risk", "classification"]
        assert entry["samples"] == len(test_rows)
        for key in ("risk/accuracy", "risk/coverage", "classification/accuracy"):
            assert key in entry, (target, sorted(entry))
        log = read_eval_log(str(run_dir / entry["log"]))
        assert log.status == "success" and log.plan.config.logprobs is True
        sample = log.samples[0]
        assert sample.input[0].role == "system" and sample.input[0].text == "Survey data."
        assert sample.input[-1].text == test_rows[0]["input"] and sample.target == test_rows[0]["output"]
        assert {s.target for s in log.samples} <= {"0", "1"}
