"""`ck embed` and `ck score-options` on a run folder with a real tiny adapter."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from inference_fixtures import make_run_folder


@pytest.fixture(scope="module")
def run_dir(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run_folder(tiny_llama, tmp_path_factory.mktemp("inference-cli"))


def _ck(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cruijff_kit", *args], cwd=cwd, capture_output=True, text=True)


def test_embed_writes_parquet_with_ids(run_dir: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    rows = [{"id": f"s{i}", "input": w} for i, w in enumerate(["dog", "house", "kite"])]
    (tmp_path / "texts.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    res = _ck("embed", str(run_dir), "texts.jsonl", "emb.parquet", "--layer", "0", "--layer", "-1",
              "--pooling", "last", "--device", "cpu", "--batch-size", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    table = pq.read_table(tmp_path / "emb.parquet")
    assert table.column_names == ["id", "layer_0", "layer_-1"]
    assert table.column("id").to_pylist() == ["s0", "s1", "s2"]
    assert len(table.column("layer_-1")[0].as_py()) == 64  # the tiny model's hidden size
    assert table.schema.metadata[b"pooling"] == b"last"


def test_score_options_writes_probabilities(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "prompts.txt").write_text("dog\nhouse\n")
    res = _ck("score-options", str(run_dir), "prompts.txt", "--option", "the", "--option", "dog",
              "--out", "scores.jsonl", "--device", "cpu", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(x) for x in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1]
    for r in rows:
        assert math.isclose(sum(r["probabilities"].values()), 1.0, rel_tol=1e-6)
        assert r["predicted"] in ("the", "dog") and 0 < r["mass"] <= 1


def test_bad_input_is_explained(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text(json.dumps({"text": "dog"}))
    res = _ck("score-options", str(run_dir), "rows.jsonl", "--option", "a", cwd=tmp_path)
    assert res.returncode == 2 and "no text field 'input'" in res.stderr and "Traceback" not in res.stderr
    res = _ck("embed", str(run_dir), "rows.jsonl", "e.parquet", "--epoch", "4", "--field", "text", cwd=tmp_path)
    assert res.returncode == 2 and "epoch 4" in res.stderr
