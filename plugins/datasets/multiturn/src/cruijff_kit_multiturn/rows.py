"""Reading scored conversations into candidate rows (the CollabLLM row form).

A candidate row is one response at one assistant turn of one conversation::

    {"prompt": [messages before the turn], "completion": str, "conv_id": str, "turn_id": int,
     "score": float | None, ...}   # plus e.g. rewards, single_turn_prompt/_completion/_metadata

Sources:

* the JSONL that ``ck simulate`` writes (one conversation per line, candidates under ``turns``);
  an unscored simulation gives one candidate per turn with ``score: null``;
* rows already in the CollabLLM form, from a ``.jsonl``/``.json`` file, a parquet folder, a folder
  written by ``save_to_disk``, or (where the hub is reachable) a hub dataset id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cruijff_kit import DataError
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
    if (not isinstance(row, dict) or any(k not in row for k in REQUIRED) or not isinstance(row["completion"], str)
            or not _messages_ok(row["prompt"])
            or (row.get("score") is not None and not isinstance(row.get("score"), int | float))):
        bad_candidate(row, source=source, index=index)
    prompt = row["prompt"]
    out = dict(row)
    out["prompt"] = _clean([{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt)
    out["conv_id"] = str(row["conv_id"])
    try:
        out["turn_id"] = int(row["turn_id"])
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{shown(source)}: row {index}: `turn_id` must be a whole number (it is "
                        f"{repr(row['turn_id'])[:60]}).") from None
    return out


def _messages_ok(prompt: Any) -> bool:
    return isinstance(prompt, str) or (isinstance(prompt, list) and all(
        isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in prompt))


def bad_candidate(row: Any, *, source: Path, index: int) -> None:
    """Raise the error for a bad row, naming the file, the row and the field (built only for a bad row)."""
    where = f"{shown(source)}: row {index}"
    if not isinstance(row, dict):
        raise DataError(f"{where} is not an object.")
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        raise DataError(f"{where} has no `{missing[0]}` (its fields: {', '.join(sorted(row))}). Rows need "
                        f"{', '.join(REQUIRED)} and usually score; or give the JSONL that `ck simulate` writes.")
    if not _messages_ok(row["prompt"]):
        raise DataError(f"{where}: `prompt` must be a list of {{role, content}} messages (roles "
                        f"{', '.join(ROLES)}).")
    if not isinstance(row["completion"], str):
        raise DataError(f"{where}: `completion` must be text.")
    raise DataError(f"{where}: `score` must be a number or null.")


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
