"""Options of the tabular generator, shared by ``ck data tabular CONFIG`` and the ``tabular`` plugin.

Light: pydantic only. Paths are relative to the config file's folder (the spec's folder for the plugin).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from cruijff_kit import DatasetConfig, PluginConfig

FORMATS = ("csv", "tsv", "parquet", "stata", "sas", "excel")


class Target(PluginConfig):
    """Which column becomes the answer, and how: a numeric threshold or a value map."""

    column: str = Field(..., description="The column holding the outcome.")
    threshold: float | None = Field(None, description="Numeric outcome: `above` when value > threshold, "
                                    "else `below` (with at_or_above: value >= threshold).")
    at_or_above: bool = Field(False, description="Count a value equal to the threshold as above it.")
    above: str = Field("1", description="Answer for values above the threshold.")
    below: str = Field("0", description="Answer for values at or below the threshold.")
    map: dict[str, str] | None = Field(None, description="Raw code (or its schema text) -> answer, "
                                       "e.g. {1: 'yes', 2: 'no'}.")
    unmapped: Literal["error", "drop"] = Field("error", description="A value the map lacks: an error, "
                                               "or drop the row.")

    @field_validator("map", mode="before")
    @classmethod
    def _keys_as_text(cls, v: Any) -> Any:
        from cruijff_kit_tabular.schema import code_text

        if isinstance(v, dict):
            return {code_text(k): str(t) for k, t in v.items()}
        return v

    @model_validator(mode="after")
    def _one_way(self) -> Target:
        if (self.threshold is None) == (self.map is None):
            raise ValueError("give exactly one of `threshold` (numeric outcome) or `map` (value -> answer)")
        if self.map is not None and not self.map:
            raise ValueError("`map` is empty; map each outcome value to an answer")
        return self

    def labels(self) -> list[str]:
        """The possible answers, in a stable order."""
        if self.map is not None:
            return list(dict.fromkeys(self.map.values()))
        return [self.below, self.above]


class Rewrite(PluginConfig):
    """Rewrite each rendered row with an LLM (a simulator plugin). The row's text is sent to it."""

    simulator: dict[str, Any] = Field(..., description="A simulator section, e.g. {plugin: openai, model: ..., "
                                      "base_url: ...}.")
    instructions: str = Field("Rewrite the following facts about a person as a short, natural paragraph "
                              "in the third person. Keep every fact; add nothing.",
                              description="System message of the rewrite.")
    send_rows: bool = Field(False, description="Opt-in: allow the text of source rows to be sent to the "
                            "simulator's endpoint. Required; recorded in the sidecar.")
    concurrency: int = Field(4, gt=0, le=64, description="Requests at once.")

    @field_validator("simulator")
    @classmethod
    def _has_plugin(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "plugin" not in v:
            raise ValueError("the simulator section needs `plugin:` (e.g. openai)")
        return v


class Template(PluginConfig):
    """How a row's features become text."""

    kind: Literal["dictionary", "narrative"] = Field(
        "dictionary", description="dictionary: one line per feature; narrative: a Jinja2 template file.")
    line: str = Field("The {name} is: {value}.", description="dictionary: text of one feature "
                      "({name}, {value}).")
    separator: str = Field("\n", description="dictionary: between features.")
    file: str | None = Field(None, description="narrative: the Jinja2 template file (features by column name).")
    rewrite: Rewrite | None = Field(None, description="Rewrite each rendered row with an LLM (sends row text "
                                    "off this machine only with rewrite.send_rows: true).")

    @model_validator(mode="after")
    def _file_for_narrative(self) -> Template:
        if self.kind == "narrative" and not self.file:
            raise ValueError("a narrative template needs `file:` (a Jinja2 template)")
        if self.kind == "dictionary" and self.file:
            raise ValueError("`file` applies to kind: narrative; set kind: narrative or remove file")
        if "{value}" not in self.line:
            raise ValueError("`line` must contain {value}")
        return self


class Context(PluginConfig):
    """Text that frames every row: before the features (preamble) or as the system prompt."""

    text: str = Field(..., min_length=1)
    placement: Literal["preamble", "system"] = Field("preamble", description="preamble: before the features in "
                                                     "the input; system: the system prompt of every row.")


class Perturb(PluginConfig):
    """Seeded perturbations of the rendered text."""

    synonyms: float = Field(0.0, ge=0.0, le=1.0, description="Chance that a feature's name (and value) is "
                            "replaced by one of its synonyms.")
    shorthand: float = Field(0.0, ge=0.0, le=1.0, description="Chance that a feature's name is its shorthand.")
    shuffle: Literal["none", "dataset", "row"] = Field(
        "none", description="Feature order: as listed, one shuffled order for all rows, or each row its own.")
    copies: PositiveInt | dict[str, PositiveInt] = Field(
        1, description="Renderings per source row (each its own draw), or {split: N}.")
    splits: list[str] | None = Field(None, description="Splits that get perturbations (default: all).")

    def copies_for(self, split: str) -> int:
        """Renderings per row in a split."""
        return self.copies if isinstance(self.copies, int) else int(self.copies.get(split, 1))

    def applies(self, split: str) -> bool:
        """True when the split gets perturbations."""
        return self.splits is None or split in self.splits


class TabularOptions(DatasetConfig):
    """Everything that decides a tabular dataset (all of it is hashed into the output's name)."""

    source: str = Field(..., description="The table: .csv, .tsv, .parquet, .dta (Stata), .sas7bdat/.xpt (SAS), "
                        ".xlsx/.xls (Excel).")
    schema_file: str = Field(..., description="The schema YAML describing the columns.")
    format: Literal["auto", "csv", "tsv", "parquet", "stata", "sas", "excel"] = Field(
        "auto", description="File format; auto = by the file's extension.")
    sheet: str | int | None = Field(None, description="Excel: the sheet (name or 0-based index).")
    features: list[str] | None = Field(None, description="Columns shown, in order (default: every schema "
                                       "column but the target, in schema order).")
    target: Target
    template: Template = Field(default_factory=Template)
    question: str | None = Field(None, description="Text after the features (the question the answer answers).")
    context: Context | None = None
    perturb: Perturb = Field(default_factory=Perturb)
    splits: dict[str, float] = Field(default_factory=lambda: {"train": 0.8, "validation": 0.1, "test": 0.1},
                                     description="Split name -> share of the rows (shares sum to 1).")
    stratify: bool = Field(True, description="Keep each answer's share the same in every split.")
    balance: bool | list[str] = Field(False, description="Downsample majority answers: true = every split, "
                                      "or a list of splits.")
    subsample: PositiveInt | dict[str, PositiveInt] | None = Field(
        None, description="At most N rows per split after balancing, or {split: N} (seeded).")
    seed: int = Field(0, ge=0, lt=2**32, description="Seed of splits, balancing, subsampling and perturbations.")

    @field_validator("splits")
    @classmethod
    def _shares(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("give at least one split, e.g. {train: 0.8, test: 0.2}")
        if any(s <= 0 for s in v.values()):
            raise ValueError("every split's share must be above 0")
        if abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError(f"the split shares sum to {sum(v.values()):g}; they must sum to 1")
        return v

    @model_validator(mode="after")
    def _known_splits(self) -> TabularOptions:
        named: list[tuple[str, list[str]]] = [
            ("balance", self.balance if isinstance(self.balance, list) else []),
            ("subsample", list(self.subsample) if isinstance(self.subsample, dict) else []),
            ("perturb.copies", list(self.perturb.copies) if isinstance(self.perturb.copies, dict) else []),
            ("perturb.splits", self.perturb.splits or []),
        ]
        for where, names in named:
            bad = [n for n in names if n not in self.splits]
            if bad:
                raise ValueError(f"{where} names split `{bad[0]}`, which `splits` does not define "
                                 f"({', '.join(self.splits)})")
        if self.template.kind == "narrative" and self.perturb.shuffle != "none":
            raise ValueError("perturb.shuffle reorders the lines of a dictionary template; a narrative "
                             "template fixes its own order")
        if self.features is not None:
            if not self.features:
                raise ValueError("`features` is empty; list the columns to show, or remove it")
            if self.target.column in self.features:
                raise ValueError(f"the target column `{self.target.column}` is also a feature: the answer "
                                 "would be in the input. Remove it from `features`")
            dup = [f for f in self.features if self.features.count(f) > 1]
            if dup:
                raise ValueError(f"feature `{dup[0]}` is listed twice")
        return self

    def balanced(self, split: str) -> bool:
        """True when the split is class-balanced."""
        return self.balance is True or (isinstance(self.balance, list) and split in self.balance)

    def subsample_for(self, split: str) -> int | None:
        """The row cap of a split, if any."""
        if self.subsample is None or isinstance(self.subsample, int):
            return self.subsample
        return self.subsample.get(split)

    def generator_settings(self) -> dict[str, Any]:
        """The options that decide the rows (paths excluded: the files' contents are hashed instead)."""
        return self.model_dump(mode="json", exclude={"source", "schema_file", "cache_dir"},
                               exclude_none=False) | {"template": self.template.model_dump(mode="json",
                                                                                         exclude={"file"})}
