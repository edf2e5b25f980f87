"""The word-capitalization sanity task: input ``apple`` -> output ``APPLE``.

Small, learnable in minutes even by a 135M model, and the base model gets it visibly wrong,
so a fine-tuned run should beat the base model. Seeded; written as our JSON instruct format.
"""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path
from typing import Any

from cruijff_kit._base.errors import CkError
from cruijff_kit._base.fileio import atomic_write_text
from cruijff_kit._base.ownership import check_writable, claim_folder, remove_path

DEFAULT_SYSTEM = "Rewrite the word the user gives you in capital letters. Answer with the word only."


def word_list() -> list[str]:
    """The shipped word list (unique, in file order)."""
    text = resources.files("cruijff_kit").joinpath("resources/words.txt").read_text(encoding="utf-8")
    seen: dict[str, None] = {}
    for line in text.splitlines():
        w = line.strip()
        if w and not w.startswith("#"):
            seen.setdefault(w, None)
    return list(seen)


def capitalize_rows(n_train: int = 120, n_validation: int = 20, n_test: int = 30, seed: int = 0,
                    ) -> dict[str, list[dict[str, str]]]:
    """Seeded disjoint splits of ``{input, output}`` rows."""
    words = word_list()
    need = n_train + n_validation + n_test
    if need > len(words):
        raise ValueError(f"asked for {need} rows but the word list has {len(words)} words")
    rng = random.Random(seed)
    rng.shuffle(words)
    rows = [{"input": w, "output": w.upper()} for w in words[:need]]
    return {"train": rows[:n_train], "validation": rows[n_train:n_train + n_validation],
            "test": rows[n_train + n_validation:]}


def is_capitalize_file(path: Path) -> bool:
    """True when ``path`` holds this task as written here: splits of rows whose output is the input upper-cased."""
    from cruijff_kit._base.fileio import read_json

    try:
        data = read_json(path) if path.is_file() else None
    except CkError:
        return False
    return isinstance(data, dict) and bool(data) and set(data) <= {"train", "validation", "test"} and all(
        isinstance(rows, list) and all(isinstance(r, dict) and set(r) == {"input", "output"}
                                       and isinstance(r["input"], str) and r["output"] == r["input"].upper()
                                       for r in rows) for rows in data.values())


def write_capitalize(path: Path, *, chat: bool = False, system: str | None = DEFAULT_SYSTEM,
                     overwrite: bool = False, **kwargs: Any) -> Path:
    """Write the task as a JSON instruct file (or, with ``chat``, a folder of chat JSON files).

    The destination must be absent, an empty folder, or an earlier output of this function; anything
    else is written over only with ``overwrite``.
    """
    splits = capitalize_rows(**kwargs)
    path = Path(path)
    if not chat:
        if check_writable(path, command="ck data capitalize", overwrite=overwrite, ours=is_capitalize_file):
            remove_path(path)
        atomic_write_text(path, json.dumps(splits, indent=1) + "\n")
        return path
    claim_folder(path, command="ck data capitalize", overwrite=overwrite)
    for split, rows in splits.items():
        msgs = [{"messages": ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": r["input"]}, {"role": "assistant", "content": r["output"]}]} for r in rows]
        atomic_write_text(path / f"{split}.json", json.dumps(msgs, indent=1) + "\n")
    return path
