"""The rich console that every ``ck`` command prints tables with."""

from __future__ import annotations

from typing import Any


def console(stderr: bool = False) -> Any:
    """A rich console; 200 columns wide when the output is not a terminal."""
    from rich.console import Console

    con = Console(stderr=stderr, soft_wrap=True)
    if not con.is_terminal:  # logs and pipes: do not squeeze tables into 80 columns
        con = Console(stderr=stderr, soft_wrap=True, width=200)
    return con
