"""The simulation feature as a default plugin: it owns the ``simulate`` section of a spec and ``ck simulate``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from cruijff_kit._api.hookspecs import hookimpl
from cruijff_kit._api.sections import ReferenceTable, SpecSection
from cruijff_kit._engine.spec import SET_HELP

if TYPE_CHECKING:  # pragma: no cover - typing only
    from cruijff_kit._engine.spec import LoadedSpec


def _check(loaded: LoadedSpec) -> list[str]:
    from cruijff_kit._simulate.config import check_simulate

    return check_simulate(loaded)


def _resolve(section: Any, loaded: LoadedSpec) -> Any:
    from cruijff_kit._simulate.config import resolved_section

    return resolved_section(section, loaded)


def _reference() -> list[ReferenceTable]:
    from cruijff_kit._api.retry import RetryPolicy
    from cruijff_kit._simulate.config import MetricSpec, ScoringConfig, SimulateConfig, TaskSource

    return [
        ("`simulate`", SimulateConfig, "Settings for `ck simulate` (see docs/simulation.md)."),
        ("`simulate.tasks`", TaskSource, "Where the conversation openers come from."),
        ("`simulate.scoring`", ScoringConfig, "Multi-turn-aware scoring of candidate responses."),
        ("`simulate.scoring.metrics[i]`", MetricSpec, "One weighted metric."),
        ("`simulate.retry`", RetryPolicy, "Retries on rate limits, server errors and timeouts."),
    ]


def _schema() -> dict[str, Any]:
    from cruijff_kit._simulate.config import simulate_json_schema

    return simulate_json_schema()


@hookimpl
def register_spec_sections(register: Callable[[SpecSection], None]) -> None:
    """The ``simulate`` section: checked at plan time, copied into each run's spec with ``output`` absolute."""
    register(SpecSection(key="simulate", check=_check, resolve=_resolve, reference=_reference, schema=_schema))


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True,
              help=SET_HELP)
@click.option("--limit", type=click.IntRange(min=1), help="Simulate only the first N tasks.")
@click.option("--no-progress", is_flag=True, help="No progress bar or progress lines.")
@click.option("--overwrite", is_flag=True, help="Replace a simulate.output file that ck simulate did not create.")
def simulate(spec: str, sets: tuple[str, ...], limit: int | None, no_progress: bool, overwrite: bool) -> None:
    """Simulate the conversations of SPEC's `simulate:` section; re-running resumes."""
    from cruijff_kit._engine.spec import load_spec, parse_overrides
    from cruijff_kit._simulate.command import run_command

    message, code = run_command(load_spec(spec, parse_overrides(sets)), limit=limit, progress=not no_progress,
                                overwrite=overwrite)
    click.echo(message)
    if code:
        sys.exit(code)


@hookimpl(tryfirst=True)
def register_commands(cli: click.Group) -> None:
    """Add ``ck simulate``."""
    cli.add_command(simulate)
