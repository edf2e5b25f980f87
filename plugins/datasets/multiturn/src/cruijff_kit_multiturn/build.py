"""From candidate rows to training rows: threshold, best response per turn, conversations, pairs, splits.

* **Threshold**: a candidate whose value at ``threshold_on`` (``score`` or a dotted path such as
  ``rewards.accuracy``) is below ``threshold`` is dropped (so is one without that value).
* **Best per turn**: the highest ``score`` among the kept candidates of a turn.
* **Greedy-best conversation**: turns are taken in order from the first while each has a kept
  candidate; the conversation is the last such turn's prompt (the history as it was simulated, which
  carries the best responses of the earlier turns) followed by that turn's best response. A conversation
  whose first turn has no kept candidate gives no row.
* **Preference pairs**: per turn, the best kept candidate (chosen) and the lowest-scoring candidate
  (rejected), when their scores differ by at least ``min_gap`` and their texts differ.
* **Splits**: by conversation (every row of a conversation lands in the same split), shuffled with
  ``seed``, in the given fractions.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Any

from cruijff_kit import DataError, did_you_mean
from cruijff_kit_multiturn.rows import get_path, paths_in


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


def pairs(rows: list[dict[str, Any]], mask: list[bool], system: str | None, min_gap: float) -> list[dict[str, Any]]:
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
