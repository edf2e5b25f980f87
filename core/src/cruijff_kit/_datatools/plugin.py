"""The data tools as a default plugin: the ``ck data`` group (convert, capitalize, synthetic, inspect).

Plugins extend the group from their own ``register_commands`` (``cli.commands["data"]``); this hook
runs first so that the group exists by then.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cruijff_kit._api.hookspecs import hookimpl
from cruijff_kit._base.errors import CkError


@click.group()
def data() -> None:
    """Prepare datasets: convert formats, generate tasks, inspect files."""


@data.command("convert")
@click.argument("src", type=click.Path(exists=True))
@click.argument("dst", type=click.Path())
@click.option("--overwrite", is_flag=True, help="Replace DST even when it is not an earlier conversion.")
def data_convert(src: str, dst: str, overwrite: bool) -> None:
    """Convert JSON (instruct file or chat folder) or an Arrow dataset on disk to a parquet folder."""
    from cruijff_kit._datatools.convert import convert_to_parquet

    written = convert_to_parquet(Path(src), Path(dst), overwrite=overwrite)
    for split, n in written.items():
        click.echo(f"{split}: {n} rows")
    click.echo(f"Wrote {dst}")


@data.command("capitalize")
@click.argument("dst", type=click.Path())
@click.option("--chat", is_flag=True, help="Write a chat folder (train/validation/test.json) instead.")
@click.option("--train", "n_train", default=120, show_default=True)
@click.option("--validation", "n_validation", default=20, show_default=True)
@click.option("--test", "n_test", default=30, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace DST even when it is not an earlier output of this command.")
def data_capitalize(dst: str, chat: bool, n_train: int, n_validation: int, n_test: int, seed: int,
                    overwrite: bool) -> None:
    """Write the word-capitalization sanity task (apple -> APPLE) from the shipped word list."""
    from cruijff_kit._datatools.capitalize import write_capitalize

    try:
        path = write_capitalize(Path(dst), chat=chat, n_train=n_train, n_validation=n_validation,
                                n_test=n_test, seed=seed, overwrite=overwrite)
    except ValueError as exc:
        raise CkError(f"ck data capitalize: {exc}. Ask for fewer rows.") from None
    click.echo(f"Wrote {path} ({n_train}/{n_validation}/{n_test} rows, seed {seed})")


@data.command("synthetic")
@click.argument("dst", type=click.Path())
@click.option("--alphabet", type=click.Choice(["bits", "digits", "letters"]), default="bits", show_default=True)
@click.option("--k", "k", default=10, show_default=True, help="Sequence length (shortest, with --k-max).")
@click.option("--k-max", type=int, help="Longest sequence length; lengths are drawn from k..k-max.")
@click.option("--rule", default="parity", show_default=True, help="parity, first, last, nth, length, constant, "
              "coin, majority, min, max, weighted-sum.")
@click.option("--position", default=0, show_default=True, help="Rule nth: the 0-based position.")
@click.option("--value", default="0", show_default=True, help="Rule constant: the answer.")
@click.option("--p", "p", default=0.5, show_default=True, help="Rule coin: probability of answer 1.")
@click.option("--weights", help="Rule weighted-sum: comma-separated weights, one per position.")
@click.option("--threshold", type=float, help="Rule weighted-sum: answer 1 above it, else 0 (binary).")
@click.option("--design", default="in-distribution", show_default=True,
              help="memorization, in-distribution, out-of-distribution.")
@click.option("--ood-lengths", help="Comma-separated lengths of the validation_ood_<i> splits.")
@click.option("--train", "n_train", default=200, show_default=True)
@click.option("--validation", "n_validation", default=50, show_default=True)
@click.option("--test", "n_test", default=50, show_default=True)
@click.option("--ood", "n_ood", default=50, show_default=True, help="Rows per validation_ood_<i> split.")
@click.option("--format", "fmt", default="spaced", show_default=True, help="spaced, dense, comma, tab, pipe.")
@click.option("--instruction", help="Text put on a line before every sequence.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("--force", is_flag=True, help="Generate again even when an identical file (of ck's) exists.")
@click.option("--overwrite", is_flag=True, help="Write over a file at DST that ck did not generate.")
def data_synthetic(dst: str, **options: Any) -> None:
    """Write a synthetic rule-learning task (a "model organism"); DST is a folder or a .json file."""
    from cruijff_kit.data._synthetic import settings_from, write_synthetic

    force, overwrite = options.pop("force"), options.pop("overwrite")
    options["format"] = options.pop("fmt")
    for name, cast in (("weights", float), ("ood_lengths", int)):
        raw = options.get(name)
        try:
            options[name] = [cast(x) for x in raw.split(",") if x.strip()] if raw else None
        except ValueError:
            raise CkError(f"ck data synthetic: --{name.replace('_', '-')} {raw!r} must be comma-separated "
                          "numbers.") from None
    settings = settings_from({k: v for k, v in options.items() if v is not None})
    path, reused = write_synthetic(Path(dst), settings, force=force, overwrite=overwrite)
    from cruijff_kit.data._provenance import read_meta

    rows = ", ".join(f"{s} {n}" for s, n in (read_meta(path) or {}).get("rows", {}).items())
    click.echo(f"{'Reused' if reused else 'Wrote'} {path} ({rows})")


@data.command("inspect")
@click.argument("path", type=click.Path())
@click.option("--tokenizer", help="Local model or tokenizer folder: lengths in its tokens (default: characters).")
@click.option("--examples", default=2, show_default=True, help="Example rows shown per split.")
@click.option("--system", help="System prompt to render instruct rows with (counts in the lengths).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def data_inspect(path: str, tokenizer: str | None, examples: int, system: str | None, as_json: bool) -> None:
    """Split sizes, answer balance, lengths and example rows of a dataset file or folder."""
    from cruijff_kit._api.kinds import Prompt
    from cruijff_kit._datatools.inspect_file import format_report, inspect_dataset

    report = inspect_dataset(Path(path), tokenizer=tokenizer, examples=examples, prompt=Prompt(system=system))
    click.echo(json.dumps(report, indent=2, ensure_ascii=False) if as_json else format_report(report))


@hookimpl(tryfirst=True)
def register_commands(cli: click.Group) -> None:
    """Add ``ck data`` before other plugins' hooks run, so that they can add commands to it."""
    cli.add_command(data)
