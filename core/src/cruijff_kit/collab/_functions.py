"""User functions named in a spec (``file.py:function`` or ``module:function``), e.g. a ``python`` metric."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cruijff_kit._base.errors import SpecError


def load_function(ref: str, base_dir: Path, *, file: str | None = None, path: str = "") -> Callable[..., Any]:
    """``file.py:name`` (relative to the spec) or ``package.module:name`` -> the callable."""
    if ":" not in ref:
        raise SpecError(f"`{ref}` must have the form file.py:function or module:function.", file=file, path=path)
    where, name = ref.rsplit(":", 1)
    if where.endswith(".py"):
        p = Path(where).expanduser()
        p = p if p.is_absolute() else base_dir / p
        if not p.is_file():
            raise SpecError(f"the metric file {p} does not exist.", file=file, path=path)
        spec = importlib.util.spec_from_file_location(f"ck_metric_{p.stem}", p)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise SpecError(f"cannot import `{where}` ({exc}).", file=file, path=path) from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise SpecError(f"`{where}` has no function `{name}`.", file=file, path=path)
    return fn
