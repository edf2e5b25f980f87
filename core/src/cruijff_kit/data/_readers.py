"""Readers of the file formats the core understands, each a :class:`Source` of checked rows.

- :class:`InstructFile`: one JSON file ``{"train": [{input, output}...], "validation": [...], ...}``;
- :class:`ChatFolder`: a folder with one ``<split>.json`` (a list) or ``<split>.jsonl`` per split of
  ``{messages: [...]}`` rows;
- :class:`ParquetFolder`: a folder with one ``<split>.parquet`` per split (or shards
  ``<split>-00000-of-00002.parquet``), instruct or chat rows;
- :class:`ArrowDir`: a dataset written by ``datasets``' ``save_to_disk`` (read with pyarrow).

Sizes (:meth:`Source.stats`) and split names are cached per file, keyed by modification time and size,
so planning a sweep of many runs reads each file once. ``pyarrow`` is imported inside functions only.

:class:`SourceDataset` is the base of dataset plugins that read a :class:`Source`: a subclass returns
its source from :meth:`SourceDataset.source` and gets ``load``, ``describe`` and the plan-time ``check``
(options ``path``, ``splits`` and ``limit`` from :class:`FileDatasetConfig`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, PositiveInt

from cruijff_kit._api.kinds import Dataset, DatasetConfig
from cruijff_kit._base.errors import DataError, clip
from cruijff_kit._base.parsing import parse_json_text
from cruijff_kit.data._canonical import (
    CHAT,
    INSTRUCT,
    ROLES,
    SplitStats,
    as_prompt,
    canonical_rows,
    check_row,
    check_rows,
    check_run_splits,
    check_template,
    check_training_rows,
    empty_split,
    json_type,
    limit_for,
    map_splits,
    paused_gc,
    shown,
    stats_of_rows,
    to_dataset_dict,
)

#: Split names first in this order, then the others alphabetically.
SPLIT_ORDER = ("train", "validation", "test")
_SHARD = re.compile(r"^(?P<split>.+)-\d{5}-of-\d{5}$")
_CACHE: dict[tuple[Any, ...], Any] = {}


def order_splits(names: list[str]) -> list[str]:
    """``train``, ``validation``, ``test`` first, then the rest alphabetically."""
    known = [s for s in SPLIT_ORDER if s in names]
    return known + sorted(n for n in names if n not in SPLIT_ORDER)


def file_identity(paths: list[Path]) -> tuple[tuple[str, int, int], ...]:
    """``(path, mtime_ns, size)`` of each file: a cache key that changes when a file changes."""
    out = []
    for p in sorted(paths):
        st = p.stat()
        out.append((str(p.resolve()), st.st_mtime_ns, st.st_size))
    return tuple(out)


def clear_cache() -> None:
    """Forget cached sizes and split names (tests; long-lived processes)."""
    _CACHE.clear()


# --------------------------------------------------------------------------- text and JSON
def read_text(path: Path) -> str:
    """A file's text as strict UTF-8 (a leading byte-order mark is dropped)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(f"{shown(path)}: not valid UTF-8: byte 0x{data[exc.start]:02x} at line {line}, "
                        f"column {col}. Save the file as UTF-8 (for example `iconv -f latin1 -t utf-8 IN > OUT`)."
                        ) from None
    return text[1:] if text.startswith("\ufeff") else text


def parse_json(path: Path, text: str) -> Any:
    """Parse one JSON document; errors name the line and column.

    A key twice in one object or nesting deeper than 100 levels is an error naming the file and line.
    """
    try:
        return parse_json_text(text, file=shown(path))
    except json.JSONDecodeError as exc:
        hint = (" The file seems to hold one JSON value per line: name it .jsonl (json-chat), or put the rows "
                "in a list.") if exc.msg == "Extra data" else ""
        raise DataError(f"{shown(path)}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}."
                        f"{hint} Fix the file (`python -m json.tool FILE` shows the spot).") from None


def parse_jsonl(path: Path, text: str, limit: int | None = None) -> tuple[list[Any], list[int]]:
    """Parse JSON Lines (blank lines skipped); return the values and their 1-based line numbers.

    A key twice in one object or nesting deeper than 100 levels is an error naming the file and line.
    """
    rows: list[Any] = []
    lines: list[int] = []
    where = shown(path)
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if limit is not None and len(rows) >= limit:
            break
        try:
            rows.append(parse_json_text(line, file=where, line=n))
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: line {n} is not valid JSON (column {exc.colno}): {exc.msg}. "
                            "Each line of a .jsonl file must be one JSON object.") from None
        lines.append(n)
    return rows, lines


# --------------------------------------------------------------------------- sources
@dataclass
class SplitRows:
    """Checked rows of one split, their kind (``instruct``/``chat``) and the file they came from."""

    kind: str
    rows: list[dict[str, Any]]
    file: Path
    #: 1-based line of each row in a JSON Lines file, else None.
    lines: list[int] | None = None


@dataclass(frozen=True)
class Columns:
    """Which source columns hold the instruct input/output or the chat messages."""

    input: str = "input"
    output: str = "output"
    messages: str | None = None

    @property
    def default(self) -> bool:
        return self == Columns()


class Source:
    """Where a dataset's rows come from. Subclasses read one format."""

    #: False when split names or sizes need the network (hub datasets): plan-time checks skip it.
    local: bool = True

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def ensure(self) -> None:
        """Raise DataError when the file or folder is missing or of the wrong type."""
        if not self.path.exists():
            raise DataError(f"{shown(self.path)} does not exist. Check dataset.path (relative paths are "
                            "relative to the spec file's folder).")

    def identity(self) -> tuple[Any, ...]:
        """What the cache key of this source's facts is made of (files with mtime and size)."""
        return file_identity([self.path])

    def cached(self, what: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per (source files, what)."""
        key = (type(self).__name__, self.identity(), what)
        if key not in _CACHE:
            _CACHE[key] = compute()
        return _CACHE[key]

    def split_names(self) -> list[str]:
        """The source's split names (cached)."""
        return self.cached("splits", self._split_names)

    def rows(self, split: str, limit: int | None = None) -> SplitRows:
        """Checked rows of one split (the first ``limit`` ones)."""
        raise NotImplementedError

    def stats(self, split: str, limit: int | None = None) -> SplitStats:
        """Sizes of one split (cached); checks the rows on the way."""
        def compute() -> SplitStats:
            with paused_gc():
                return self._stats(split, limit)

        return self.cached(f"stats:{split}:{limit}", compute)

    def _split_names(self) -> list[str]:
        raise NotImplementedError

    def _stats(self, split: str, limit: int | None) -> SplitStats:
        part = self.rows(split, limit)
        return stats_of_rows(part.rows, part.kind)

    def _unknown_split(self, split: str) -> DataError:
        names = clip(", ".join(f"`{s}`" for s in self.split_names()))
        return DataError(f"{shown(self.path)} has no split `{clip(split, 80)}` (its splits: {names}).")


class InstructFile(Source):
    """One JSON file: an object whose keys are split names and values lists of ``{input, output}``."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._data: dict[str, Any] | None = None

    def ensure(self) -> None:
        super().ensure()
        if self.path.is_dir():
            raise DataError(f"{shown(self.path)} is a folder; json-instruct reads one JSON file with "
                            "`train`/`validation`/`test` lists. For a folder of chat files use json-chat; "
                            "for parquet files use parquet.")

    def data(self) -> dict[str, list[Any]]:
        """The parsed file (checked for its shape: an object of lists)."""
        if self._data is None:
            self.ensure()
            value = parse_json(self.path, read_text(self.path))
            if not isinstance(value, dict):
                raise DataError(f"{shown(self.path)}: the top level must be an object with `train`, `validation` "
                                f"and `test` lists of {{input, output}} rows, got {json_type(value)}. Wrap the rows as "
                                '{"train": [...]}.')
            for split, rows in value.items():
                if not isinstance(rows, list):
                    raise DataError(f"{shown(self.path)}: split `{clip(split, 80)}` must be a list of {{input, output}} "
                                    f"rows, got {json_type(rows)}. Every top-level key is a split.")
            self._data = value
        return self._data

    def _split_names(self) -> list[str]:
        return list(self.data())

    def rows(self, split: str, limit: int | None = None) -> SplitRows:
        data = self.data()
        if split not in data:
            raise self._unknown_split(split)
        rows = data[split]
        if not rows:
            raise empty_split(self.path, split)
        return SplitRows(INSTRUCT, check_rows(rows[:limit], INSTRUCT, file=self.path, split=split), self.path)


class ChatFolder(Source):
    """A folder with ``<split>.json`` (a JSON list) or ``<split>.jsonl`` files of chat rows."""

    def ensure(self) -> None:
        super().ensure()
        if not self.path.is_dir():
            raise DataError(f"{shown(self.path)} is a file; json-chat reads a folder with train.json, "
                            "validation.json and test.json (or .jsonl). For one instruct file use json-instruct.")

    def files(self) -> dict[str, Path]:
        """Split name -> file."""
        self.ensure()
        out: dict[str, Path] = {}
        for p in sorted(self.path.iterdir()):
            if p.name.startswith(".") or p.suffix not in (".json", ".jsonl") or not p.is_file():
                continue
            if p.stem in out:
                raise DataError(f"{shown(self.path)}: both {out[p.stem].name} and {p.name} hold split "
                                f"`{p.stem}`. Keep one of them.")
            out[p.stem] = p
        if not out:
            raise DataError(f"{shown(self.path)} holds no .json or .jsonl files. Put one file per split "
                            "in it (train.json, validation.json, test.json).")
        return out

    def identity(self) -> tuple[Any, ...]:
        return file_identity(list(self.files().values()))

    def _split_names(self) -> list[str]:
        return order_splits(list(self.files()))

    def rows(self, split: str, limit: int | None = None) -> SplitRows:
        files = self.files()
        if split not in files:
            raise self._unknown_split(split)
        path = files[split]
        text = read_text(path)
        if path.suffix == ".jsonl":
            values, lines = parse_jsonl(path, text, limit)
            if not values:
                raise empty_split(path, split)
            return SplitRows(CHAT, check_rows(values, CHAT, file=path, split=split, lines=lines), path, lines)
        value = parse_json(path, text)
        if not isinstance(value, list):
            hint = ""
            if isinstance(value, dict) and "messages" in value:
                hint = " It holds a single conversation: put it in a list."
            elif isinstance(value, dict) and any(isinstance(v, list) for v in value.values()):
                hint = " It looks like a json-instruct file (an object of split lists): use that plugin."
            raise DataError(f"{shown(path)}: the top level must be a list of {{messages: [...]}} rows, got "
                            f"{json_type(value)}.{hint}")
        if not value:
            raise empty_split(path, split)
        return SplitRows(CHAT, check_rows(value[:limit], CHAT, file=path, split=split), path)


# --------------------------------------------------------------------------- tables
class TableSource(Source):
    """A source whose splits are Arrow tables; rows are instruct or chat, told by the columns."""

    def __init__(self, path: Path, columns: Columns | None = None) -> None:
        super().__init__(path)
        self.columns = columns or Columns()

    def table(self, split: str) -> Any:
        """The split's ``pyarrow.Table`` (all columns)."""
        raise NotImplementedError

    def file_of(self, split: str) -> Path:
        """The file named in messages about a split."""
        return self.path

    def cached(self, what: str, compute: Callable[[], Any]) -> Any:
        return super().cached(f"{what}:{self.columns}", compute)

    def canonical_table(self, split: str, limit: int | None) -> tuple[str, Any]:
        """``(kind, table)`` with the source columns renamed to ``input``/``output``/``messages``."""
        table = self.table(split)
        if table.num_rows == 0:
            raise empty_split(self.file_of(split), split)
        if limit is not None:
            table = table.slice(0, limit)
        return canonical_table(table, self.columns, file=self.file_of(split), split=split)

    def rows(self, split: str, limit: int | None = None) -> SplitRows:
        kind, table = self.canonical_table(split, limit)
        file = self.file_of(split)
        return SplitRows(kind, check_rows(table.to_pylist(), kind, file=file, split=split), file)

    def _stats(self, split: str, limit: int | None) -> SplitStats:
        kind, table = self.canonical_table(split, limit)
        return table_stats(table, kind, file=self.file_of(split), split=split)


def canonical_table(table: Any, columns: Columns, *, file: Path, split: str) -> tuple[str, Any]:
    """Tell instruct from chat by the columns and rename the source columns to the canonical names.

    A ``messages`` column (or ``columns.messages``) makes the rows chat, unless other input/output
    columns were named explicitly; otherwise ``input`` and ``output`` columns make them instruct.
    """
    names = list(table.column_names)
    if columns.messages is not None:
        kind, wanted = CHAT, {columns.messages: "messages"}
    elif "messages" in names and columns.default:
        kind, wanted = CHAT, {"messages": "messages"}
    elif columns.input in names and columns.output in names:
        kind, wanted = INSTRUCT, {columns.input: "input", columns.output: "output"}
    else:
        raise DataError(f"{shown(file)}: split `{split}` has neither a `messages` column nor `{columns.input}` and "
                        f"`{columns.output}` columns (its columns: {', '.join(names) or 'none'}). Rename the "
                        "columns, or with the hf plugin name them (input_column/output_column or "
                        "messages_column).")
    missing = [c for c in wanted if c not in names]
    if missing:
        raise DataError(f"{shown(file)}: split `{split}` has no column `{missing[0]}` (its columns: "
                        f"{', '.join(names)}). Check the column options of the dataset section.")
    taken = [c for c in names if c not in wanted and c in wanted.values()]
    if taken:
        raise DataError(f"{shown(file)}: split `{split}` has a column `{taken[0]}` besides the one renamed to "
                        "it. Drop or rename that column first.")
    return kind, table.rename_columns([wanted.get(c, c) for c in names])


def _is_text(t: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _first_bad_row(table: Any, kind: str) -> int | None:
    """Index of the first row the row check would refuse (cheap, vectorised), or None."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if kind == INSTRUCT:
        bad = []
        for name in ("input", "output"):
            col = table.column(name)
            if not _is_text(col.type):
                return 0
            if col.null_count:
                bad.append(pc.index(pc.is_null(col), True).as_py())
        return min(bad) if bad else None
    col = table.column("messages").combine_chunks()
    t = col.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not pa.types.is_struct(t.value_type):
        return 0
    fields = {t.value_type.field(i).name: t.value_type.field(i).type for i in range(t.value_type.num_fields)}
    if not all(k in fields and _is_text(fields[k]) for k in ("role", "content")):
        return 0
    bad = []
    empty = pc.fill_null(pc.less_equal(pc.list_value_length(col), 0), True)
    i = pc.index(empty, True).as_py()
    if i >= 0:
        bad.append(i)
    flat = pc.list_flatten(col)
    if len(flat):
        role, content = pc.struct_field(flat, "role"), pc.struct_field(flat, "content")
        wrong = pc.or_(pc.or_(pc.is_null(flat), pc.invert(pc.is_in(role, value_set=pa.array(ROLES)))),
                       pc.is_null(content))
        j = pc.index(pc.fill_null(wrong, True), True).as_py()
        if j >= 0:
            bad.append(pc.list_parent_indices(col)[j].as_py())
    bad = [b for b in bad if b >= 0]
    return min(bad) if bad else None


def table_stats(table: Any, kind: str, *, file: Path, split: str) -> SplitStats:
    """Sizes of a canonical-column table, refusing its first bad row with the row check's message."""
    import pyarrow as pa
    import pyarrow.compute as pc

    bad = _first_bad_row(table, kind)
    if bad is not None and bad >= 0:
        check_row(table.slice(bad, 1).to_pylist()[0], kind, file=file, split=split, index=bad)

    def total(arr: Any) -> int:
        return int(pc.sum(pc.utf8_length(arr)).as_py() or 0) if len(arr) else 0

    if kind == INSTRUCT:
        return SplitStats(INSTRUCT, table.num_rows, total(table.column("input")), total(table.column("output")))
    col = table.column("messages").combine_chunks()
    flat = pc.list_flatten(col)
    role = pc.struct_field(flat, "role")
    with_system = pc.filter(pc.list_parent_indices(col), pc.equal(role, pa.scalar("system")))
    n_with = len(pc.unique(with_system))
    return SplitStats(CHAT, table.num_rows, content_chars=total(pc.struct_field(flat, "content")),
                      without_system=table.num_rows - n_with)


class ParquetFolder(TableSource):
    """A folder with one ``<split>.parquet`` per split (shards ``<split>-00000-of-00003.parquet`` too)."""

    def ensure(self) -> None:
        super().ensure()
        if not self.path.is_dir():
            raise DataError(f"{shown(self.path)} is a file; the parquet plugin reads a folder with one "
                            "file per split (train.parquet, validation.parquet, test.parquet).")

    def files(self) -> dict[str, list[Path]]:
        """Split name -> its parquet files."""
        self.ensure()
        out: dict[str, list[Path]] = {}
        for p in sorted(self.path.glob("*.parquet")):
            if p.name.startswith("."):
                continue
            m = _SHARD.match(p.stem)
            out.setdefault(m.group("split") if m else p.stem, []).append(p)
        if not out:
            raise DataError(f"{shown(self.path)} holds no .parquet files. Put one file per split in it, "
                            "or make them with `ck data convert`.")
        return out

    def identity(self) -> tuple[Any, ...]:
        return file_identity([p for ps in self.files().values() for p in ps])

    def _split_names(self) -> list[str]:
        return order_splits(list(self.files()))

    def file_of(self, split: str) -> Path:
        files = self.files().get(split)
        return files[0] if files and len(files) == 1 else self.path / f"{split}*.parquet"

    def table(self, split: str) -> Any:
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = self.files()
        if split not in files:
            raise self._unknown_split(split)
        tables = []
        for p in files[split]:
            try:
                tables.append(pq.read_table(p))
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(f"{shown(p)}: not a readable parquet file ({exc}). Rewrite it, for example "
                                "with `ck data convert`.") from None
        try:
            return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise DataError(f"{shown(self.path)}: the shards of split `{split}` have different columns "
                            f"({exc}).") from None


class ArrowDir(TableSource):
    """A folder written by ``Dataset.save_to_disk`` (one split, named ``train``) or ``DatasetDict.save_to_disk``."""

    @staticmethod
    def recognises(path: Path) -> bool:
        """True for a folder written by ``save_to_disk``."""
        return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())

    def ensure(self) -> None:
        super().ensure()
        if not self.recognises(self.path):
            raise DataError(f"{shown(self.path)} is not a dataset saved with save_to_disk (it has no "
                            "dataset_dict.json or state.json).")

    def split_dirs(self) -> dict[str, Path]:
        """Split name -> folder with its ``state.json``."""
        self.ensure()
        if (self.path / "dataset_dict.json").is_file():
            meta = parse_json(self.path / "dataset_dict.json", read_text(self.path / "dataset_dict.json"))
            return {str(s): self.path / str(s) for s in meta.get("splits", [])}
        return {"train": self.path}

    def arrow_files(self, split: str) -> list[Path]:
        """The ``.arrow`` files of a split, in order."""
        folder = self.split_dirs()[split]
        state_file = folder / "state.json"
        if not state_file.is_file():
            raise DataError(f"{shown(folder)}: state.json is missing; the saved dataset is incomplete. "
                            "Save it again with save_to_disk.")
        state = parse_json(state_file, read_text(state_file))
        return [folder / f["filename"] for f in state.get("_data_files", [])]

    def identity(self) -> tuple[Any, ...]:
        files = [d / "state.json" for d in self.split_dirs().values()]
        files += [f for s in self.split_dirs() for f in self.arrow_files(s) if f.exists()]
        return file_identity(files)

    def _split_names(self) -> list[str]:
        return list(self.split_dirs())

    def file_of(self, split: str) -> Path:
        return self.split_dirs().get(split, self.path)

    def table(self, split: str) -> Any:
        import pyarrow as pa

        if split not in self.split_dirs():
            raise self._unknown_split(split)
        tables = []
        for f in self.arrow_files(split):
            try:
                with pa.memory_map(str(f)) as src:
                    tables.append(pa.ipc.open_stream(src).read_all())
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(f"{shown(f)}: not a readable Arrow file ({exc}). Save the dataset again.") from None
        if not tables:
            raise empty_split(self.file_of(split), split)
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def open_source(path: Path) -> Source:
    """The source for a path by what it is: JSON file, save_to_disk folder, chat folder or parquet folder."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{shown(path)} does not exist.")
    if path.is_file():
        if path.suffix == ".json":
            return InstructFile(path)
        raise DataError(f"{shown(path)}: expected a JSON instruct file (.json), a folder of chat .json/.jsonl "
                        "files, a folder of .parquet files, or a folder saved with save_to_disk.")
    if ArrowDir.recognises(path):
        return ArrowDir(path)
    if any(path.glob("*.parquet")):
        return ParquetFolder(path)
    if any(p.suffix in (".json", ".jsonl") for p in path.iterdir()):
        return ChatFolder(path)
    raise DataError(f"{shown(path)} holds no dataset files (.json, .jsonl, .parquet) and was not saved with "
                    "save_to_disk.")


# --------------------------------------------------------------------------- plugin base
class FileDatasetConfig(DatasetConfig):
    """Options of every file-backed dataset plugin."""

    path: str = Field(..., description="File or folder of the data (relative to the spec file's folder).")
    splits: dict[str, str] | None = Field(
        None, description="Rename splits: our name -> the source's name, e.g. {validation: dev}. "
        "Splits not named keep their names.")
    limit: PositiveInt | dict[str, PositiveInt] | None = Field(
        None, description="Keep only the first N rows of every split, or {split: N} per split (quick runs).")


class SourceDataset(Dataset):
    """A dataset plugin reading a :class:`Source`: load, describe and plan-time check come for free.

    Subclasses set ``name``, ``Config`` (a :class:`FileDatasetConfig`) and implement :meth:`source`.
    """

    Config = FileDatasetConfig

    def source(self) -> Source:
        """The source the options point at (no reading yet)."""
        raise NotImplementedError

    def split_map(self, source: Source) -> dict[str, str]:
        """Our split name -> the source's split name."""
        cfg = self.config
        assert isinstance(cfg, FileDatasetConfig)
        return map_splits(source.split_names(), cfg.splits, source=source.path)

    def _limit(self, split: str) -> int | None:
        return limit_for(self.config.limit, split)  # type: ignore[attr-defined]

    def load(self, prompt: Any = None) -> Any:
        """The canonical ``DatasetDict``; instruct rows rendered with ``prompt``."""
        source = self.source()
        source.ensure()
        out = {}
        with paused_gc():
            for ours, theirs in self.split_map(source).items():
                part = source.rows(theirs, self._limit(ours))
                out[ours] = canonical_rows(part.rows, part.kind, prompt)
            return to_dataset_dict(out, file=source.path)

    def describe(self, prompt: Any = None) -> dict[str, Any]:
        """``{"rows": {split: n}, "chars": {split: characters once rendered}}`` (cached per file).

        ``prompt`` (the run's :class:`Prompt`; default ``{input}`` without system message) only changes
        ``chars`` of instruct rows. Empty for sources that need the network.
        """
        source = self.source()
        if not source.local:
            return {}
        source.ensure()
        rows, chars = {}, {}
        for ours, theirs in self.split_map(source).items():
            st = source.stats(theirs, self._limit(ours))
            rows[ours], chars[ours] = st.rows, st.chars(prompt)
        return {"rows": rows, "chars": chars}

    def split_file(self, split: str) -> Path | None:
        """The file one of our splits is read from (named in messages about its rows), or None."""
        source = self.source()
        theirs = self.split_map(source).get(split)
        if theirs is None:
            return None
        if isinstance(source, ChatFolder):
            return source.files().get(theirs)
        return source.file_of(theirs) if isinstance(source, TableSource) else source.path

    def check(self, run: Any) -> None:
        """Plan-time: the data exists, its rows are well formed, and the run's splits are there.

        For a run that trains, every chat row of the splits it trains on (``train``, and ``validation``
        when ``train.validation``) must end with an assistant turn; bad rows are named with their lines.
        """
        source = self.source()
        if not source.local:
            return
        source.ensure()
        mapping = self.split_map(source)
        limit = self.config.limit  # type: ignore[attr-defined]
        if isinstance(limit, dict):
            for split in limit:
                if split not in mapping:
                    raise DataError(f"dataset.limit names split `{split}`, which {shown(source.path)} does not "
                                    f"have (its splits: {', '.join(mapping)}).")
        check_run_splits(run, mapping, source=source.path)
        kinds = {source.stats(theirs, self._limit(ours)).kind for ours, theirs in mapping.items()}
        train = run.spec.get("train")
        if train is not None and CHAT in kinds:
            for ours in ("train", "validation"):
                if ours in mapping and (ours == "train" or train.get("validation", True)):
                    part = source.rows(mapping[ours], self._limit(ours))
                    if part.kind == CHAT:
                        check_training_rows(part.rows, file=part.file, split=ours, lines=part.lines)
        if INSTRUCT in kinds:
            check_template(as_prompt(run.spec.get("prompt")))
            for ev in run.spec.get("eval") or []:
                if ev.get("prompt"):
                    check_template(as_prompt(ev["prompt"]))
