"""The ``hf`` dataset plugin: anything ``datasets`` can open (hub id, builder with data files, saved folder)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field

from cruijff_kit import DataError
from cruijff_kit.data import (
    ArrowDir,
    Columns,
    FileDatasetConfig,
    Source,
    SourceDataset,
    TableSource,
    file_identity,
    order_splits,
    shown,
)

#: Builders shipped inside ``datasets`` that read local files named by ``data_files``.
BUILDERS = ("json", "csv", "parquet", "arrow", "text", "pandas")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

DataFiles = str | list[str] | dict[str, str | list[str]]


class HfConfig(FileDatasetConfig):
    """Options of the hf plugin."""

    path: str = Field(..., description="A folder saved with save_to_disk, a folder of data files, a builder "
                      "(json, csv, parquet, ...) used with data_files, or a hub dataset id.")
    config_name: str | None = Field(None, description="The dataset's configuration (subset) name.")
    data_files: DataFiles | None = Field(
        None, description="Files for a builder: one path or glob, a list, or {split: path(s)}; relative "
        "to the spec file's folder.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    input_column: str = Field("input", description="Column holding the instruct input.")
    output_column: str = Field("output", description="Column holding the instruct output (the target).")
    messages_column: str | None = Field(
        None, description="Column holding chat messages; default `messages` when there is such a column.")


class HfSource(TableSource):
    """A dataset opened with ``datasets.load_dataset`` (hub id, builder with data files, or local folder)."""

    def __init__(self, id: str, *, path: Path, config_name: str | None, data_files: DataFiles | None,
                 revision: str | None, columns: Columns) -> None:
        super().__init__(path, columns)
        #: As written in the spec: a builder name, a hub id, or a local folder.
        self.id = id
        self.config_name, self.data_files, self.revision = config_name, data_files, revision
        #: False for a hub id (no local folder of that name): split names need the network.
        self.local = id in BUILDERS or path.exists()
        self._dd: Any = None

    # -- where the data is
    def files(self) -> list[Path]:
        """The local files the dataset is read from (for the cache key)."""
        if self.id not in BUILDERS:
            return [p for p in sorted(self.path.rglob("*")) if p.is_file() and not p.name.startswith(".")]
        out: list[Path] = []
        for pattern in _patterns(self.data_files):
            p = Path(pattern)
            found = sorted(Path(p.anchor).glob(str(p.relative_to(p.anchor)))) if p.is_absolute() else [p]
            if not found or not all(f.exists() for f in found):
                raise DataError(f"dataset.data_files: {shown(pattern)} matches no file. Check the path (relative "
                                "paths are relative to the spec file's folder).")
            out += found
        return out

    def ensure(self) -> None:
        if self.id in BUILDERS:
            if not self.data_files:
                raise DataError(f"dataset.path `{self.id}` is a builder that reads local files: set "
                                "dataset.data_files (e.g. {train: data/train.jsonl}).")
            self.files()
        elif self.local:
            super().ensure()

    def identity(self) -> tuple[Any, ...]:
        if not self.local:
            return ("hub", self.id, self.config_name, self.revision)
        return (self.id, self.config_name, str(self.data_files), file_identity(self.files()))

    # -- reading
    def dataset_dict(self) -> Any:
        """The ``DatasetDict`` as ``datasets`` loads it (a single Dataset becomes split ``train``)."""
        if self._dd is None:
            self.ensure()
            self._dd = self._load()
        return self._dd

    def _load(self) -> Any:
        import datasets

        target = self.id if self.id in BUILDERS or not self.local else str(self.path)
        try:
            loaded = datasets.load_dataset(target, self.config_name, data_files=self.data_files,
                                           revision=self.revision)
        except Exception as exc:  # datasets raises many types; all mean "could not load this"
            raise self._load_error(exc) from None
        if isinstance(loaded, datasets.Dataset):
            loaded = datasets.DatasetDict({"train": loaded})
        return loaded

    def _load_error(self, exc: Exception) -> DataError:
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        if self.local:
            return DataError(f"datasets could not read `{self.id}` ({reason}). Check dataset.path, "
                             "dataset.data_files and dataset.config_name.")
        return DataError(f"could not load `{self.id}` from the dataset hub ({reason}); there is no local folder "
                         f"{shown(self.path)} either. Check the id and the network (HF_HUB_OFFLINE=1 forbids "
                         "downloads; private datasets need HF_TOKEN), or save the dataset with save_to_disk "
                         "where the hub is reachable and set dataset.path to that folder.")

    def _split_names(self) -> list[str]:
        return order_splits(list(self.dataset_dict()))

    def table(self, split: str) -> Any:
        dd = self.dataset_dict()
        if split not in dd:
            raise self._unknown_split(split)
        return dd[split].with_format("arrow")[:]

    def file_of(self, split: str) -> Path:
        return Path(self.id) if self.id in BUILDERS or not self.local else self.path


def _patterns(data_files: DataFiles | None) -> list[str]:
    if data_files is None:
        return []
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, list):
        return list(data_files)
    return [p for v in data_files.values() for p in ([v] if isinstance(v, str) else v)]


class HfDataset(SourceDataset):
    """Any dataset ``datasets`` can open: a saved folder, local data files, or a hub id."""

    name = "hf"
    description = "A dataset on disk (save_to_disk or data files) or on the hub, via the datasets library."
    Config = HfConfig

    def source(self) -> Source:
        cfg = self.config
        assert isinstance(cfg, HfConfig)
        columns = Columns(cfg.input_column, cfg.output_column, cfg.messages_column)
        local = self.path(cfg.path)
        if ArrowDir.recognises(local):
            return ArrowDir(local, columns)
        if cfg.path not in BUILDERS and not local.exists() and not _HUB_ID.match(cfg.path):
            raise DataError(f"dataset.path: {shown(local)} does not exist (and `{cfg.path}` is not a hub id). "
                            "Check the path (relative paths are relative to the spec file's folder).")
        return HfSource(cfg.path, path=local, config_name=cfg.config_name,
                        data_files=self._data_files(cfg.data_files), revision=cfg.revision, columns=columns)

    def _data_files(self, data_files: DataFiles | None) -> DataFiles | None:
        """The data files with relative paths resolved against the spec file's folder."""
        if data_files is None:
            return None
        if isinstance(data_files, str):
            return str(self.path(data_files))
        if isinstance(data_files, list):
            return [str(self.path(p)) for p in data_files]
        return {k: (str(self.path(v)) if isinstance(v, str) else [str(self.path(p)) for p in v])
                for k, v in data_files.items()}
