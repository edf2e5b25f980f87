"""The summaries feature as a default plugin: ``ck summarize``."""

from __future__ import annotations

import click

from cruijff_kit._api.hookspecs import hookimpl
from cruijff_kit._base.jsonout import json_flag, json_output


@click.command()
@click.argument("target", default=".", type=click.Path())
@click.option("--no-plots", is_flag=True, help="Only the tables.")
@click.option("--overwrite", is_flag=True, help="Write over summary files or a plots/ folder ck did not write.")
@json_flag
def summarize(target: str, no_plots: bool, overwrite: bool, as_json: bool) -> None:
    """Tables of runs x tasks x targets and of each run's training (summary.md, summary.csv); plots under plots/."""
    from rich.markdown import Markdown

    from cruijff_kit._base.console import console
    from cruijff_kit._engine.runner import find_experiment
    from cruijff_kit._summaries.summarize import to_markdown, write_summary

    with json_output(as_json) as emit:
        exp = find_experiment(target)
        summary, files = write_summary(exp, plots=not no_plots, overwrite=overwrite)
        emit({"ok": True, "exit_code": 0, "experiment": summary.experiment, "experiment_dir": str(exp.root),
              "swept": summary.swept, "metrics": summary.metrics, "columns": summary.columns(),
              "rows": [{c: r.get(c) for c in summary.columns()} for r in summary.rows],
              "files": [str(f) for f in files], "damaged": summary.damaged})
    if not as_json:
        con = console()
        con.print(Markdown(to_markdown(summary, width=con.width)))
        for f in files:
            click.echo(f"Wrote {f}")
    for line in summary.damaged:  # summarized without them; the summary says which values are missing
        click.echo(f"Warning: {line}", err=True)


@hookimpl(tryfirst=True)
def register_commands(cli: click.Group) -> None:
    """Add ``ck summarize``."""
    cli.add_command(summarize)
