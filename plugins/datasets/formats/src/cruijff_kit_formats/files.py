"""The file-format plugins: json-instruct, json-chat and parquet (readers live in the core)."""

from __future__ import annotations

from pydantic import Field

from cruijff_kit.data import ChatFolder, FileDatasetConfig, InstructFile, ParquetFolder, SourceDataset


class JsonInstruct(SourceDataset):
    """One JSON file with ``train``/``validation``/``test`` lists of ``{input, output}`` rows."""

    name = "json-instruct"
    description = "One JSON file with train/validation/test lists of {input, output} rows."

    class Config(FileDatasetConfig):
        """Options of json-instruct."""

        path: str = Field(..., description="The JSON file (relative to the spec file's folder).")

    def source(self) -> InstructFile:
        return InstructFile(self.path(self.config.path))  # type: ignore[attr-defined]


class JsonChat(SourceDataset):
    """A folder with ``train.json``/``validation.json``/``test.json`` (or ``.jsonl``) of chat rows."""

    name = "json-chat"
    description = "A folder with train/validation/test .json or .jsonl files of {messages: [...]} rows."

    class Config(FileDatasetConfig):
        """Options of json-chat."""

        path: str = Field(..., description="The folder (relative to the spec file's folder).")

    def source(self) -> ChatFolder:
        return ChatFolder(self.path(self.config.path))  # type: ignore[attr-defined]


class Parquet(SourceDataset):
    """A folder with one parquet file per split; rows are instruct (input/output) or chat (messages)."""

    name = "parquet"
    description = "A folder with train/validation/test .parquet files of instruct or chat rows."

    class Config(FileDatasetConfig):
        """Options of parquet."""

        path: str = Field(..., description="The folder (relative to the spec file's folder).")

    def source(self) -> ParquetFolder:
        return ParquetFolder(self.path(self.config.path))  # type: ignore[attr-defined]
