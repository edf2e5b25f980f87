"""Many processes appending conversations to one JSONL file at once: every line whole, none lost."""

from __future__ import annotations

import json
import subprocess
import sys

from cruijff_kit._base.fileio import read_jsonl

WRITER = """
import sys
from pathlib import Path
from cruijff_kit._base.fileio import append_jsonl
path, me, rows = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for i in range(rows):
    # sizes from a few bytes to ~200 KB, so large rows are in flight while small ones land
    size = (i * 7919 + me * 104729) % 200_000 if i % 10 == 0 else (i * 31 + me) % 300
    text = chr(ord("a") + me) * size
    append_jsonl(path, {"conv_id": f"{me}-{i}", "writer": me, "i": i, "size": size,
                        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": text}]})
"""


def test_concurrent_appends_keep_every_line_whole(tmp_path):
    path = tmp_path / "conversations.jsonl"
    writers, rows = 8, 150
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w), str(rows)])
             for w in range(writers)]
    assert [p.wait(timeout=300) for p in procs] == [0] * writers

    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""  # ends with a newline: no torn last line
    parsed = [json.loads(line) for line in lines[:-1]]  # every line parses on its own
    assert len(parsed) == writers * rows
    assert sorted((r["writer"], r["i"]) for r in parsed) == [(w, i) for w in range(writers) for i in range(rows)]
    for r in parsed:  # no interleaving inside a row: the content is one writer's letter, full length
        content = r["messages"][1]["content"]
        assert len(content) == r["size"] and set(content) <= {chr(ord("a") + r["writer"])}
    # each writer's rows appear in its own order
    for w in range(writers):
        assert [r["i"] for r in parsed if r["writer"] == w] == list(range(rows))
    assert len(read_jsonl(path)) == writers * rows
