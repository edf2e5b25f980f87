"""Task rows of a collaboration (``ck simulate``, the multi-turn eval task): what each simulated user wants done.

A task file is a JSON list of rows, a JSON mapping of split name to list (the project's instruct
format: ``{"train": [{"input": ..., "output": ...}], ...}``) or a JSONL file. Each row gives the task
text (``prompt_field``), an optional reference answer (``answer_field``) and an optional stable id
(``id_field``); every other field is kept as the task's ``metadata`` (e.g. unit tests for
``pass_rate``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cruijff_kit._base.errors import DataError, clip
from cruijff_kit._base.parsing import parse_json_text
from cruijff_kit.collab._config import TaskSource


@dataclass(frozen=True)
class Task:
    """One task: its id, the text the user wants solved, the reference answer and other fields."""

    id: str
    prompt: str
    answer: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The task as stored with each conversation."""
        return {"id": self.id, "prompt": self.prompt, "answer": self.answer, "metadata": self.metadata}


def _read_rows(path: Path, split: str | None, where: str) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(parse_json_text(line, file=str(path), line=n))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}: line {n} is not valid JSON ({exc.msg}).") from None
        return rows
    try:
        data = parse_json_text(text, file=str(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg}).") from None
    if isinstance(data, dict):
        name = split or "train"
        if name not in data or not isinstance(data[name], list):
            raise DataError(f"{path} holds the splits {clip(sorted(data))}, not a list named `{name}`. Set "
                            f"{where}.split to one of them.")
        return list(data[name])
    if isinstance(data, list):
        if split:
            raise DataError(f"{path} is one list of rows, so {where}.split ({split}) cannot apply. "
                            "Remove it.")
        return data
    raise DataError(f"{path}: expected a list of task rows or a mapping of split -> list.")


def load_tasks(source: TaskSource, path: Path, where: str = "simulate.tasks") -> list[Task]:
    """Read the tasks named by ``source`` from ``path`` (ids unique and stable across re-runs); errors name
    the options as ``where.<option>``."""
    rows = _read_rows(path, source.split, where)
    tasks: list[Task] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}: task row {i} is a {type(row).__name__}, not a mapping.")
        if source.prompt_field not in row or row[source.prompt_field] in (None, ""):
            raise DataError(f"{path}: task row {i} has no `{source.prompt_field}` ({where}.prompt_field). "
                            f"Its fields: {clip(sorted(row))}.")
        prompt = row[source.prompt_field]
        prompt = prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)
        if source.id_field and row.get(source.id_field) not in (None, ""):
            tid = str(row[source.id_field])
        else:
            tid = f"t{i:05d}-{hashlib.sha1(prompt.encode()).hexdigest()[:8]}"
        if tid in seen:
            raise DataError(f"{path}: task id `{tid}` appears twice (row {i}). Task ids must be unique, "
                            "since finished conversations are recognised by them on resume.")
        seen.add(tid)
        answer = row.get(source.answer_field) if source.answer_field else None
        if answer is not None and not isinstance(answer, str):
            answer = json.dumps(answer, ensure_ascii=False)
        skip = {source.prompt_field, source.answer_field, source.id_field}
        meta = {k: v for k, v in row.items() if k not in skip}
        tasks.append(Task(tid, prompt, answer, meta))
        if source.limit and len(tasks) >= source.limit:
            break
    if not tasks:
        raise DataError(f"{path} holds no task rows.")
    return tasks


def conversation_ids(task: Task, per_task: int) -> list[str]:
    """The conversation ids of a task: its id, or ``<id>#<k>`` when it has several conversations."""
    return [task.id] if per_task == 1 else [f"{task.id}#{k}" for k in range(per_task)]
