"""Turn one table row into text: value formatting, the dictionary and narrative templates, perturbations."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cruijff_kit import DataError
from cruijff_kit.data import shown, suggest
from cruijff_kit_tabular.options import Perturb, TabularOptions
from cruijff_kit_tabular.schema import Column, Schema, code_text

#: Names a narrative template may use besides the feature columns.
TEMPLATE_GLOBALS = ("names", "raw", "row")


def to_number(text: str) -> float | None:
    """``"45"`` -> 45.0; None when the text is not a finite number (``nan``, ``inf`` and ``1e999`` are not)."""
    try:
        value = float(text.replace(",", "")) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def format_value(column: str, col: Column, text: str, *, file: Path) -> str:
    """The shown text of a present cell: mapped, rounded, with its unit."""
    if text in col.values:
        shown_text = col.values[text]
    else:
        num = to_number(text)
        key = code_text(num) if num is not None else None
        if key is not None and key in col.values:
            shown_text = col.values[key]
        elif col.type == "numeric":
            if num is None:
                raise DataError(f"{shown(file)}: column `{column}` is numeric in the schema, but holds "
                                f"{text!r}. Add it to the column's missing_codes, map it in `values`, or "
                                "make the column categorical.")
            if col.decimals is not None:
                num = round(num, col.decimals)
                shown_text = f"{num:.{col.decimals}f}"
            else:
                shown_text = code_text(num) if num.is_integer() else format(num, ".10g")
        else:
            shown_text = text
    if col.unit and col.type == "numeric":
        shown_text = f"{shown_text} {col.unit}"
    return shown_text


@dataclass
class Feature:
    """A feature of one row, ready to render: its column, shown name and shown value (None = missing)."""

    column: str
    name: str
    value: str | None
    raw: str | None


class Renderer:
    """Renders rows of a table as the input text of an instruct row."""

    def __init__(self, options: TabularOptions, schema: Schema, features: list[str], *, schema_path: Path,
                 source: Path, template_path: Path | None) -> None:
        self.o, self.schema, self.features = options, schema, features
        self.schema_path, self.source, self.template_path = schema_path, source, template_path
        self._template: Any = None
        if options.template.kind == "narrative":
            assert template_path is not None
            self._template = load_template(template_path, features, options.target.column)
        self._order = list(features)
        if options.perturb.shuffle == "dataset":
            random.Random(f"{options.seed}:order").shuffle(self._order)

    # -- one row
    def features_of(self, cells: dict[str, str | None], rng: random.Random | None) -> list[Feature]:
        """The row's features with names and values, perturbed with ``rng`` when given."""
        out = []
        for column in self.features:
            col = self.schema.columns[column]
            raw = cells.get(column)
            value = None if raw is None else format_value(column, col, raw, file=self.source)
            if value is None and col.missing == "fill":
                value = col.fill
            name = col.name(column)
            if rng is not None:
                name, value = perturb_feature(col, name, value, self.o.perturb, rng)
            out.append(Feature(column, name, value, raw))
        return out

    def text(self, cells: dict[str, str | None], row: int, rng: random.Random | None) -> str:
        """The features' text (dictionary lines or the narrative) of one row."""
        feats = self.features_of(cells, rng)
        if self._template is not None:
            return render_narrative(self._template, feats, row, self.template_path)
        by_column = {f.column: f for f in feats}
        order = list(self._order) if rng is not None else list(self.features)
        if rng is not None and self.o.perturb.shuffle == "row":
            rng.shuffle(order)
        t = self.o.template
        lines = [t.line.replace("{name}", by_column[c].name).replace("{value}", by_column[c].value or "")
                 for c in order if by_column[c].value is not None]
        return t.separator.join(lines)

    def input(self, features_text: str) -> str:
        """The whole input: preamble context, the features, the question."""
        parts = []
        if self.o.context is not None and self.o.context.placement == "preamble":
            parts.append(self.o.context.text.strip())
        parts.append(features_text)
        if self.o.question:
            parts.append(self.o.question.strip())
        return "\n\n".join(p for p in parts if p)


def perturb_feature(col: Column, name: str, value: str | None, p: Perturb, rng: random.Random
                    ) -> tuple[str, str | None]:
    """Maybe swap the name for a synonym or the shorthand, and the value for one of its synonyms.

    Draws a fixed number of random numbers per feature, so one column's options never shift the draws of
    the next.
    """
    u_name, u_short, u_value = rng.random(), rng.random(), rng.random()
    pick_name, pick_value = rng.random(), rng.random()
    if col.synonyms and u_name < p.synonyms:
        name = col.synonyms[int(pick_name * len(col.synonyms))]
    elif col.shorthand and u_short < p.shorthand:
        name = col.shorthand
    if value is not None:
        base, unit = value, ""
        if col.unit and col.type == "numeric" and value.endswith(" " + col.unit):
            base, unit = value[: -len(col.unit) - 1], " " + col.unit
        options = col.value_synonyms.get(base)
        if options and u_value < p.synonyms:
            value = options[int(pick_value * len(options))] + unit
    return name, value


# --------------------------------------------------------------------------- narrative templates
def load_template(path: Path, features: list[str], target: str) -> Any:
    """Compile a Jinja2 template file; every name it uses must be a feature (or names/raw/row)."""
    import jinja2
    from jinja2 import meta

    if not path.is_file():
        raise DataError(f"{shown(path)}: the narrative template does not exist. Check `template.file` "
                        "(relative to the config or spec file's folder).")
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{shown(path)}: the template is not UTF-8 text.") from None
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)
    try:
        parsed = env.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise DataError(f"{shown(path)}: Jinja2 syntax error at line {exc.lineno}: {exc.message}.") from None
    used = sorted(meta.find_undeclared_variables(parsed))
    for name in used:
        if name == target:
            raise DataError(f"{shown(path)}: the template uses `{name}`, the target column: the answer would "
                            "be in the input. Remove it from the template.")
        if name not in features and name not in TEMPLATE_GLOBALS:
            raise DataError(f"{shown(path)}: the template uses `{name}`, which is not a feature (features: "
                            f"{', '.join(features)}).{suggest(name, features)} Fix the template, or add the "
                            "column to `features` and the schema.")
    return env.from_string(source)


def render_narrative(template: Any, feats: list[Feature], row: int, path: Path | None) -> str:
    """Render one row: each feature by column name (None when missing); ``names``, ``raw``, ``row``."""
    import jinja2

    values: dict[str, Any] = {f.column: f.value for f in feats}
    values["names"] = {f.column: f.name for f in feats}
    values["raw"] = {f.column: f.raw for f in feats}
    values["row"] = row
    try:
        return template.render(**values).strip()
    except jinja2.UndefinedError as exc:
        raise DataError(f"{shown(path or 'template')}: rendering source row {row}: {exc.message}. Fix the "
                        "template (a feature's value is None when the cell is missing: use "
                        "{% if column %}...{% endif %}).") from None
    except (TypeError, ValueError) as exc:
        raise DataError(f"{shown(path or 'template')}: rendering source row {row}: {exc}.") from None
