"""The canonical ``messages`` rows of a run, as a map-style torchtune dataset of ``{tokens, labels}``.

The rows come from the run's dataset plugin (``ctx.dataset()``), never from a second parser of the
user's files. Inside a ``ck stage`` process the trainer hands the rows over in memory
(:func:`provide_rows`); a recipe started from ``train/torchtune.yaml`` alone (for example by the
overhead benchmark) loads them through the same dataset plugin from the run folder.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from cruijff_kit import DataError

_ROWS: dict[tuple[str, str], list[list[dict[str, Any]]]] = {}


def _key(run_dir: str | Path, split: str) -> tuple[str, str]:
    return (str(Path(run_dir).resolve()), split)


def provide_rows(run_dir: str | Path, split: str, conversations: list[list[dict[str, Any]]]) -> None:
    """Hand a split's conversations to :func:`chat_dataset` in this process (no reload from disk)."""
    _ROWS[_key(run_dir, split)] = conversations


def conversations_of(dataset: Any) -> list[list[dict[str, Any]]]:
    """The ``messages`` column of a ``datasets.Dataset`` split, as plain lists."""
    if "messages" not in dataset.column_names:
        raise DataError(f"the dataset split has no `messages` column (columns: {dataset.column_names}); "
                        "dataset plugins must return chat rows.")
    return [list(m) for m in dataset["messages"]]


def _load_rows(run_dir: str | Path, split: str) -> list[list[dict[str, Any]]]:
    key = _key(run_dir, split)
    if key not in _ROWS:
        from cruijff_kit import Prompt
        from cruijff_kit.engine import load_run

        run = load_run(run_dir)
        data = run.dataset().load(Prompt.model_validate(run.spec["prompt"]))
        if split not in data:
            raise DataError(f"the dataset of run {run.name} has no `{split}` split (it has {list(data)}).")
        _ROWS[key] = conversations_of(data[split])
    return _ROWS[key]


class TokenizedChatDataset:
    """Conversations tokenized once with :class:`~cruijff_kit_torchtune.tokenizer.HFChatTokenizer`.

    Items are ``{"tokens": [...], "labels": [...]}`` as torchtune's ``padded_collate_sft`` expects.
    Conversations whose assistant text falls entirely past ``max_seq_len`` carry no loss and are left
    out (their count is printed).
    """

    def __init__(self, tokenizer: Any, conversations: list[list[dict[str, Any]]], split: str) -> None:
        self.split = split
        self.items: list[dict[str, list[int]]] = []
        dropped = 0
        for i, conv in enumerate(conversations):
            try:
                tokens, labels = tokenizer.tokenize_messages(conv)
            except (KeyError, TypeError) as exc:
                raise DataError(f"row {i} of the `{split}` split is not a list of role/content messages "
                                f"({type(exc).__name__}: {exc}).") from None
            if all(lab < 0 for lab in labels):
                dropped += 1
                continue
            self.items.append({"tokens": tokens, "labels": labels})
        if dropped:
            print(f"[ck torchtune] {dropped} of {len(conversations)} `{split}` rows have no assistant tokens "
                  f"within max_seq_length and are skipped", file=sys.stderr, flush=True)
        if conversations and not self.items:
            raise DataError(f"no row of the `{split}` split has assistant text within the first "
                            f"{tokenizer.max_seq_len} tokens. Raise train.max_seq_length, or check that the "
                            "rows end with an assistant message.")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.items[index]


def chat_dataset(tokenizer: Any, *, run_dir: str, split: str = "train") -> TokenizedChatDataset:
    """Builder used as ``dataset._component_`` in ``train/torchtune.yaml``."""
    return TokenizedChatDataset(tokenizer, _load_rows(run_dir, split), split)
