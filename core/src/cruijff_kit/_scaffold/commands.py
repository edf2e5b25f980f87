"""The scaffolds as a default plugin: the ``ck new`` group (plugin, task, experiment)."""

from __future__ import annotations

from pathlib import Path

import click

from cruijff_kit._api.hookspecs import hookimpl


@click.group("new")
def new() -> None:
    """Start a plugin distribution, an inspect task file or an experiment spec from a template."""


@new.command("plugin")
@click.argument("kind", type=click.Choice(["dataset", "evaluator", "trainer", "scheduler", "simulator"]))
@click.argument("name")
@click.option("--dir", "dest", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Folder to create the distribution in.")
def new_plugin(kind: str, name: str, dest: str) -> None:
    """Write a third-party plugin distribution of KIND called NAME (pyproject, hookimpl, Config, tests);
    every template works as generated."""
    from cruijff_kit._scaffold import new_plugin as make

    path = make(kind, name, Path(dest))
    click.echo(f"Wrote {path}. Install it with `pip install -e {path}`; `ck plugins` then lists {name!r}.")


@new.command("task")
@click.argument("name")
@click.option("--dir", "dest", type=click.Path(file_okay=False), default=".", show_default=True)
def new_task(name: str, dest: str) -> None:
    """Write an inspect task file NAME.py reading our dataset form and using our scorers."""
    from cruijff_kit._scaffold import new_task as make

    path = make(name, Path(dest))
    click.echo(f"Wrote {path}. Use it in a spec: `eval: [{{plugin: inspect, task: {path.name}@{path.stem}}}]`.")


@new.command("experiment")
@click.option("--out", type=click.Path(dir_okay=False), default="spec.yaml", show_default=True)
@click.option("--name", help="Experiment name.")
@click.option("--model", help="Model folder or hub id.")
@click.option("--data", help="Dataset file (json-instruct) or folder.")
@click.option("--trainer", help="Trainer plugin (trl, torchtune, ...).")
@click.option("--scheduler", help="Scheduler plugin (local, slurm, ...).")
@click.option("--sweep", "sweeps", multiple=True, help="KEY=V1,V2 to sweep (repeat), e.g. train.learning_rate=1e-4,3e-4.")
@click.option("--yes", is_flag=True, help="Do not ask; use the options and defaults.")
def new_experiment(out: str, name: str | None, model: str | None, data: str | None, trainer: str | None,
                   scheduler: str | None, sweeps: tuple[str, ...], yes: bool) -> None:
    """Ask a few questions (model, data, trainer, scheduler, what to sweep) and write a spec."""
    from cruijff_kit._scaffold import experiment_answers
    from cruijff_kit._scaffold import new_experiment as make

    answers = experiment_answers(name=name, model=model, data=data, trainer=trainer, scheduler=scheduler,
                                 sweeps=list(sweeps), ask=not yes)
    path = make(Path(out), answers)
    click.echo(f"Wrote {path}. Check it with `ck validate {path}`.")


@hookimpl(tryfirst=True)
def register_commands(cli: click.Group) -> None:
    """Add ``ck new`` (first, so that plugins can extend the group)."""
    cli.add_command(new)
