"""A frozen copy of the `multiturn` dataset's conversion as it was before it was vectorised.

The correctness test (``test_multiturn_conversion_equal.py``) builds rows with this copy and with the
plugin and asserts that they are identical. Do not change it to follow the plugin: it is the reference.
It holds the plugin's row-by-row reader and builder (``rows.py`` and ``build.py``), the ``rows()`` logic
of ``MultiturnDataset`` and the ``DatasetDict`` building of ``cruijff_kit.data.to_dataset_dict``.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from cruijff_kit import DataError, did_you_mean
from cruijff_kit.data import ArrowDir, ParquetFolder, parse_json, parse_jsonl, read_text, shown
from cruijff_kit.files import parse_json_text, read_jsonl

#: Fields every CollabLLM-form row must have.
REQUIRED = ("prompt", "completion", "conv_id", "turn_id")
ROLES = ("system", "user", "assistant")


def is_simulation_row(row: Any) -> bool:
    """True for a conversation row written by ``ck simulate``."""
    return isinstance(row, dict) and "messages" in row and "conv_id" in row and "prompt" not in row


def _clean(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]


def from_simulation(conv: dict[str, Any]) -> list[dict[str, Any]]:
    """The candidate rows of one simulated conversation."""
    messages = conv["messages"]
    system = conv.get("system")
    head = [{"role": "system", "content": system}] if system else []
    task = conv.get("task") or {}
    extra = {"single_turn_prompt": task.get("prompt"), "single_turn_completion": task.get("answer"),
             "single_turn_metadata": task.get("metadata")}
    out: list[dict[str, Any]] = []
    turns = conv.get("turns")
    if turns:
        for turn in turns:
            prompt = head + _clean(messages[: turn["message_index"]])
            for k, cand in enumerate(turn["candidates"]):
                out.append({"prompt": prompt, "completion": cand["completion"], "conv_id": str(conv["conv_id"]),
                            "turn_id": int(turn["turn_id"]), "score": cand.get("score"),
                            "rewards": cand.get("rewards") or {}, "candidate": k,
                            "chosen": k == turn.get("chosen"), **extra})
        return out
    turn_id = 0
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            out.append({"prompt": head + _clean(messages[:i]), "completion": m["content"],
                        "conv_id": str(conv["conv_id"]), "turn_id": int(m.get("turn_id", turn_id)),
                        "score": None, "rewards": {}, "candidate": 0, "chosen": True, **extra})
            turn_id += 1
    return out


def check_candidate(row: Any, *, source: Path, index: int) -> dict[str, Any]:
    """Check one CollabLLM-form row; return it with ``conv_id`` as text and messages as role/content."""
    where = f"{shown(source)}: row {index}"
    if not isinstance(row, dict):
        raise DataError(f"{where} is not an object.")
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        raise DataError(f"{where} has no `{missing[0]}` (its fields: {', '.join(sorted(row))}). Rows need "
                        f"{', '.join(REQUIRED)} and usually score; or give the JSONL that `ck simulate` writes.")
    prompt = row["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not all(isinstance(m, dict) and m.get("role") in ROLES
                                               and isinstance(m.get("content"), str) for m in prompt):
        raise DataError(f"{where}: `prompt` must be a list of {{role, content}} messages (roles "
                        f"{', '.join(ROLES)}).")
    if not isinstance(row["completion"], str):
        raise DataError(f"{where}: `completion` must be text.")
    score = row.get("score")
    if score is not None and not isinstance(score, int | float):
        raise DataError(f"{where}: `score` must be a number or null.")
    out = dict(row)
    out["prompt"] = _clean(prompt)
    out["conv_id"] = str(row["conv_id"])
    out["turn_id"] = int(row["turn_id"])
    return out


def _read_file_rows(path: Path) -> list[Any]:
    text = read_text(path)
    if path.suffix == ".jsonl":
        return parse_jsonl(path, text)[0]
    value = parse_json(path, text)
    if isinstance(value, dict):
        value = [r for rows in value.values() if isinstance(rows, list) for r in rows]
    if not isinstance(value, list):
        raise DataError(f"{shown(path)}: expected a list of rows.")
    return value


def read_candidates(p: Path, *, source_split: str | None = None, hub_id: str | None = None
                    ) -> list[dict[str, Any]]:
    """Every candidate row of a source (see the module docstring); ``hub_id`` when ``p`` is missing."""
    if not p.exists():
        if hub_id:
            return _hub_rows(hub_id, source_split)
        raise DataError(f"{shown(p)} does not exist. Run `ck simulate SPEC` first, or check dataset.path "
                        "(relative to the spec file's folder).")
    if p.is_file():
        if p.suffix == ".jsonl":
            raw: list[Any] = read_jsonl(p)  # tolerates a torn last line left by an interrupted simulation
        elif p.suffix == ".json":
            raw = _read_file_rows(p)
        else:
            raise DataError(f"{shown(p)}: expected a .jsonl or .json file, a parquet folder or a folder "
                            "written by save_to_disk.")
    elif ArrowDir.recognises(p) or any(p.glob("*.parquet")):
        src: ArrowDir | ParquetFolder = ArrowDir(p) if ArrowDir.recognises(p) else ParquetFolder(p)
        splits = src.split_names()
        names = [source_split] if source_split else splits
        for s in names:
            if s not in splits:
                raise DataError(f"{shown(p)} has no split `{s}` (its splits: {', '.join(splits)}). "
                                "Fix dataset.source_split.")
        raw = [r for s in names for r in src.table(s).to_pylist()]
    else:
        raise DataError(f"{shown(p)} is a folder without parquet files and was not written by save_to_disk.")
    return to_candidates(raw, p)


def to_candidates(raw: list[Any], source: Path) -> list[dict[str, Any]]:
    """Simulation conversations or CollabLLM rows -> checked candidate rows."""
    out: list[dict[str, Any]] = []
    for i, row in enumerate(raw):
        if is_simulation_row(row):
            out.extend(from_simulation(row))
        else:
            out.append(check_candidate(row, source=source, index=i))
    if not out:
        raise DataError(f"{shown(source)} holds no conversations yet. Run `ck simulate SPEC` to fill it.")
    return out


def _hub_rows(name: str, split: str | None) -> list[dict[str, Any]]:
    try:
        import datasets

        loaded = datasets.load_dataset(name, split=split)
    except Exception as exc:
        raise DataError(f"`{name}` is neither a local file or folder nor a dataset the hub gave "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Check "
                        "dataset.path; offline, save the dataset with save_to_disk and point at that folder."
                        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        rows = [r for s in loaded.values() for r in s.to_list()]
    else:
        rows = loaded.to_list()
    return to_candidates(rows, Path(name))


def get_path(row: dict[str, Any], dotted: str) -> Any:
    """``row["rewards"]["accuracy"]`` for ``rewards.accuracy``; None when any part is missing.

    A JSON-encoded mapping along the way (as some datasets store ``rewards``) is decoded.
    """
    cur: Any = row
    for part in dotted.split("."):
        if isinstance(cur, str) and cur.startswith("{"):
            try:
                cur = parse_json_text(cur, file=f"field `{part}`")
            except (json.JSONDecodeError, DataError):  # not JSON, a key twice, nested too deep: no value
                return None
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def paths_in(rows: list[dict[str, Any]], limit: int = 50) -> list[str]:
    """Dotted paths to numbers in the first rows (for did-you-mean on a mistyped metric)."""
    found: dict[str, None] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, int | float):
            found.setdefault(prefix, None)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)

    for row in rows[:limit]:
        walk("", {k: v for k, v in row.items() if k not in ("prompt", "completion")})
    return list(found)


def apply_system(messages: list[dict[str, str]], system: str | None) -> list[dict[str, str]]:
    """``system`` replaces the conversation's system message (or is put first); None keeps the data's."""
    if system is None:
        return list(messages)
    rest = [m for m in messages if m["role"] != "system"]
    return [{"role": "system", "content": system}, *rest]


def _score(row: dict[str, Any]) -> float:
    s = row.get("score")
    return float(s) if isinstance(s, int | float) and not (isinstance(s, float) and math.isnan(s)) else -math.inf


def keep_mask(rows: list[dict[str, Any]], threshold: float | None, field: str) -> list[bool]:
    """Which candidates pass the threshold (all when ``threshold`` is None)."""
    if threshold is None:
        return [True] * len(rows)
    values = [get_path(r, field) for r in rows]
    if all(v is None for v in values):
        known = paths_in(rows)
        raise DataError(f"dataset.threshold_on is `{field}`, but no candidate has a number there. "
                        f"{did_you_mean(field, known) if known else 'The candidates carry no scores: simulate with scoring, or drop dataset.threshold.'}")
    return [isinstance(v, int | float) and not isinstance(v, bool) and v >= threshold for v in values]


def group_turns(rows: list[dict[str, Any]], mask: list[bool]) -> dict[str, dict[int, list[tuple[dict[str, Any], bool]]]]:
    """conv_id -> turn_id -> [(candidate, kept)], conversations and turns in first-seen order."""
    out: dict[str, dict[int, list[tuple[dict[str, Any], bool]]]] = defaultdict(lambda: defaultdict(list))
    for row, keep in zip(rows, mask, strict=True):
        out[row["conv_id"]][row["turn_id"]].append((row, keep))
    return out


def best_of(cands: list[tuple[dict[str, Any], bool]]) -> dict[str, Any] | None:
    """The highest-scoring kept candidate (the first on ties), or None."""
    kept = [c for c, k in cands if k]
    return max(kept, key=_score) if kept else None


def conversations(rows: list[dict[str, Any]], mask: list[bool], system: str | None) -> list[dict[str, Any]]:
    """One greedy-best conversation per conv_id (see the module docstring)."""
    out = []
    for conv_id, turns in group_turns(rows, mask).items():
        chain: list[dict[str, Any]] = []
        for turn_id in sorted(turns):
            best = best_of(turns[turn_id])
            if best is None:
                break
            chain.append(best)
        if not chain:
            continue
        last = chain[-1]
        messages = apply_system([*last["prompt"], {"role": "assistant", "content": last["completion"]}], system)
        scores = [_score(c) for c in chain if _score(c) != -math.inf]
        out.append({"messages": messages, "conv_id": conv_id, "turns": len(chain),
                    "score": sum(scores) / len(scores) if scores else None})
    return out


def make_pairs(rows: list[dict[str, Any]], mask: list[bool], system: str | None, min_gap: float) -> list[dict[str, Any]]:
    """Preference pairs (best kept vs. lowest-scoring candidate per turn)."""
    out = []
    for conv_id, turns in group_turns(rows, mask).items():
        for turn_id in sorted(turns):
            cands = turns[turn_id]
            chosen = best_of(cands)
            if chosen is None or len(cands) < 2:
                continue
            rejected = min((c for c, _ in cands), key=_score)
            gap = _score(chosen) - _score(rejected)
            if rejected is chosen or chosen["completion"] == rejected["completion"] or not gap >= min_gap:
                continue
            prompt = apply_system(chosen["prompt"], system)
            answer = {"role": "assistant", "content": chosen["completion"]}
            out.append({"prompt": prompt, "chosen": [answer],
                        "rejected": [{"role": "assistant", "content": rejected["completion"]}],
                        "messages": [*prompt, answer], "conv_id": conv_id, "turn_id": turn_id,
                        "score_chosen": _score(chosen), "score_rejected": _score(rejected)})
    return out


def split_rows(rows: list[dict[str, Any]], fractions: dict[str, float], seed: int) -> dict[str, list[dict[str, Any]]]:
    """Split by ``conv_id`` in the given fractions (the last split takes the rounding rest)."""
    ids = sorted({r["conv_id"] for r in rows})
    random.Random(seed).shuffle(ids)
    names = [n for n, f in fractions.items() if f > 0]
    where: dict[str, str] = {}
    start = 0
    for i, name in enumerate(names):
        n = len(ids) - start if i == len(names) - 1 else round(len(ids) * fractions[name])
        for cid in ids[start:start + n]:
            where[cid] = name
        start += n
    out: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in rows:
        out[where[r["conv_id"]]].append(r)
    return {n: rs for n, rs in out.items() if rs}


def build_splits(path: Path, *, threshold: float | None = None, threshold_on: str = "score", pairs: bool = False,
                 min_gap: float = 0.0, splits: dict[str, float] | None = None, seed: int = 42,
                 system: str | None = None, source_split: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """``MultiturnDataset.rows(system)`` as it was: training rows per split."""
    splits = splits if splits is not None else {"train": 0.8, "validation": 0.1, "test": 0.1}
    cands = read_candidates(path, source_split=source_split)
    mask = keep_mask(cands, threshold, threshold_on)
    if pairs:
        built = make_pairs(cands, mask, system, min_gap)
        what = ("preference pairs (no turn has two candidates whose scores differ by at least "
                f"dataset.min_gap = {min_gap}")
    else:
        built = conversations(cands, mask, system)
        what = "conversations (no conversation's first turn has a candidate above the threshold"
    if not built:
        raise DataError(f"{shown(path)}: no {what}). Lower dataset.threshold, or simulate with "
                        "scoring and more candidates.")
    return split_rows(built, splits, seed)


def uniform(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give every row every column (missing ones None), in first-seen column order."""
    columns: dict[str, None] = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, None)
    return [{c: row.get(c) for c in columns} for row in rows]


def to_dataset_dict(splits: dict[str, list[dict[str, Any]]], *, file: str | Path = "dataset") -> Any:
    """``{split: rows}`` -> ``datasets.DatasetDict``, as ``cruijff_kit.data.to_dataset_dict`` did."""
    import datasets
    import pyarrow as pa

    out = {}
    for split, rows in splits.items():
        try:
            out[split] = datasets.Dataset.from_list(uniform(rows))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise DataError(f"{shown(file)}: split `{split}`: the rows' extra columns do not have one type "
                            f"per column ({exc}). Give each column the same type in every row.") from None
    return datasets.DatasetDict(out)


def load(path: Path, **options: Any) -> Any:
    """``MultiturnDataset.load()`` as it was: the ``DatasetDict`` (``system`` as the run's system prompt)."""
    return to_dataset_dict(build_splits(path, **options), file=path)
