"""The summaries feature as a default plugin: ``ck summarize`` and ``ck report``."""

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


@click.command()
@click.argument("target", default=".", type=click.Path())
@click.option("--watch", is_flag=True, help="Write it again each time a stage changes, until none is running.")
@click.option("--interval", default=5.0, show_default=True, type=click.FloatRange(min=0.1),
              help="With --watch: seconds between looks at the experiment's state files.")
@click.option("--overwrite", is_flag=True, help="Write over a report.html ck did not write.")
@json_flag
def report(target: str, watch: bool, interval: float, overwrite: bool, as_json: bool) -> None:
    """One self-contained HTML page of the experiment (report.html in its folder): open it from disk."""
    from cruijff_kit._engine.runner import find_experiment
    from cruijff_kit._summaries.report import write as report_write

    with json_output(as_json) as emit:
        exp = find_experiment(target)
        written: list[tuple[str, dict]] = []

        def said(path: object, data: dict) -> None:
            written.append((str(path), data))
            if not as_json:
                n = report_write.active(data)
                click.echo(f"Wrote {path}" + (f" ({n} stage(s) still running)" if n else ""))

        if watch:
            report_write.watch(exp, overwrite=overwrite, interval=interval, on_write=said)
        else:
            said(*report_write.write_report(exp, overwrite=overwrite))
        path, data = written[-1]
        emit({"ok": True, "exit_code": 0, "experiment": data["experiment"], "experiment_dir": str(exp.root),
              "report": path, "rows": len(data["rows"]), "damaged": data["damaged"]})
    for line in written[-1][1]["damaged"]:
        click.echo(f"Warning: {line}", err=True)


@hookimpl(tryfirst=True)
def register_commands(cli: click.Group) -> None:
    """Add ``ck summarize`` and ``ck report``."""
    cli.add_command(summarize)
    cli.add_command(report)
