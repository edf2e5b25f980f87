"""The schema YAML: how each column of a table is named, typed and shown (pydantic only).

```yaml
missing_codes: ["", NA, -9]          # cell values that mean "missing", in every column
columns:
  age:    {display: age, type: numeric, unit: years, synonyms: [age in years], shorthand: AGE}
  sex:    {type: categorical, values: {1: male, 2: female}, value_synonyms: {male: [man]}}
  hours:  {display: usual weekly working hours, type: numeric, missing: fill, fill: not reported}
```
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from cruijff_kit import DataError, PluginConfig

Code = str | int | float | bool


def finite_codes(value: Any) -> Any:
    """A ``missing_codes`` list, refusing nan and inf (a NaN cell is missing already; inf is no code)."""
    if isinstance(value, list):
        bad = [c for c in value if isinstance(c, float) and not math.isfinite(c)]
        if bad:
            raise ValueError(f"a missing code must be text or a finite number, not {bad[0]} (empty and NaN cells "
                             "count as missing without one)")
    return value


def code_text(value: Any) -> str:
    """A cell value or a value-map key as text: ``1.0`` and ``1`` both give ``"1"``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value).strip()


class Column(PluginConfig):
    """One column: its display name, type, unit, value map, synonyms and missing-value handling."""

    display: str | None = Field(None, description="Name shown in the text; default: the column name, "
                                "underscores as spaces.")
    type: Literal["numeric", "categorical", "text"] = Field("categorical", description="How values are shown.")
    unit: str | None = Field(None, description="Put after numeric values (`45 years`).")
    decimals: int | None = Field(None, ge=0, le=12, description="Round numeric values to this many decimals.")
    values: dict[str, str] = Field(default_factory=dict, description="Value map: raw code -> text "
                                   "({1: male, 2: female}). Codes not in the map are shown as they are.")
    synonyms: list[str] = Field(default_factory=list, description="Other names of the column (perturbations).")
    shorthand: str | None = Field(None, description="A short name of the column (perturbations).")
    value_synonyms: dict[str, list[str]] = Field(
        default_factory=dict, description="Other texts of a shown value ({male: [man]}) (perturbations).")
    missing: Literal["skip", "drop", "fill"] = Field(
        "skip", description="A missing value: skip the feature, drop the row, or fill in `fill`.")
    fill: str = Field("unknown", description="Text of a missing value with missing: fill.")
    missing_codes: list[Code] = Field(default_factory=list, description="Values meaning missing in this column.")

    @field_validator("missing_codes", mode="before")
    @classmethod
    def _finite_codes(cls, v: Any) -> Any:
        return finite_codes(v)

    @field_validator("values", mode="before")
    @classmethod
    def _keys_as_text(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {code_text(k): str(t) for k, t in v.items()}
        return v

    def name(self, column: str) -> str:
        """The display name of the column."""
        return self.display or column.replace("_", " ")


class Schema(PluginConfig):
    """The whole schema file."""

    columns: dict[str, Column] = Field(..., min_length=1, description="Column name in the file -> how to show it.")
    missing_codes: list[Code] = Field(default_factory=list, description="Values meaning missing in every column.")

    @field_validator("missing_codes", mode="before")
    @classmethod
    def _finite_codes(cls, v: Any) -> Any:
        return finite_codes(v)

    @field_validator("columns", mode="before")
    @classmethod
    def _none_is_default(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): ({} if c is None else c) for k, c in v.items()}
        return v

    def missing_texts(self, column: str) -> set[str]:
        """Codes meaning missing in a column, as text."""
        return {code_text(c) for c in [*self.missing_codes, *self.columns[column].missing_codes]}


def load_schema(path: Path) -> Schema:
    """Read and validate a schema YAML; errors name the file and the key."""
    from cruijff_kit import spec_error_from
    from cruijff_kit.files import read_yaml

    try:
        data = read_yaml(path, what="schema")
    except DataError:
        raise
    except Exception as exc:  # SpecError: already names the file
        raise DataError(str(exc)) from None
    try:
        return Schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        if first["type"] == "extra_forbidden" and len(loc) == 3 and loc[0] == "columns":
            from cruijff_kit import did_you_mean

            raise DataError(f"{path} at `columns.{loc[1]}.{loc[2]}`: unknown key `{loc[2]}`. "
                            f"{did_you_mean(str(loc[2]), Column.model_fields)}") from None
        err = spec_error_from(exc, Schema, file=str(path))
        raise DataError(f"{err} (the schema file describes each column: display, type, unit, values, "
                        "synonyms, shorthand, value_synonyms, missing, fill, missing_codes, decimals).") from None
