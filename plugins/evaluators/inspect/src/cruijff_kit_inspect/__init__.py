"""Evaluator plugin ``inspect``: inspect-ai evals of base models and fine-tuned checkpoints.

Only hook implementations live here; inspect-ai, torch and peft are imported where the work is done.
"""

from __future__ import annotations

from typing import Any

from cruijff_kit import hookimpl


@hookimpl
def register_evaluators(register: Any) -> None:
    """Register the ``inspect`` evaluator."""
    from cruijff_kit_inspect.evaluator import InspectEvaluator

    register(InspectEvaluator)


@hookimpl
def register_commands(cli: Any) -> None:
    """Add ``ck eval`` (a one-off evaluation outside a sweep)."""
    from cruijff_kit_inspect.cli import eval_command

    cli.add_command(eval_command)
