"""``ck data inspect FILE``: split sizes, answer balance, lengths (characters or tokens) and example rows.

Reads every format the core reads (a JSON instruct file, a folder of chat files, a parquet folder, a
``save_to_disk`` folder). Lengths are in tokens when a tokenizer folder is given (``transformers`` is
imported only then), else in characters. A ``.meta.json`` sidecar beside the file is summarised too.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cruijff_kit._api.kinds import Prompt
from cruijff_kit._base.errors import DataError
from cruijff_kit.data import _provenance as provenance
from cruijff_kit.data._canonical import INSTRUCT, canonical_row, shown, split_target

#: More distinct answers than this: the answers are free text, not classes.
MAX_CLASSES = 20


def length_stats(values: list[int]) -> dict[str, float]:
    """min, mean, median, p95 and max of a list of lengths (empty list: zeros)."""
    if not values:
        return {"min": 0, "mean": 0.0, "median": 0.0, "p95": 0, "max": 0}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, max(0, int(round(0.95 * len(ordered))) - 1))]
    return {"min": ordered[0], "mean": round(statistics.fmean(ordered), 2),
            "median": float(statistics.median(ordered)), "p95": p95, "max": ordered[-1]}


def load_tokenizer(path: str) -> Any:
    """A tokenizer from a local model or tokenizer folder (never the network)."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DataError("token counts need the `transformers` package; install it, or leave out --tokenizer "
                        "to count characters.") from None
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise DataError(f"{path}: cannot load a tokenizer from it ({type(exc).__name__}: {str(exc)[:200]}). Give "
                        "the folder of a local model or tokenizer (with tokenizer.json or tokenizer_config.json)."
                        ) from None


def counter(tokenizer: Any) -> tuple[str, Callable[[str], int], Callable[[list[dict[str, str]]], int]]:
    """(unit, length of a text, length of a conversation) in tokens or characters."""
    if tokenizer is None:
        return "chars", len, lambda msgs: sum(len(m["content"]) for m in msgs)

    def text_len(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def conv_len(msgs: list[dict[str, str]]) -> int:
        if getattr(tokenizer, "chat_template", None):
            try:
                ids = tokenizer.apply_chat_template(msgs, tokenize=True)
                if isinstance(ids, dict) or hasattr(ids, "keys"):
                    ids = ids["input_ids"]
                return len(ids)
            except Exception:
                pass
        return sum(text_len(m["content"]) for m in msgs)

    return "tokens", text_len, conv_len


def _clip(text: str, n: int = 300) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def inspect_dataset(path: str | Path, *, tokenizer: str | None = None, examples: int = 2,
                    prompt: Prompt | None = None) -> dict[str, Any]:
    """A report of a dataset file or folder as a JSON-able dict."""
    from cruijff_kit.data._readers import open_source

    p = Path(path)
    source = open_source(p)
    source.ensure()
    tok = load_tokenizer(tokenizer) if tokenizer else None
    unit, text_len, conv_len = counter(tok)
    prompt = prompt or Prompt()
    report: dict[str, Any] = {"path": str(p), "format": type(source).__name__, "unit": unit,
                              "tokenizer": tokenizer, "splits": {}}
    meta = provenance.read_meta(p) if p.is_file() else None
    if meta is not None:
        report["meta"] = {k: meta.get(k) for k in ("key", "generator", "seed", "source", "privacy", "system_prompt")
                          if k in meta}
    for split in source.split_names():
        part = source.rows(split)
        rendered = [canonical_row(r, part.kind, prompt) for r in part.rows]
        answers = [split_target(r["messages"])[1] or "" for r in rendered]
        prompts = [split_target(r["messages"])[0] for r in rendered]
        counts = Counter(answers)
        info: dict[str, Any] = {"rows": len(part.rows), "kind": part.kind}
        if len(counts) <= MAX_CLASSES:
            info["classes"] = {a: {"rows": n, "share": round(n / len(answers), 4)}
                               for a, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}
        else:
            info["distinct_answers"] = len(counts)
        info["lengths"] = {
            "prompt": length_stats([conv_len(m) if m else 0 for m in prompts]),
            "answer": length_stats([text_len(a) for a in answers]),
            "conversation": length_stats([conv_len(r["messages"]) for r in rendered]),
        }
        picks = []
        for r in part.rows[:examples]:
            if part.kind == INSTRUCT:
                picks.append({"input": _clip(r["input"]), "output": _clip(r["output"])})
            else:
                picks.append({"messages": [{"role": m["role"], "content": _clip(m["content"], 200)}
                                           for m in r["messages"]]})
        info["examples"] = picks
        report["splits"][split] = info
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as readable text."""
    unit = report["unit"]
    lines = [f"{shown(report['path'])} ({report['format']}; lengths in {unit}"
             + (f" of {report['tokenizer']}" if report.get("tokenizer") else "") + ")"]
    meta = report.get("meta")
    if meta:
        gen = meta.get("generator") or {}
        src = meta.get("source") or {}
        lines.append(f"  generated by {gen.get('name')} v{gen.get('version')}, key {meta.get('key')}, seed "
                     f"{meta.get('seed')}" + (f", from {src.get('path')} (sha256 {str(src.get('sha256'))[:12]})"
                                             if src else ""))
        privacy = meta.get("privacy")
        if privacy is not None:
            lines.append(f"  rows left this machine: {'yes' if privacy.get('rows_left_machine') else 'no'}")
    for split, info in report["splits"].items():
        lines.append("")
        lines.append(f"[{split}] {info['rows']} rows ({info['kind']})")
        if "classes" in info:
            shown_classes = ", ".join(f"{a!r}: {c['rows']} ({100 * c['share']:.1f}%)" for a, c in info["classes"].items())
            lines.append(f"  answers: {shown_classes}")
        else:
            lines.append(f"  answers: {info['distinct_answers']} distinct (free text)")
        for what, st in info["lengths"].items():
            lines.append(f"  {what:<12} {unit}: min {st['min']}, mean {st['mean']}, median {st['median']}, "
                         f"p95 {st['p95']}, max {st['max']}")
        for i, ex in enumerate(info["examples"]):
            if "input" in ex:
                lines.append(f"  example {i}: input {json.dumps(ex['input'])} -> output {json.dumps(ex['output'])}")
            else:
                turns = " | ".join(f"{m['role']}: {json.dumps(m['content'])}" for m in ex["messages"])
                lines.append(f"  example {i}: {turns}")
    return "\n".join(lines)

