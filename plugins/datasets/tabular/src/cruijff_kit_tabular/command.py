"""``ck data tabular CONFIG DST``: generate a dataset from a table, outside of any experiment."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("tabular")
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("dst", type=click.Path())
@click.option("--force", is_flag=True, help="Generate again even when an identical file (of ck's) exists.")
@click.option("--overwrite", is_flag=True, help="Write over a file at DST that ck did not generate.")
def tabular_command(config: str, dst: str, force: bool, overwrite: bool) -> None:
    """Render a table (CSV, TSV, parquet, Stata, SAS, Excel) as an instruct dataset.

    CONFIG is a YAML file with the options of the `tabular` dataset plugin (source, schema_file, target,
    template, splits...; paths relative to it). DST is a folder (the file is named by a content hash)
    or a .json file. A .meta.json sidecar records the inputs and their sha256.
    """
    from pydantic import ValidationError

    from cruijff_kit import DataError, spec_error_from
    from cruijff_kit.files import read_yaml
    from cruijff_kit_tabular.generate import build
    from cruijff_kit_tabular.options import TabularOptions

    path = Path(config)
    data = read_yaml(path, what="tabular config")
    try:
        options = TabularOptions.model_validate(data)
    except ValidationError as exc:
        raise DataError(str(spec_error_from(exc, TabularOptions, file=str(path)))) from None
    built = build(options, path.resolve().parent, Path(dst), force=force, overwrite=overwrite)
    rows = ", ".join(f"{s} {n}" for s, n in built.meta.get("rows", {}).items())
    verb = "Reused" if built.reused else "Wrote"
    click.echo(f"{verb} {built.path} ({rows}; key {built.meta.get('key')})")
