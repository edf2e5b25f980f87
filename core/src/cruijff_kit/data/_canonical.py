"""The canonical dataset form: row checks, prompt rendering, and building the ``DatasetDict``.

Every dataset plugin returns a ``datasets.DatasetDict`` whose rows have ``messages``, a list of
``{"role", "content"}`` with roles ``system``, ``user`` and ``assistant``. Two kinds of source rows
exist:

- **instruct** rows ``{"input": str, "output": str, ...}`` are rendered with the run's
  :class:`~cruijff_kit._api.kinds.Prompt` into ``[system?, user, assistant]`` messages, and keep their
  ``input`` and ``output`` columns (evaluators use ``output`` as the target);
- **chat** rows ``{"messages": [...], ...}`` are kept as they are (the prompt's ``system`` message is
  put first when a conversation has none).

Any other key of a row is kept as an extra column. Columns come in the order ``messages``, ``input``,
``output``, then extras in first-seen order.

A bad row raises :class:`~cruijff_kit._base.errors.DataError` naming the file, the split and the 0-based row
index. Nothing here imports ``datasets`` or ``pyarrow`` at module level.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cruijff_kit._api.kinds import Prompt
from cruijff_kit._base.errors import DataError, clip, closest

INSTRUCT, CHAT = "instruct", "chat"
#: Roles a message may have.
ROLES = ("system", "user", "assistant")
#: Columns the canonical form owns (extras may not use these names).
CANONICAL_COLUMNS = ("messages", "input", "output")


# --------------------------------------------------------------------------- message helpers
def shown(path: str | Path) -> str:
    """A path as shown in messages: relative to the working folder when inside it, else absolute."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(p)


def json_type(value: Any) -> str:
    """How a value is named in error messages, in JSON terms (``null``, ``a number (3)``...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` Did you mean `x`?`` when a choice is close to ``word``, else an empty string."""
    best = closest(word, choices)
    return f" Did you mean `{clip(best, 80)}`?" if best else ""


class RowError(DataError):
    """A bad row: ``FILE: split `S`, row N (line L): PROBLEM Fix the row or remove it.``"""

    def __init__(self, file: str | Path, split: str, index: int, problem: str, line: int | None = None) -> None:
        self.file, self.split, self.index, self.problem, self.line = shown(file), split, index, problem, line
        super().__init__(f"{self.file}: split `{split}`, {self.where()}: {problem} Fix the row or remove it.")

    def where(self) -> str:
        """``row N`` or ``row N (line L)``."""
        return f"row {self.index}" + (f" (line {self.line})" if self.line is not None else "")


#: Bad rows a message lists before saying how many more there are.
SHOWN_BAD_ROWS = 5


def row_error(file: str | Path, split: str, index: int, problem: str, *, line: int | None = None) -> DataError:
    """The error for one bad row: ``FILE: split `S`, row N: PROBLEM Fix the row or remove it.``"""
    return RowError(file, split, index, problem, line)


def rows_error(errors: list[RowError], total: int) -> DataError:
    """One error for several bad rows of a split: how many, and the first few with their problems."""
    if len(errors) == 1:
        return errors[0]
    first = errors[0]
    listed = "; ".join(f"{e.where()}: {e.problem}" for e in errors[:SHOWN_BAD_ROWS])
    more = f" ({len(errors) - SHOWN_BAD_ROWS} more not shown)" if len(errors) > SHOWN_BAD_ROWS else ""
    return DataError(f"{first.file}: split `{first.split}`: {len(errors)} of {total} rows are not valid "
                     f"(rows are 0-based, lines 1-based): {listed}{more}. Fix the rows or remove them.")


def checked_all(rows: Iterable[Any], check: Any, *, lines: list[int] | None = None) -> list[Any]:
    """``check(row, index, line)`` for every row, collecting RowErrors into one :func:`rows_error`."""
    out: list[Any] = []
    errors: list[RowError] = []
    total = 0
    for i, row in enumerate(rows):
        total += 1
        try:
            out.append(check(row, i, lines[i] if lines is not None else None))
        except RowError as exc:
            errors.append(exc)
    if errors:
        raise rows_error(errors, total)
    return out


# --------------------------------------------------------------------------- row checks
def row_kind(row: Any) -> str | None:
    """``chat`` for a row with ``messages``, ``instruct`` for one with ``input`` or ``output``."""
    if not isinstance(row, Mapping):
        return None
    if "messages" in row:
        return CHAT
    if "input" in row or "output" in row:
        return INSTRUCT
    return None


def check_instruct_row(row: Any, *, file: str | Path, split: str, index: int,
                       line: int | None = None) -> dict[str, Any]:
    """Check an ``{input, output}`` row; return it as a plain dict (extras kept)."""
    def bad(problem: str) -> DataError:
        return row_error(file, split, index, problem, line=line)

    if not isinstance(row, Mapping):
        raise bad(f"a row must be an object with `input` and `output`, got {json_type(row)}.")
    for key in ("input", "output"):
        if key not in row:
            hint = (" This row has `messages`: chat rows need the json-chat plugin (or a parquet "
                    "file without input/output columns).") if "messages" in row else ""
            raise bad(f"`{key}` is missing (keys: {clip(', '.join(map(str, row))) or 'none'}).{hint}")
        if not isinstance(row[key], str):
            raise bad(f"`{key}` must be a string, got {json_type(row[key])}.")
    return dict(row)


def check_chat_row(row: Any, *, file: str | Path, split: str, index: int,
                   line: int | None = None) -> dict[str, Any]:
    """Check a ``{messages: [{role, content}, ...]}`` row; return it with messages reduced to role/content."""
    def bad(problem: str) -> DataError:
        return row_error(file, split, index, problem, line=line)

    if not isinstance(row, Mapping):
        raise bad(f"a row must be an object with `messages`, got {json_type(row)}.")
    if "messages" not in row:
        hint = (" This row has `input`/`output`: instruct rows need the json-instruct plugin.")\
            if "input" in row or "output" in row else ""
        raise bad(f"`messages` is missing (keys: {clip(', '.join(map(str, row))) or 'none'}).{hint}")
    messages = row["messages"]
    if not isinstance(messages, list | tuple) or not messages:
        got = "an empty list" if isinstance(messages, list | tuple) else json_type(messages)
        raise bad(f"`messages` must be a non-empty list of {{role, content}} objects, got {got}.")
    clean = []
    for m, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise bad(f"message {m} must be an object with `role` and `content`, got {json_type(msg)}.")
        role = msg.get("role")
        if role not in ROLES:
            if "role" not in msg or role is None:
                raise bad(f"message {m} has no `role` (one of {', '.join(ROLES)}).")
            raise bad(f"message {m} has unknown role `{clip(role, 40)}`; roles are {', '.join(ROLES)}."
                      f"{suggest(str(role), ROLES)}")
        if "content" not in msg or msg["content"] is None:
            raise bad(f"message {m} ({role}) has no `content`.")
        if not isinstance(msg["content"], str):
            raise bad(f"message {m} ({role}): `content` must be a string, got {json_type(msg['content'])}.")
        if role == "system" and m > 0:
            raise bad(f"message {m} is a system turn, but a system turn may only come first.")
        clean.append({"role": role, "content": msg["content"]})
    out = dict(row)
    out["messages"] = clean
    return out


def check_row(row: Any, kind: str, *, file: str | Path, split: str, index: int,
              line: int | None = None) -> dict[str, Any]:
    """Check one row of the given kind (``instruct`` or ``chat``)."""
    check = check_instruct_row if kind == INSTRUCT else check_chat_row
    return check(row, file=file, split=split, index=index, line=line)


def check_rows(rows: Iterable[Any], kind: str, *, file: str | Path, split: str,
               lines: list[int] | None = None) -> list[dict[str, Any]]:
    """Check every row of a split (``lines``: their 1-based lines in a JSONL file); an empty split is an error.

    Several bad rows give one DataError listing the first few.
    """
    out = checked_all(rows, lambda r, i, n: check_row(r, kind, file=file, split=split, index=i, line=n),
                      lines=lines)
    if not out:
        raise empty_split(file, split)
    return out


def training_problem(messages: list[dict[str, str]]) -> str | None:
    """Why a checked conversation cannot train (no assistant turn, or a last turn not the assistant's)."""
    if not any(m["role"] == "assistant" for m in messages):
        return "the conversation has no assistant turn, so it has no answer to train on."
    if messages[-1]["role"] != "assistant":
        return (f"the last turn is the {messages[-1]['role']}'s, not the assistant's: training learns the last "
                "assistant turn, and nothing answers the turns after it. End the conversation with its answer.")
    return None


def check_training_rows(rows: list[dict[str, Any]], *, file: str | Path, split: str,
                        lines: list[int] | None = None) -> None:
    """Checked chat rows of a split a run trains on: every one must end with an assistant turn.

    Raises one DataError naming the file, the split and the first bad rows (with their lines in JSONL).
    """
    def check(row: dict[str, Any], index: int, line: int | None) -> None:
        problem = training_problem(row["messages"])
        if problem:
            raise RowError(file, split, index, problem, line)

    checked_all(rows, check, lines=lines)


def empty_split(file: str | Path, split: str) -> DataError:
    """The error for a split without rows."""
    return DataError(f"{shown(file)}: split `{split}` has no rows. Add rows to it, or remove the split "
                     "(validation and test are optional; a run that trains needs a non-empty train split).")


# --------------------------------------------------------------------------- rendering
def as_prompt(prompt: Any) -> Prompt:
    """Accept a :class:`Prompt`, a mapping of its fields, or None (the default prompt)."""
    if prompt is None:
        return Prompt()
    if isinstance(prompt, Prompt):
        return prompt
    if isinstance(prompt, Mapping):
        return Prompt.model_validate(dict(prompt))
    return Prompt(system=getattr(prompt, "system", None), template=getattr(prompt, "template", "{input}"))


def check_template(prompt: Prompt) -> None:
    """A template without ``{input}`` would give every row the same user message: refuse it."""
    if "{input}" not in prompt.template:
        raise DataError(f"prompt.template {prompt.template!r} has no `{{input}}`, so every instruct row would "
                        "get the same user message. Put `{input}` where the row's input belongs.")


def render_instruct(input: str, output: str, prompt: Prompt) -> list[dict[str, str]]:
    """``[system?, user, assistant]`` for one instruct row (``{input}`` replaced literally)."""
    messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
    messages.append({"role": "user", "content": prompt.template.replace("{input}", input)})
    messages.append({"role": "assistant", "content": output})
    return messages


def with_system(messages: list[dict[str, str]], prompt: Prompt) -> list[dict[str, str]]:
    """Put the prompt's system message first when the conversation has none."""
    if prompt.system and not any(m["role"] == "system" for m in messages):
        return [{"role": "system", "content": prompt.system}, *messages]
    return messages


def canonical_row(row: Mapping[str, Any], kind: str, prompt: Prompt) -> dict[str, Any]:
    """A checked row in canonical form: ``messages`` first, then ``input``/``output``, then extras."""
    if kind == INSTRUCT:
        out: dict[str, Any] = {"messages": render_instruct(row["input"], row["output"], prompt),
                               "input": row["input"], "output": row["output"]}
    else:
        out = {"messages": with_system(list(row["messages"]), prompt)}
    for key, value in row.items():
        if key not in out:
            out[key] = value
    return out


def canonical_rows(rows: Iterable[Mapping[str, Any]], kind: str, prompt: Any) -> list[dict[str, Any]]:
    """Render checked rows of one split into canonical form."""
    p = as_prompt(prompt)
    if kind == INSTRUCT:
        check_template(p)
    return [canonical_row(r, kind, p) for r in rows]


def split_target(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str | None]:
    """``(messages before the last assistant turn, that turn's content)``; ``(messages, None)`` if none.

    Evaluators use it to turn a canonical row into a prompt and a target.
    """
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "assistant":
            return list(messages[:i]), messages[i]["content"]
    return list(messages), None


# --------------------------------------------------------------------------- building
@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small rows (5x faster on large splits)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def uniform(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give every row every column (missing ones None), in first-seen column order."""
    columns: dict[str, None] = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, None)
    return [{c: row.get(c) for c in columns} for row in rows]


def to_dataset_dict(splits: Mapping[str, list[dict[str, Any]]], *, file: str | Path = "dataset") -> Any:
    """Turn ``{split: [canonical rows]}`` into a ``datasets.DatasetDict``."""
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


# --------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class SplitStats:
    """Sizes of one split, enough to compute its rendered characters for any prompt."""

    kind: str
    rows: int
    input_chars: int = 0
    output_chars: int = 0
    content_chars: int = 0
    without_system: int = 0

    def chars(self, prompt: Any = None) -> int:
        """Total characters of the message contents once rendered with ``prompt``."""
        p = as_prompt(prompt)
        system = len(p.system or "")
        if self.kind == INSTRUCT:
            k = p.template.count("{input}")
            per_row = system + len(p.template) - k * len("{input}")
            return self.rows * per_row + k * self.input_chars + self.output_chars
        return self.content_chars + self.without_system * system


def stats_of_rows(rows: list[Mapping[str, Any]], kind: str) -> SplitStats:
    """Sizes of checked rows."""
    if kind == INSTRUCT:
        return SplitStats(INSTRUCT, len(rows), sum(len(r["input"]) for r in rows),
                          sum(len(r["output"]) for r in rows))
    content = sum(len(m["content"]) for r in rows for m in r["messages"])
    without = sum(1 for r in rows if not any(m["role"] == "system" for m in r["messages"]))
    return SplitStats(CHAT, len(rows), content_chars=content, without_system=without)


# --------------------------------------------------------------------------- splits
def map_splits(available: Iterable[str], mapping: Mapping[str, str] | None, *, source: str | Path
               ) -> dict[str, str]:
    """Our split name -> the source's split name.

    Every source split keeps its name unless ``mapping`` (ours -> theirs) renames it; a mapped name
    the source lacks is an error.
    """
    available = list(available)
    mapping = dict(mapping or {})
    for ours, theirs in mapping.items():
        if theirs not in available:
            raise DataError(f"{shown(source)} has no split `{theirs}` (named in dataset.splits.{ours}). "
                            f"Its splits: {clip(', '.join(f'`{s}`' for s in available)) or 'none'}."
                            f"{suggest(theirs, available)}")
    out = dict(mapping)
    for name in available:
        if name not in mapping.values() and name not in out:
            out[name] = name
    return out


def limit_for(limit: int | Mapping[str, int] | None, split: str) -> int | None:
    """The row limit of one of our splits (``limit`` is one number for all, or per split)."""
    if limit is None or isinstance(limit, int):
        return limit
    return limit.get(split)


def check_run_splits(run: Any, splits: Iterable[str], *, source: str | Path) -> None:
    """Plan-time check that the splits a run reads exist: ``train`` when it trains, each eval's split (an eval
    that names its own ``tasks`` file reads none)."""
    splits = list(splits)
    listed = clip(", ".join(f"`{s}`" for s in splits)) or "none"
    spec = run.spec
    if spec.get("train") is not None and "train" not in splits:
        raise DataError(f"the run trains, but {shown(source)} has no `train` split (its splits: {listed}). "
                        "Add one, or map a split to it with dataset.splits (e.g. `splits: {train: NAME}`).")
    for i, ev in enumerate(spec.get("eval") or []):
        split = ev.get("split", "test")
        if ev.get("tasks") is not None:  # an eval with its own task file (e.g. task: collab) reads no split
            continue
        if split not in splits:
            raise DataError(f"eval[{i}] reads split `{split}`, which {shown(source)} does not have (its "
                            f"splits: {listed}).{suggest(split, splits)} Set eval[{i}].split, or map a "
                            f"split to it with dataset.splits.")
