"""Which of cruijff-kit's extras installs a missing module, read from the installed core's metadata.

``ck`` turns a :class:`ModuleNotFoundError` for such a module into a one-paragraph message naming the
module, the extra and the ``pip install`` command (see :func:`missing_extra_message`). The mapping
comes from the ``Requires-Dist`` lines of the ``cruijff-kit`` distribution (each with its
``extra == "..."`` marker) and from the import names of installed distributions: there is no table to
keep in step with ``core/pyproject.toml``.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import metadata

#: the distribution whose extras are named
CORE = "cruijff-kit"
#: the extra that installs every other one: never the one to suggest
ALL = "all"

_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def canonical(name: str) -> str:
    """A distribution or module name as PEP 503 normalises it (``huggingface_hub`` -> ``huggingface-hub``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def extras_by_distribution() -> dict[str, tuple[str, ...]]:
    """Canonical distribution name -> the core's extras that require it directly (in metadata order)."""
    try:
        requires = metadata.requires(CORE) or []
    except metadata.PackageNotFoundError:  # pragma: no cover - ck runs from an installed core
        return {}
    out: dict[str, list[str]] = {}
    for line in requires:
        name, extra = _NAME.match(line), _EXTRA.search(line)
        if name is None or extra is None or extra.group(1) == ALL:
            continue
        extras = out.setdefault(canonical(name.group(1)), [])
        if extra.group(1) not in extras:
            extras.append(extra.group(1))
    return {dist: tuple(extras) for dist, extras in out.items()}


def extras_for(module: str) -> tuple[str, ...]:
    """The core's extras that install the top-level package of ``module`` (empty when none does), the
    lightest first.

    The distribution is the module's own name (``tokenizers``, ``huggingface_hub``), or, where the
    import name differs and the distribution is installed, what :func:`importlib.metadata.packages_distributions`
    says.
    """
    top = module.partition(".")[0]
    if not top:
        return ()
    dists = [canonical(top), *(canonical(d) for d in metadata.packages_distributions().get(top, []))]
    table = extras_by_distribution()
    found: list[str] = []
    for dist in dists:
        found += [e for e in table.get(dist, ()) if e not in found]
    sizes = extra_sizes()
    return tuple(sorted(found, key=lambda e: sizes.get(e, 0)))  # the lightest extra that brings it first


@cache
def extra_sizes() -> dict[str, int]:
    """How many requirements each of the core's extras adds (the lightest one is suggested first)."""
    sizes: dict[str, int] = {}
    for extras in extras_by_distribution().values():
        for extra in extras:
            sizes[extra] = sizes.get(extra, 0) + 1
    return sizes


def missing_extra_message(exc: ModuleNotFoundError) -> str | None:
    """The message for a missing package that one of the core's extras installs; ``None`` for any other
    module, and when the package is there (a module missing inside an installed package, or a mistyped
    import in cruijff-kit's own code, is a bug to show with its traceback, not an install to suggest)."""
    import importlib.util

    module = exc.name or ""
    top = module.partition(".")[0]
    if not top:
        return None
    try:
        if importlib.util.find_spec(top) is not None:
            return None
    except ModuleNotFoundError:
        pass  # not there: the install to suggest
    except (ImportError, ValueError):
        return None
    extras = extras_for(module)
    if not extras:
        return None
    first, others = extras[0], extras[1:]
    also = f" (also with {', '.join(f'`{e}`' for e in others)})" if others else ""
    return (f"this command needs the Python package `{top}`, which is not installed here. It comes with "
            f"cruijff-kit's extra `{first}`{also}: run pip install \"cruijff-kit[{first}]\" in the environment "
            "that runs ck, then run the command again.")
