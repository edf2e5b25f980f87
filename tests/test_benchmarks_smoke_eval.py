"""benchmarks/eval_throughput.py runs at its smallest size and prints every number it promises."""

from __future__ import annotations

import re

import pytest
from test_benchmarks_smoke import positive, run, table

pytestmark = pytest.mark.integration


def test_eval_throughput() -> None:
    out = run("eval_throughput.py", "--samples", "4", "--batch-size", "2", "--max-tokens", "2", "--repeats", "1",
              timeout=300)
    rows = table(out)
    assert set(rows) == {"plain generate", "eval stage"}, out
    for cells in rows.values():
        assert len(cells) == 3
        for cell in cells:
            positive(cell)
    for name in ("median samples/s", "best samples/s", "CPU per sample"):
        match = re.search(rf"ratio eval/plain \({re.escape(name)}\): (\S+)", out)
        assert match, f"no ratio ({name}) in:\n{out}"
        positive(match.group(1))
    inside = re.search(r"eval time inside model.generate: (\S+) %", out)
    assert inside and 0 < float(inside.group(1)) <= 100, out
    agree = re.search(r"completions equal to plain: (\d+)/(\d+)", out)
    assert agree and agree.group(2) == "4", out
