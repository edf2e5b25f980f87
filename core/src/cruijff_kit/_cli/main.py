"""The composition root of ``ck``: the click group, the engine's areas, the plugins' commands, ``main``.

The engine's commands come from :mod:`.runs` and :mod:`.admin`; every other command (the core's
features and third-party plugins alike) is added by a ``register_commands`` hook when :func:`main`
runs. Imports only light modules; heavy work is imported inside commands.
"""

from __future__ import annotations

import os
import sys

import click

from cruijff_kit._base.errors import CkError, ExitCode
from cruijff_kit._base.version import __version__
from cruijff_kit._cli import admin, runs


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cruijff-kit")
@click.option("--show-noise", is_flag=True, help="Show the known third-party messages that ck hides and counts "
              "(optional-kernel load failures, deprecation chatter); the same as CK_SHOW_NOISE=1.")
def cli(show_noise: bool = False) -> None:
    """cruijff-kit: fine-tune, evaluate and compare LLMs from one YAML run spec.

    \b
    Typical flow:
      ck validate spec.yaml     check the spec and every plugin's options
      ck plan spec.yaml         expand the sweep, estimate each run, write plan.md
      ck run spec.yaml          run every stage (skips finished ones, resumes others)
      ck status spec.yaml       runs x stages with their states
      ck summarize spec.yaml    one table and plots across runs
    """
    if show_noise:  # stages this command starts inherit it
        from cruijff_kit._base.noise import SHOW_NOISE_ENV

        os.environ[SHOW_NOISE_ENV] = "1"


runs.add_commands(cli)
admin.add_commands(cli)


def _add_plugin_commands() -> None:
    """Let every plugin add its commands: the core's features (default plugins) first, then entry points."""
    from cruijff_kit._api.registry import registry

    registry().pm.hook.register_commands(cli=cli)


#: Longest error message printed whole; a longer one (a message that quotes too much of the input) is
#: cut in the middle, keeping what is wrong (its start) and the fix (its end).
MAX_MESSAGE = 4000


def shown_error(exc: CkError) -> str:
    """The error's message, at most about :data:`MAX_MESSAGE` characters."""
    text = str(exc)
    if len(text) <= MAX_MESSAGE:
        return text
    head, tail = MAX_MESSAGE - 500, 400
    return f"{text[:head]} […{len(text) - head - tail:,} characters cut…] {text[-tail:]}"


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning user errors into one-paragraph messages and the exit codes of
    :class:`~cruijff_kit._base.errors.ExitCode`. Known third-party noise in warnings and log records
    is hidden, kept in a side file and counted in one line at the end (see docs/cli.md#quiet-logs)."""
    from cruijff_kit._base.noise import cli_noise_file, count_line, quiet

    with quiet(cli_noise_file(), follow_stage=True, streams=True) as hidden:  # in a stage: its side file
        try:
            _main(argv)
        finally:
            if hidden.count:
                click.echo(count_line(hidden.count, hidden.path), err=True)


def _main(argv: list[str] | None) -> None:
    try:
        _add_plugin_commands()
    except CkError as exc:
        click.echo(f"Error: {shown_error(exc)}", err=True)
    try:
        cli.main(args=argv, prog_name="ck", standalone_mode=False)
    except CkError as exc:
        click.echo(f"Error: {shown_error(exc)}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except ModuleNotFoundError as exc:  # a missing extra: name it (any other missing module: a bug)
        from cruijff_kit._cli.extras import missing_extra_message

        message = missing_extra_message(exc)
        if message is None:
            raise
        click.echo(f"Error: {message}", err=True)
        sys.exit(ExitCode.USAGE)
    except OSError as exc:
        if exc.filename is None:
            raise
        click.echo(f"Error: cannot use {exc.filename}: {exc.strerror or exc}. Check that the path exists, "
                   "is writable, and that the disk is not full.", err=True)
        sys.exit(ExitCode.USAGE)
