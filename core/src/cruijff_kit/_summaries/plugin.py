"""The summaries feature as a default plugin: ``ck summarize``."""

from __future__ import annotations

import click

from cruijff_kit._api.hookspecs import hookimpl


@click.command()
@click.argument("target", default=".", type=click.Path())
@click.option("--no-plots", is_flag=True, help="Only the tables.")
@click.option("--overwrite", is_flag=True, help="Write over summary files or a plots/ folder ck did not write.")
def summarize(target: str, no_plots: bool, overwrite: bool) -> None:
    """One table of runs x targets x metrics (summary.md, summary.csv) and plots under plots/."""
    from rich.markdown import Markdown

    from cruijff_kit._base.console import console
    from cruijff_kit._engine.runner import find_experiment
    from cruijff_kit._summaries.summarize import to_markdown, write_summary

    summary, files = write_summary(find_experiment(target), plots=not no_plots, overwrite=overwrite)
    out = console()
    out.print(Markdown(to_markdown(summary)))
    for f in files:
        click.echo(f"Wrote {f}")
    for line in summary.damaged:  # summarized without them; the summary says which values are missing
        click.echo(f"Warning: {line}", err=True)


@hookimpl(tryfirst=True)
def register_commands(cli: click.Group) -> None:
    """Add ``ck summarize``."""
    cli.add_command(summarize)
