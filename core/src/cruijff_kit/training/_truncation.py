"""Target tokens that ``train.max_seq_length`` would cut, counted the way the run's trainer tokenizes.

A trainer tells how it tokenizes through :meth:`~cruijff_kit._api.kinds.Trainer.target_masker`: a
function that turns one conversation into one flag per token, True where the trainer trains on the
token (the assistant answer, or every token when it trains on whole conversations). The count is the
same for every trainer: a row keeps its first ``max_seq_length`` tokens, so every target token past
them is lost, and a row left with no target token trains on nothing (trainers drop it).

:func:`plan_truncation` counts at ``ck plan`` (and ``ck run``, ``ck validate``); it says "not
checked" when the trainer does not count, or when the tokenizer or the data is not on this machine.
:func:`require_truncation_allowed` counts again when the train stage starts, so data that could not
be counted at plan time is refused before training too. Cut rows are an error unless
``train.allow_truncation: true`` (or the dataset's own option) allows them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cruijff_kit._base.errors import CkError, DataError, clip

if TYPE_CHECKING:  # pragma: no cover
    from cruijff_kit._api.kinds import Trainer
    from cruijff_kit._api.records import PlannedRun

#: One conversation -> one flag per token, True for the tokens the trainer trains on (before any cut).
Masker = Callable[[list[dict[str, Any]]], Sequence[bool]]
#: Row numbers shown in a message.
SHOWN_ROWS = 5
#: The spec option that allows cut rows.
ALLOW_OPTION = "train.allow_truncation"
#: The splits a trainer reads.
TRAIN_SPLITS = ("train", "validation")


def _rows(rows: Sequence[int]) -> str:
    """``row 3`` or ``rows 1, 2, 3, 5, 8 and 4 more`` (0-based)."""
    more = f" and {len(rows) - SHOWN_ROWS} more" if len(rows) > SHOWN_ROWS else ""
    return ("row " if len(rows) == 1 else "rows ") + ", ".join(str(r) for r in rows[:SHOWN_ROWS]) + more


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass(frozen=True)
class SplitTruncation:
    """What ``max_seq_length`` cuts from one split: rows (0-based) that lose target tokens, and how many."""

    split: str
    file: str
    rows: int
    max_seq_length: int
    cut_rows: tuple[int, ...] = ()
    emptied_rows: tuple[int, ...] = ()
    tokens_lost: int = 0
    target_tokens: int = 0

    def summary(self) -> str:
        """``train: 3 of 10 rows lose 24 of 80 target tokens (1 keeps none)``, or ``train: none cut``."""
        if not self.cut_rows:
            return f"{self.split}: none cut ({self.rows} rows)"
        n = len(self.emptied_rows)
        emptied = f", {n} {'keeps' if n == 1 else 'keep'} none" if n else ""
        return (f"{self.split}: {len(self.cut_rows)} of {self.rows} rows lose {self.tokens_lost} of "
                f"{self.target_tokens} target tokens{emptied}")

    def problem(self) -> str:
        """One sentence for the error: file, split, rows, first row numbers, tokens lost."""
        emptied = (f"; {_rows(self.emptied_rows)} would keep no target token at all and train on nothing"
                   if self.emptied_rows else "")
        return (f"{self.file}: split `{self.split}`: {len(self.cut_rows)} of {self.rows} rows are longer than "
                f"train.max_seq_length = {self.max_seq_length} tokens and would lose {self.tokens_lost} of "
                f"{self.target_tokens} target (assistant) tokens ({_rows(self.cut_rows)}, 0-based){emptied}.")


@dataclass(frozen=True)
class TruncationCheck:
    """The count of every split a run trains on, or why it was not counted (``not_checked``)."""

    splits: tuple[SplitTruncation, ...] = ()
    not_checked: str | None = None

    @property
    def cut(self) -> bool:
        """True when some row loses target tokens."""
        return any(s.cut_rows for s in self.splits)

    def short(self) -> str:
        """A table cell: ``not checked``, ``none cut``, or ``3 rows, 24 tokens`` (all splits together)."""
        if self.not_checked is not None or not self.splits:
            return "not checked"
        if not self.cut:
            return "none cut"
        rows = sum(len(s.cut_rows) for s in self.splits)
        return f"{_plural(rows, 'row')}, {_plural(sum(s.tokens_lost for s in self.splits), 'token')}"

    def summary(self) -> str:
        """One line for ``ck plan`` and plan.md."""
        if self.not_checked is not None:
            return f"not checked: {self.not_checked}"
        if not self.splits:
            return "not checked: no split to count"
        limit = self.splits[0].max_seq_length
        if not self.cut:
            return f"none cut at max_seq_length {limit} ({', '.join(s.split for s in self.splits)})"
        return f"max_seq_length {limit}: " + "; ".join(s.summary() for s in self.splits)

    def error(self) -> DataError:
        """The error refusing cut rows: what is cut, where, and the three ways out."""
        limit = self.splits[0].max_seq_length
        text = " ".join(s.problem() for s in self.splits if s.cut_rows)
        return DataError(f"{text} Training would silently cut those answers. Raise train.max_seq_length (now "
                         f"{limit}), shorten or remove the rows, or set `{ALLOW_OPTION}: true` to train on the "
                         "cut rows anyway.")


def _render_error(file: str, split: str, failures: list[tuple[int, str]], rows: int) -> DataError:
    first = "; ".join(f"row {i}: {clip(msg, 160)}" for i, msg in failures[:SHOWN_ROWS])
    more = f" (and {len(failures) - SHOWN_ROWS} more)" if len(failures) > SHOWN_ROWS else ""
    return DataError(f"{file}: split `{split}`: the chat template cannot render {len(failures)} of {rows} rows "
                     f"(0-based): {first}{more}. Fix the conversations (for example merge two user turns in a row "
                     "into one, and keep system turns first), or set train.chat_template to a template that "
                     "accepts them.")


def _no_target_error(file: str, split: str, rows: list[int], total: int) -> DataError:
    return DataError(f"{file}: split `{split}`: {len(rows)} of {total} rows ({_rows(rows)}, 0-based) "
                     "have no token the trainer trains on (no assistant turn), so they would train on nothing. "
                     "Give each row an assistant answer, or remove the rows.")


def count_truncation(conversations: Iterable[list[dict[str, Any]]], masker: Masker, max_seq_length: int, *,
                     split: str, file: str | Path) -> SplitTruncation:
    """Count the target tokens ``max_seq_length`` cuts off each conversation, with ``masker`` tokenizing.

    Trainer-agnostic: ``masker`` is the trainer's :meth:`Trainer.target_masker`. Raises DataError naming
    the file, the split and the first rows when the chat template cannot render some rows, or when some
    rows have no target token at all (not even before the cut).
    """
    file = str(file)
    cut: list[int] = []
    emptied: list[int] = []
    failures: list[tuple[int, str]] = []
    no_target: list[int] = []
    lost = targets = rows = 0
    for i, conversation in enumerate(conversations):
        rows += 1
        try:
            mask = [bool(m) for m in masker([{"role": m["role"], "content": m["content"]} for m in conversation])]
        except Exception as exc:  # a template that cannot form the conversation raises whatever it likes
            failures.append((i, f"{type(exc).__name__}: {exc}"))
            continue
        total = sum(mask)
        if total == 0:
            no_target.append(i)
            continue
        gone = sum(mask[max_seq_length:])
        targets += total
        if gone:
            cut.append(i)
            lost += gone
            if gone == total:
                emptied.append(i)
    if failures:
        raise _render_error(file, split, failures, rows)
    if no_target:
        raise _no_target_error(file, split, no_target, rows)
    return SplitTruncation(split, file, rows, max_seq_length, tuple(cut), tuple(emptied), lost, targets)


# --------------------------------------------------------------------------- runs
def _split_file(run: PlannedRun, split: str) -> str:
    """The file a split comes from, as shown in messages (the dataset's ``split_file`` when it has one)."""
    dataset = run.dataset()
    where = getattr(dataset, "split_file", None)
    if callable(where):
        try:
            found = where(split)
        except Exception:  # naming the file must never hide the count
            found = None
        if found is not None:
            return str(found)
    path = run.spec["dataset"].get("path")
    return str(path) if path else f"dataset `{run.spec['dataset'].get('plugin')}`"


def _conversations(split: Any) -> list[list[dict[str, Any]]]:
    if "messages" not in getattr(split, "column_names", []):
        raise DataError(f"the dataset's rows have no `messages` column (columns: {split.column_names}); the "
                        "dataset plugin must give chat rows.")
    return [list(m) for m in split["messages"]]


def count_run(run: PlannedRun, trainer: Trainer, masker: Masker, data: Any) -> TruncationCheck:
    """Count every split the trainer reads (``train``, and ``validation`` when it computes validation loss)."""
    config = trainer.config
    names = [s for s in TRAIN_SPLITS if s in data and (s == "train" or getattr(config, "validation", False))]
    limit = int(config.max_seq_length)  # type: ignore[attr-defined]
    return TruncationCheck(tuple(count_truncation(_conversations(data[s]), masker, limit, split=s,
                                                  file=_split_file(run, s)) for s in names))


def truncation_allowed(run: PlannedRun, trainer: Trainer) -> bool:
    """True when ``train.allow_truncation`` or the dataset's own option accepts cut rows."""
    return bool(getattr(trainer.config, "allow_truncation", False)) or run.dataset().allows_truncation()


def _tokenizer_dir(run: PlannedRun) -> str | None:
    """The local folder with the run's tokenizer, or None (a hub id not downloaded yet)."""
    local = run.spec["model"].get("local_path")
    if not local:
        return None
    folder = Path(local)
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    return str(folder) if any((folder / n).is_file() for n in names) else None


def plan_truncation(run: PlannedRun, trainer: Trainer) -> TruncationCheck:
    """The plan-time count for a run that trains, or a :class:`TruncationCheck` saying why not.

    Not checked when the trainer gives no :meth:`Trainer.target_masker`, the tokenizer is not on this
    machine (checked when the stage starts), or the dataset cannot describe itself here (data a
    simulation writes later, a hub dataset): the stage counts then.
    """
    local = _tokenizer_dir(run)
    if local is None:
        return TruncationCheck(not_checked="tokenizer not available here (counted when the train stage starts)")
    dataset = run.dataset()
    try:
        described = dataset.describe()
    except CkError:
        raise
    except Exception:  # a dataset that cannot describe itself cheaply is counted when the stage runs
        described = {}
    if not described:
        return TruncationCheck(not_checked="data not available at plan time (counted when the train stage starts)")
    try:
        masker = trainer.target_masker(local)
    except CkError as exc:  # e.g. a tokenizer without a chat template: the stage refuses it with the same words
        return TruncationCheck(not_checked=str(exc))
    except Exception as exc:  # an unreadable tokenizer fails the stage with the library's own message
        return TruncationCheck(not_checked=f"the tokenizer of {local} cannot be loaded ({type(exc).__name__}: "
                                           f"{clip(str(exc), 200)}); counted when the train stage starts")
    if masker is None:
        return TruncationCheck(not_checked=f"trainer `{trainer.name}` does not count truncation"
                                           " for this configuration")
    from cruijff_kit._api.kinds import Prompt

    try:
        data = dataset.load(Prompt.model_validate(run.spec["prompt"]))
    except CkError:
        raise
    except Exception as exc:  # e.g. a library the dataset needs is missing here
        return TruncationCheck(not_checked=f"the data cannot be loaded here ({type(exc).__name__}: "
                                           f"{clip(str(exc), 200)}); counted when the train stage starts")
    return count_run(run, trainer, masker, data)


def require_truncation_allowed(ctx: Any, trainer: Trainer, data: Any) -> TruncationCheck:
    """At the start of a train stage: count again with the stage's tokenizer and refuse cut rows.

    ``ctx`` is the :class:`StageContext`; ``data`` the loaded ``DatasetDict``. Raises the DataError of
    :meth:`TruncationCheck.error` unless truncation is allowed; prints the count otherwise.
    """
    run = ctx.planned
    masker = trainer.target_masker(ctx.model_path, ctx.spec["model"].get("revision"))
    if masker is None:
        return TruncationCheck(not_checked=f"trainer `{trainer.name}` does not count truncation")
    check = count_run(run, trainer, masker, data)
    if check.cut and not truncation_allowed(run, trainer):
        raise check.error()
    if check.cut:
        print(f"[ck] truncation allowed: {check.summary()}", file=sys.stderr, flush=True)
    return check
