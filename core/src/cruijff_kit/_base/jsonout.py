"""``--json`` of ``ck`` commands: one JSON document on stdout, everything else on stderr.

A command wraps its work in :func:`json_output` and hands it the document; the keys of each command's
document are listed in docs/cli.md ("Scripting with --json").
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

#: Help of every command's ``--json`` flag.
JSON_HELP = "Print one JSON document on stdout (messages go to stderr); keys in docs/cli.md."


def json_flag(command: Any) -> Any:
    """The ``--json`` flag (parameter ``as_json``) of a command."""
    return click.option("--json", "as_json", is_flag=True, help=JSON_HELP)(command)


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as the strings ``nan``, ``inf``, ``-inf`` (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def error_document(exc: Exception, message: str | None = None) -> dict[str, Any]:
    """The document of a command stopped by ``exc`` (a CkError, or an OSError with ``message``): ``ok``
    false, its exit code and the error; a :class:`SpecError` adds its ``file``, ``path`` (the field),
    ``problem`` and ``hint``."""
    from cruijff_kit._base.errors import ExitCode, SpecError

    error: dict[str, Any] = {"message": message or str(exc), "type": type(exc).__name__,
                             "exit_code": int(getattr(exc, "exit_code", ExitCode.USAGE))}
    if isinstance(exc, SpecError):
        error.update(file=exc.file, path=exc.path, problem=exc.problem, hint=exc.hint)
    return {"ok": False, "exit_code": error["exit_code"], "error": error}


@contextlib.contextmanager
def json_output(enabled: bool) -> Iterator[Callable[[Any], None]]:
    """For a command's ``--json``: yields ``emit(document)``; with ``enabled`` false it does nothing.

    While the block runs, whatever would reach stdout (tables, progress lines, the output of child
    processes) goes to stderr, so stdout holds only the document, printed when the block ends. A
    :class:`CkError` (or an ``OSError`` naming a path) raised in the block prints its
    :func:`error_document` instead, then goes on to ``ck``, which shows it on stderr and exits with its code.
    """
    from cruijff_kit._base.errors import CkError

    if not enabled:
        yield lambda document: None
        return
    documents: list[Any] = []
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield documents.append
    except CkError as exc:
        documents[:] = [error_document(exc)]
        raise
    except OSError as exc:  # a path that cannot be used: `ck` says which (exit code 2)
        if exc.filename is not None:
            documents[:] = [error_document(exc, f"cannot use {exc.filename}: {exc.strerror or exc}")]
        raise
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        for document in documents[-1:]:
            click.echo(json.dumps(jsonable(document), indent=2, default=str))
