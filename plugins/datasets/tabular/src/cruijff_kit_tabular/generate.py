"""The tabular pipeline: table -> answers -> seeded splits (stratified, balanced, subsampled) -> text rows.

:func:`prepare` checks the options against the files (schema, template, the table's columns);
:func:`build` writes our JSON instruct format named by a content hash, with a ``.meta.json`` sidecar,
or reuses the file when one with the same hash exists.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cruijff_kit import DataError
from cruijff_kit import data as provenance
from cruijff_kit.data import shown, suggest
from cruijff_kit_tabular.options import TabularOptions
from cruijff_kit_tabular.read import cell_text, detect_format, read_table
from cruijff_kit_tabular.render import Renderer, to_number
from cruijff_kit_tabular.schema import Schema, code_text, load_schema

#: Bumped when the same inputs would give different rows.
GENERATOR_VERSION = 1
PREFIX = "tabular"


@dataclass
class Prepared:
    """Options with their files resolved and checked."""

    options: TabularOptions
    source: Path
    schema_path: Path
    schema: Schema
    features: list[str]
    template: Path | None
    base_dir: Path
    columns: list[str] = field(default_factory=list)

    def key(self) -> str:
        """The content hash of everything that decides the rows."""
        files = [provenance.sha256_file(self.source), provenance.sha256_file(self.schema_path)]
        if self.template is not None:
            files.append(provenance.sha256_file(self.template))
        return provenance.content_key(PREFIX, GENERATOR_VERSION, self.options.generator_settings(), files)


def _path(base_dir: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base_dir / p).resolve()


def _near(name: str, choices: list[str]) -> str:
    """A did-you-mean hint; names differing only in case are pointed out (SAS and Stata often use capitals)."""
    same = [c for c in choices if c.lower() == name.lower()]
    if same:
        return f" Names are case-sensitive: the file has `{same[0]}`."
    return suggest(name, choices)


def prepare(options: TabularOptions, base_dir: Path, *, table_columns: list[str] | None = None) -> Prepared:
    """Resolve paths and check the schema, features, target and template against each other.

    ``table_columns``: the source's columns when already known (else they are read from the file).
    """
    source = _path(base_dir, options.source)
    schema_path = _path(base_dir, options.schema_file)
    if not schema_path.is_file():
        raise DataError(f"{shown(schema_path)}: the schema file does not exist. Check `schema_file` (relative "
                        "paths are relative to the config or spec file's folder).")
    schema = load_schema(schema_path)
    target = options.target.column
    features = list(options.features) if options.features is not None else [c for c in schema.columns if c != target]
    if not features:
        raise DataError(f"{shown(schema_path)}: the schema describes no column besides the target `{target}`. "
                        "Describe the feature columns in it.")
    for f in features:
        if f not in schema.columns:
            raise DataError(f"feature `{f}` is not described in {shown(schema_path)} (its columns: "
                            f"{', '.join(schema.columns)}).{suggest(f, schema.columns)} Add it to the schema "
                            "or remove it from `features`.")
    columns = table_columns if table_columns is not None else source_columns(source, options.format, options.sheet)
    for c in schema.columns:
        if c not in columns:
            raise DataError(f"{shown(schema_path)}: column `{c}` is not in {shown(source)} (its columns: "
                            f"{', '.join(columns)}).{_near(c, columns)} Fix the schema's column name, or remove "
                            "the column from the schema.")
    if target not in columns:
        raise DataError(f"target.column `{target}` is not a column of {shown(source)} (its columns: "
                        f"{', '.join(columns)}).{_near(target, columns)} Set target.column to the outcome "
                        "column.")
    template = _path(base_dir, options.template.file) if options.template.file else None
    prepared = Prepared(options, source, schema_path, schema, features, template, base_dir, list(columns))
    if template is not None:
        from cruijff_kit_tabular.render import load_template

        load_template(template, features, target)
    if options.template.rewrite is not None and not options.template.rewrite.send_rows:
        raise DataError(f"{shown(schema_path)}: template.rewrite sends the text of every source row to the "
                        f"`{options.template.rewrite.simulator.get('plugin')}` simulator's endpoint, which may be "
                        "off this machine. Nothing leaves the machine without an opt-in: set "
                        "template.rewrite.send_rows: true if that is allowed for this data, or remove "
                        "template.rewrite.")
    return prepared


def source_columns(path: Path, fmt: str = "auto", sheet: str | int | None = None) -> list[str]:
    """The table's column names (only the header for CSV, TSV and parquet)."""
    kind = detect_format(path, fmt) if path.exists() else None
    if kind in ("csv", "tsv") and path.is_file():
        import csv

        try:
            with path.open(encoding="utf-8", newline="") as fh:
                header = next(csv.reader(fh, delimiter="," if kind == "csv" else "\t"), [])
            return [h.lstrip("\ufeff") for h in header]
        except UnicodeDecodeError:
            pass  # read_table gives the full message
    if kind == "parquet" and path.is_file():
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except Exception:
            pass
    return list(read_table(path, fmt, sheet).columns)


# --------------------------------------------------------------------------- rows and answers
def answer_of(text: str | None, p: Prepared, row: int) -> str | None:
    """The answer of a target cell; None when the cell is missing or (unmapped: drop) has no answer."""
    t = p.options.target
    if text is None:
        return None
    col = p.schema.columns.get(t.column)
    if t.threshold is not None:
        num = to_number(text)
        if num is None:
            raise DataError(f"{shown(p.source)}: target column `{t.column}`, source row {row}: {text!r} is not a "
                            "number, but target.threshold needs numbers. Add it to the schema's missing_codes, "
                            "or use target.map.")
        return t.above if (num >= t.threshold if t.at_or_above else num > t.threshold) else t.below
    assert t.map is not None
    keys = [text]
    num = to_number(text)
    if num is not None:
        keys.append(code_text(num))
    if col is not None:
        keys += [col.values[k] for k in list(keys) if k in col.values]
    for k in keys:
        if k in t.map:
            return t.map[k]
    if t.unmapped == "drop":
        return None
    raise DataError(f"{shown(p.source)}: target column `{t.column}`, source row {row}: value {text!r} is not in "
                    f"target.map (it maps {', '.join(repr(k) for k in t.map)}). Add it to the map, or set "
                    "target.unmapped: drop.")


@dataclass
class Table:
    """The usable rows: source row number -> cells (text or None), and the answers."""

    cells: dict[int, dict[str, str | None]]
    answers: dict[int, str]
    counts: dict[str, int]


def load_rows(p: Prepared) -> Table:
    """Read the source; drop rows without an answer or with a missing `missing: drop` feature."""
    df = read_table(p.source, p.options.format, p.options.sheet)
    target = p.options.target.column
    wanted = [*p.features, target]
    missing_codes = {c: (p.schema.missing_texts(c) if c in p.schema.columns
                         else {code_text(m) for m in p.schema.missing_codes}) for c in wanted}
    counts = Counter({"source_rows": len(df), "dropped_missing_target": 0, "dropped_unmapped_target": 0,
                      "dropped_missing_feature": 0})
    cells: dict[int, dict[str, str | None]] = {}
    answers: dict[int, str] = {}
    records = df[wanted].to_dict(orient="list")
    for i in range(len(df)):
        row: dict[str, str | None] = {}
        for c in wanted:
            text = cell_text(records[c][i])
            row[c] = None if text is None or text in missing_codes[c] else text
        if row[target] is None:
            counts["dropped_missing_target"] += 1
            continue
        answer = answer_of(row[target], p, i)
        if answer is None:
            counts["dropped_unmapped_target"] += 1
            continue
        if any(row[f] is None and p.schema.columns[f].missing == "drop" for f in p.features):
            counts["dropped_missing_feature"] += 1
            continue
        del row[target]
        cells[i], answers[i] = row, answer
    counts["kept"] = len(cells)
    if not cells:
        raise DataError(f"{shown(p.source)}: no row is left after dropping rows with a missing target "
                        f"({counts['dropped_missing_target']}), an unmapped target "
                        f"({counts['dropped_unmapped_target']}) or a missing `missing: drop` feature "
                        f"({counts['dropped_missing_feature']}). Check target and the schema's missing codes.")
    return Table(cells, answers, dict(counts))


# --------------------------------------------------------------------------- splits
def allocate(n: int, shares: dict[str, float]) -> dict[str, int]:
    """Split ``n`` items by shares (largest remainder; ties to the split listed first)."""
    exact = {k: n * s for k, s in shares.items()}
    counts = {k: int(v) for k, v in exact.items()}
    left = n - sum(counts.values())
    order = sorted(shares, key=lambda k: (-(exact[k] - counts[k]), list(shares).index(k)))
    for k in order[:left]:
        counts[k] += 1
    return counts


def split_rows(ids: list[int], answers: dict[int, str], o: TabularOptions) -> dict[str, list[int]]:
    """Seeded splits of row ids (stratified by answer when ``o.stratify``), each in a shuffled order."""
    rng = random.Random(o.seed)
    out: dict[str, list[int]] = {s: [] for s in o.splits}
    groups = ([sorted(i for i in ids if answers[i] == a) for a in sorted(set(answers[i] for i in ids))]
              if o.stratify else [sorted(ids)])
    for group in groups:
        rng.shuffle(group)
        start = 0
        for split, n in allocate(len(group), o.splits).items():
            out[split] += group[start:start + n]
            start += n
    for split in out:
        rng.shuffle(out[split])
    return out


def balance(ids: list[int], answers: dict[int, str], rng: random.Random) -> list[int]:
    """Downsample every answer to the rarest answer's count (order kept)."""
    by: dict[str, list[int]] = {}
    for i in ids:
        by.setdefault(answers[i], []).append(i)
    if len(by) < 2:
        return ids
    m = min(len(v) for v in by.values())
    keep: set[int] = set()
    for a in sorted(by):
        keep.update(rng.sample(by[a], m))
    return [i for i in ids if i in keep]


def subsample(ids: list[int], n: int | None, rng: random.Random) -> list[int]:
    """At most ``n`` ids, seeded (order kept)."""
    if n is None or len(ids) <= n:
        return ids
    keep = set(rng.sample(ids, n))
    return [i for i in ids if i in keep]


# --------------------------------------------------------------------------- generation
def generate(p: Prepared) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """The rows of every split and the facts for the sidecar."""
    o = p.options
    table = load_rows(p)
    ids = sorted(table.cells)
    parts = split_rows(ids, table.answers, o)
    facts: dict[str, Any] = {"counts": table.counts, "split_rows": {}, "classes": {}, "source_classes": {}}
    for split in parts:
        before = len(parts[split])
        if o.balanced(split):
            parts[split] = balance(parts[split], table.answers, random.Random(f"{o.seed}:balance:{split}"))
        parts[split] = subsample(parts[split], o.subsample_for(split), random.Random(f"{o.seed}:subsample:{split}"))
        facts["split_rows"][split] = {"split": before, "kept": len(parts[split])}
        if not parts[split]:
            raise DataError(f"{shown(p.source)}: split `{split}` gets no rows ({table.counts['kept']} usable rows, "
                            f"share {o.splits[split]:g}). Give it a larger share, or use more data.")
    renderer = Renderer(o, p.schema, p.features, schema_path=p.schema_path, source=p.source,
                        template_path=p.template)
    perturbing = o.perturb.synonyms > 0 or o.perturb.shorthand > 0 or o.perturb.shuffle != "none"
    splits: dict[str, list[dict[str, Any]]] = {}
    for split, rows in parts.items():
        copies = o.perturb.copies_for(split)
        active = perturbing and o.perturb.applies(split)
        out = []
        for i in rows:
            for c in range(copies):
                rng = random.Random(f"{o.seed}:{i}:{c}") if active else None
                text = renderer.text(table.cells[i], i, rng)
                row: dict[str, Any] = {"input": text, "output": table.answers[i], "row": i}
                if copies > 1:
                    row["copy"] = c
                out.append(row)
        splits[split] = out
        facts["classes"][split] = dict(sorted(Counter(table.answers[i] for i in rows).items()))
    facts["source_classes"] = dict(sorted(Counter(table.answers.values()).items()))
    if o.template.rewrite is not None:
        from cruijff_kit_tabular.remote import rewrite_rows

        facts["rewrite"] = rewrite_rows(splits, o.template.rewrite, o.seed)
    for rows in splits.values():
        for row in rows:
            row["input"] = renderer.input(row["input"])
    return splits, facts


def system_prompt(o: TabularOptions) -> str | None:
    """The context text when it is placed as the system prompt."""
    return o.context.text.strip() if o.context is not None and o.context.placement == "system" else None


def metadata(p: Prepared, key: str, facts: dict[str, Any]) -> dict[str, Any]:
    """The sidecar content (rows and the data's sha256 are added on write)."""
    o = p.options
    rewrite = o.template.rewrite
    steps = []
    if rewrite is not None:
        sim = {k: v for k, v in rewrite.simulator.items() if "key" not in k.lower() or k == "api_key_env"}
        steps.append({"step": "template.rewrite", "opt_in": "template.rewrite.send_rows", "simulator": sim,
                      "rows_sent": facts.get("rewrite", {}).get("rows_sent", 0)})
    return {
        "key": key,
        "generator": {"name": PREFIX, "version": GENERATOR_VERSION},
        "seed": o.seed,
        "source": {**provenance.describe_file(p.source), "format": detect_format(p.source, o.format)},
        "schema": provenance.describe_file(p.schema_path),
        "template": provenance.describe_file(p.template) if p.template else None,
        "features": p.features,
        "target": o.target.model_dump(mode="json"),
        "labels": o.target.labels(),
        "system_prompt": system_prompt(o),
        "privacy": {"rows_left_machine": bool(steps), "steps": steps},
        **{k: v for k, v in facts.items() if k != "rewrite"},
        "settings": o.generator_settings(),
    }


@dataclass
class Built:
    """A generated (or reused) dataset file."""

    path: Path
    reused: bool
    meta: dict[str, Any]


def build(options: TabularOptions, base_dir: Path, dst: Path, *, force: bool = False,
          overwrite: bool = False) -> Built:
    """Generate the dataset into ``dst`` (a folder, or a ``.json`` file), or reuse an identical one.

    ``force`` generates again over an output of ours; a file without a ``.meta.json`` sidecar (not
    generated by cruijff-kit) is written over only with ``overwrite``.
    """
    from cruijff_kit.files import check_writable, locked

    p = prepare(options, base_dir)
    key = p.key()
    out = provenance.output_path(dst, PREFIX, key)
    with locked(out.with_name("." + out.name)):
        if not force and provenance.find_cached(out, key):
            return Built(out, True, provenance.read_meta(out) or {})
        if check_writable(out, command="ck data tabular", overwrite=overwrite, error=DataError,
                          ours=lambda f: f.is_file() and provenance.read_meta(f) is not None) and out.is_dir():
            raise DataError(f"ck data tabular: {out} is a folder; --overwrite replaces files only. Give another "
                            "DST.")
        splits, facts = generate(p)
        meta = metadata(p, key, facts)
        provenance.write_with_meta(out, splits, meta)
    return Built(out, False, provenance.read_meta(out) or meta)
