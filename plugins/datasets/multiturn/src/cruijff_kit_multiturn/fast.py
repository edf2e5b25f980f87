"""The column-wise path: CollabLLM rows -> greedy-best SFT conversations with pyarrow and numpy.

It gives the rows :mod:`cruijff_kit_multiturn.build` gives (same rows, order, splits, column types)
without a Python object per candidate: the source is read into one Arrow table, every check runs on
whole columns, and the build is a few sorts and gathers. It takes only what it can prove clean; anything
else (a bad row, a torn line, a ``ck simulate`` file, a value whose Python reading differs from Arrow's)
returns None and the caller runs the row-by-row path, which reads the same rows or raises the error
that names the file, the row and the field.
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cruijff_kit.data import ArrowDir, ParquetFolder
from cruijff_kit_multiturn.rows import REQUIRED, ROLES, get_path

#: Bytes that Python's ``str.splitlines`` treats as line ends inside a JSON line (a raw carriage return,
#: NEL, LINE/PARAGRAPH SEPARATOR): the row-by-row reader splits there, so such files take that path.
_SPLITTERS = (b"\r", b"\xc2\x85", b"\xe2\x80\xa8", b"\xe2\x80\xa9")
#: Nesting the row-by-row reader refuses is deeper than this (``MAX_DEPTH`` = 100); keep a margin.
_MAX_TYPE_DEPTH = 90
_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])


# --------------------------------------------------------------------------- reading
def _depth(t: pa.DataType) -> int:
    if pa.types.is_struct(t):
        return 1 + max((_depth(t.field(i).type) for i in range(t.num_fields)), default=0)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return 1 + _depth(t.value_type)
    return 0


def _scalar_type(value: Any) -> pa.DataType | None:
    """The column type to declare for a top-level field of the first row (None: let Arrow infer it).

    Declaring text as text spares the reader trying every string as a timestamp; a later row whose
    value does not fit makes the read fail, and the row-by-row reader reads the file.
    """
    if isinstance(value, str):
        return pa.string()
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int | float):
        return pa.float64()
    return None


def read_jsonl_table(path: Path) -> pa.Table | None:
    """A CollabLLM-form ``.jsonl`` file as one table, or None when it needs the row-by-row reader."""
    import pyarrow.json as pj

    data = path.read_bytes()
    if not data.startswith(b"{") or b"\r" in data:
        return None  # a byte-order mark, a blank or indented first line, carriage returns
    if not data.isascii() and any(s in data for s in _SPLITTERS[1:]):
        return None  # line ends Python splits at inside a string
    lines = data.count(b"\n") + (not data.endswith(b"\n"))
    if data.count(b"\n{") != lines - 1:
        return None  # a blank, indented or non-object line: the row-by-row reader reads or refuses it
    try:
        first = json.loads(data[: data.find(b"\n")] if b"\n" in data else data)
    except ValueError:
        return None
    if not isinstance(first, dict):
        return None
    conv = first.get("conv_id")
    conv_type = pa.string() if isinstance(conv, str) else pa.int64() if type(conv) is int else None
    if conv_type is None:
        return None
    fields = [("prompt", pa.list_(_MESSAGE)), ("completion", pa.string()), ("conv_id", conv_type),
              ("turn_id", pa.int64()), ("score", pa.float64())]
    known = {name for name, _ in fields}
    fields += [(k, t) for k, v in first.items() if k not in known and (t := _scalar_type(v)) is not None]
    try:
        table = pj.read_json(pa.BufferReader(data), read_options=pj.ReadOptions(block_size=32 << 20),
                             parse_options=pj.ParseOptions(explicit_schema=pa.schema(fields),
                                                           newlines_in_values=False,
                                                           unexpected_field_behavior="infer"))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None  # a torn or bad line, a key twice, types that change: the row-by-row reader says which
    if table.num_rows != lines:
        return None  # a line that held two values: the row-by-row reader skips it
    return table


def read_arrow_table(p: Path, source_split: str | None) -> pa.Table | None:
    """The rows of a parquet or ``save_to_disk`` folder as one table (None: the row-by-row reader)."""
    src: ArrowDir | ParquetFolder = ArrowDir(p) if ArrowDir.recognises(p) else ParquetFolder(p)
    splits = src.split_names()
    names = [source_split] if source_split else splits
    if any(s not in splits for s in names):
        return None
    tables = [src.table(s) for s in names]
    try:
        table = pa.concat_tables(tables, promote_options="none") if len(tables) > 1 else tables[0]
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    return table


def _list_starts(prompt: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, where its messages start in ``pc.list_flatten(prompt)`` and how many it has."""
    starts, lengths, base = [], [], 0
    for chunk in prompt.chunks:
        offsets = chunk.offsets.to_numpy().astype(np.int64)
        starts.append(offsets[:-1] - offsets[0] + base)
        lengths.append(np.diff(offsets))
        base += int(offsets[-1] - offsets[0])
    if not starts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(starts), np.concatenate(lengths)


def candidates(table: pa.Table) -> dict[str, Any] | None:
    """Checked candidate columns of a table, or None when a row is bad or unusual.

    Returns numpy columns ``conv`` (codes in first-seen order), ``turn``, ``score`` (null and NaN as
    -inf, as the row-by-row builder ranks them), ``start``/``length`` (each prompt's messages in
    ``role``/``content``, every message of every prompt), and Arrow columns ``conv_names``,
    ``completion``, ``content``.
    """
    names = table.column_names
    if table.num_rows == 0 or any(k not in names for k in REQUIRED) or "messages" in names:
        return None
    if _depth(pa.struct(list(table.schema))) > _MAX_TYPE_DEPTH:
        return None
    prompt, completion, conv, turn = (table.column(k) for k in REQUIRED)
    if any(c.null_count for c in (prompt, completion, conv, turn)):
        return None  # missing or null fields: the row-by-row path names the row
    if not pa.types.is_string(completion.type) or not pa.types.is_list(prompt.type):
        return None
    item = prompt.type.value_type
    if not pa.types.is_struct(item) or item.get_field_index("role") < 0 or item.get_field_index("content") < 0:
        return None
    if not (pa.types.is_string(item.field("role").type) and pa.types.is_string(item.field("content").type)):
        return None
    if not pa.types.is_integer(turn.type) or pa.types.is_uint64(turn.type):
        return None
    if pa.types.is_integer(conv.type) and not pa.types.is_uint64(conv.type):
        conv = pc.cast(conv, pa.string())  # as str() writes an int
    elif not pa.types.is_string(conv.type):
        return None
    messages = pc.list_flatten(prompt)  # every message of every prompt
    if messages.null_count:
        return None
    role = pc.index_in(pc.struct_field(messages, "role"), value_set=pa.array(ROLES))
    content = pc.struct_field(messages, "content")
    if role.null_count or content.null_count:
        return None  # a role that is none of ROLES (or null), a message without text
    score = np.full(table.num_rows, -math.inf)
    if "score" in names:
        s = table.column("score")
        if pa.types.is_floating(s.type) or (pa.types.is_integer(s.type) and not pa.types.is_uint64(s.type)):
            values = pc.fill_null(pc.cast(s, pa.float64(), safe=False), math.nan).to_numpy()
            score = np.where(np.isnan(values), -math.inf, values)
        elif not pa.types.is_null(s.type):
            return None  # booleans, text: the row-by-row path reads or refuses them
    encoded = pc.dictionary_encode(conv.combine_chunks())  # codes in first-seen order
    start, length = _list_starts(prompt)
    return {"conv": encoded.indices.to_numpy().astype(np.int64), "conv_names": encoded.dictionary,
            "turn": turn.cast(pa.int64()).to_numpy(), "score": score, "start": start, "length": length,
            "role": role.to_numpy().astype(np.int8), "content": content.combine_chunks(),
            "completion": completion.combine_chunks(), "table": table}


# --------------------------------------------------------------------------- threshold
def _exact_ge(values: pa.Array, threshold: float) -> np.ndarray:
    """``v >= threshold`` for integer or float values, nulls False, as Python compares them."""
    if pa.types.is_integer(values.type):
        if math.isnan(threshold):
            return np.zeros(len(values), bool)
        if math.isinf(threshold):
            return np.full(len(values), threshold < 0) & ~np.asarray(values.is_null())
        bound = math.ceil(threshold)  # an int v is >= t exactly when v >= ceil(t)
        ints = pc.fill_null(values.cast(pa.int64()), 0).to_numpy()
        if bound > np.iinfo(np.int64).max:
            ok = np.zeros(len(values), bool)
        elif bound < np.iinfo(np.int64).min:
            ok = np.ones(len(values), bool)
        else:
            ok = ints >= bound
        return ok & ~np.asarray(values.is_null())
    floats = pc.fill_null(values, math.nan).to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        return floats >= threshold


def keep_mask(cands: dict[str, Any], threshold: float | None, field: str) -> np.ndarray | None:
    """Which candidates pass the threshold; None when no candidate has a value (the row-by-row path explains)."""
    n = len(cands["score"])
    if threshold is None:
        return np.ones(n, bool)
    table: pa.Table = cands["table"]
    parts = field.split(".")
    if parts[0] not in table.column_names or parts[0] in REQUIRED:
        return None
    col: Any = table.column(parts[0]).combine_chunks()
    for part in parts[1:]:
        t = col.type
        if pa.types.is_struct(t) and t.get_field_index(part) >= 0:
            col = pc.struct_field(col, part)
        elif pa.types.is_struct(t) or pa.types.is_null(t):
            return None  # no candidate has the path
        else:
            col = None  # text (maybe JSON-encoded), a list: read the values as the row-by-row path does
            break
    if col is not None and (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        if col.null_count == len(col):
            return None
        return _exact_ge(col, threshold)
    if col is not None and pa.types.is_boolean(col.type):
        return None if col.null_count == len(col) else np.zeros(n, bool)
    if col is not None and pa.types.is_null(col.type):
        return None
    top = table.column(parts[0]).to_pylist()
    values = [get_path({parts[0]: v}, field) for v in top]
    if all(v is None for v in values):
        return None
    return np.fromiter((isinstance(v, int | float) and not isinstance(v, bool) and v >= threshold for v in values),
                       bool, count=n)


# --------------------------------------------------------------------------- building
def _python_sum(chain: list[np.ndarray]) -> np.ndarray:
    """``sum(values)`` per row of ``chain`` (position k -> the k-th value of each row), as this Python adds."""
    total = chain[0] + 0.0  # `sum` starts from the int 0: 0 + x, so -0.0 becomes 0.0
    if sys.version_info < (3, 12):
        for x in chain[1:]:
            total = total + x
        return total
    comp = np.zeros_like(total)  # 3.12+: Neumaier's compensated sum
    for x in chain[1:]:
        t = total + x
        with np.errstate(invalid="ignore"):
            comp += np.where(np.abs(total) >= np.abs(x), (total - t) + x, (x - t) + total)
        total = t
    fix = (comp != 0) & np.isfinite(comp)
    return np.where(fix, total + comp, total)


def _means(lists: list[np.ndarray], counted: np.ndarray) -> np.ndarray:
    """Per row, the Python mean of its non-NaN values taken in order (NaN marks a value not counted)."""
    out = np.full(len(counted), np.nan)
    if not lists:
        return out
    stacked = np.stack(lists, axis=1)
    present = ~np.isnan(stacked)
    packed = np.zeros_like(stacked)  # each row's counted values moved to the front, in order
    r, k = np.nonzero(present)
    packed[r, (np.cumsum(present, axis=1) - 1)[r, k]] = stacked[r, k]
    for size in np.unique(counted[counted > 0]):
        rows = np.flatnonzero(counted == size)
        out[rows] = _python_sum([packed[rows, j] for j in range(int(size))]) / size
    return out


def conversations(cands: dict[str, Any], mask: np.ndarray) -> dict[str, Any]:
    """Greedy-best conversations: one per conversation whose first turn has a kept candidate, first-seen order.

    Returns numpy ``code`` (conversation), ``last`` (the candidate that ends it), ``turns``, ``mean``
    and ``scored`` (how many scores the mean has; 0: no score).
    """
    conv, turn, score = cands["conv"], cands["turn"], cands["score"]
    # conversation, turn, kept first, highest score, first row: the first of each (conv, turn) is its best
    order = np.lexsort((-score, ~mask, turn, conv))
    c_s, t_s = conv[order], turn[order]
    new_group = np.ones(len(order), bool)
    new_group[1:] = (c_s[1:] != c_s[:-1]) | (t_s[1:] != t_s[:-1])
    starts = np.flatnonzero(new_group)
    best = order[starts]
    g_conv = c_s[starts]
    has = mask[best]
    # the chain: a conversation's turns in order, up to its first turn without a kept candidate
    fails = np.cumsum(~has)
    first_g = np.ones(len(starts), bool)
    first_g[1:] = g_conv[1:] != g_conv[:-1]
    conv_first = np.flatnonzero(first_g)
    base = np.repeat((fails - ~has)[conv_first], np.diff(np.append(conv_first, len(starts))))
    in_chain = (fails - base) == 0
    n_conv = len(cands["conv_names"])
    turns = np.bincount(g_conv[in_chain], minlength=n_conv)
    made = np.flatnonzero(turns > 0)
    first_of = np.zeros(n_conv, np.int64)
    first_of[g_conv[conv_first]] = conv_first
    firsts, chain_len = first_of[made], turns[made]
    # mean score of the chain's best responses, scores that are not -inf, added as Python adds them
    counted = np.zeros(len(made), np.int64)
    lists: list[np.ndarray] = []
    for k in range(int(chain_len.max(initial=0))):
        values = score[best[np.where(chain_len > k, firsts + k, 0)]]
        alive = (chain_len > k) & (values != -math.inf)
        lists.append(np.where(alive, values, np.nan))
        counted += alive
    return {"code": made, "last": best[firsts + chain_len - 1], "turns": chain_len, "mean": _means(lists, counted),
            "scored": counted}


def _messages(cands: dict[str, Any], rows: np.ndarray, system: str | None) -> pa.ListArray:
    """``apply_system([*prompt, {assistant: completion}], system)`` for the candidates ``rows``."""
    n = len(rows)
    start, length = cands["start"][rows], cands["length"][rows]
    # every prompt message of these rows, in order
    first = np.repeat(start - np.cumsum(length) + length, length)
    msg = first + np.arange(int(length.sum()))
    row_of = np.repeat(np.arange(n), length)
    if system is not None:
        keep = cands["role"][msg] != ROLES.index("system")
        msg, row_of = msg[keep], row_of[keep]
    kept = np.bincount(row_of, minlength=n)
    head = 0 if system is None else 1
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(kept + head + 1, out=offsets[1:])
    # positions of the output messages in [prompt messages..., completions..., system]
    index = np.empty(int(offsets[-1]), np.int64)
    slot = np.repeat(offsets[:-1] + head, kept) + np.arange(len(msg)) - np.repeat(np.cumsum(kept) - kept, kept)
    index[slot] = np.arange(len(msg))
    index[offsets[1:] - 1] = len(msg) + np.arange(n)
    roles = np.empty(len(index), np.int8)
    roles[slot] = cands["role"][msg]
    roles[offsets[1:] - 1] = ROLES.index("assistant")
    if head:
        index[offsets[:-1]] = len(msg) + n
        roles[offsets[:-1]] = ROLES.index("system")
    texts = pa.concat_arrays([cands["content"].take(pa.array(msg)), cands["completion"].take(pa.array(rows)),
                              pa.array([system or ""], pa.string())])
    values = pa.StructArray.from_arrays([pa.array(ROLES, pa.string()).take(pa.array(roles)), texts.take(pa.array(index))],
                                        fields=list(_MESSAGE))
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)


def split_tables(cands: dict[str, Any], convs: dict[str, Any], system: str | None, fractions: dict[str, float],
                 seed: int) -> dict[str, pa.Table]:
    """``build.split_rows`` on the conversations: the same conversations land in the same splits, rows in order.

    Each split's table has ``messages``, ``conv_id``, ``turns`` and ``score`` (a null column where no
    row has a score, as a column of Nones becomes).
    """
    conv_ids = cands["conv_names"].take(pa.array(convs["code"]))
    m = len(conv_ids)
    by_name = pc.sort_indices(conv_ids).to_numpy()  # code-point order, as `sorted` orders str
    perm = list(range(m))
    random.Random(seed).shuffle(perm)  # the shuffle depends on the length only
    shuffled = by_name[np.asarray(perm, np.int64)] if m else by_name
    names = [n for n, f in fractions.items() if f > 0]
    where = np.full(m, -1, np.int64)
    start = 0
    for i, name in enumerate(names):
        n = m - start if i == len(names) - 1 else round(m * fractions[name])
        where[shuffled[start:start + n]] = i
        start += n
    out = {}
    for i, name in enumerate(names):
        rows = np.flatnonzero(where == i)
        if not len(rows):
            continue
        scored = convs["scored"][rows] > 0
        score = (pa.array(convs["mean"][rows], pa.float64(), mask=~scored) if scored.any()
                 else pa.nulls(len(rows)))
        out[name] = pa.table({"messages": _messages(cands, convs["last"][rows], system),
                              "conv_id": conv_ids.take(pa.array(rows)),
                              "turns": pa.array(convs["turns"][rows], pa.int64()), "score": score})
    return out
