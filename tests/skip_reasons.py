"""Which skips are allowed, and which are failures.

``ALLOWED_IN_CI`` lists the only reasons a test may skip when ``CI=true``; any other skip fails the CI
run. Each entry is a regular expression matched against the start of the skip reason, with why CI may
skip for it. A test that needs something CI does not have (a GPU) skips with one of these reasons;
everything else CI installs or starts itself (SLURM, a tmpfs, Chromium), so a skip for it would hide a
failure.

A skip because a plugin of this repository, or a package one of them depends on, is missing fails
everywhere, CI or not: ``make install`` installs the core and every plugin, so such a skip means a
broken install, not a missing optional extra (see ``missing_from_repo``).
"""

from __future__ import annotations

import re
import tomllib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: reason pattern -> why CI may skip for it
ALLOWED_IN_CI: dict[str, str] = {
    r"needs a GPU": "CI machines have no GPU; GPU checks live in benchmarks/gpu/",
    r"vllm is installed here": "the test checks the message shown when vllm is missing",
    r"\w+ is installed here": "the test checks the message shown when an optional tracker is missing",
}

#: a skip naming a missing plugin of this repository ("the trl trainer plugin is not installed")
_PLUGIN_MISSING = re.compile(r".*\b(plugin|trainer|evaluator|scheduler|simulator)s?\b.*\bnot installed", re.I)
#: the reason of ``pytest.importorskip``
_IMPORT_MISSING = re.compile(r"could not import '([\w.]+)'")


def _clean(reason: str) -> str:
    return reason.removeprefix("Skipped: ").strip()


def allowed_in_ci(reason: str) -> bool:
    """True when a skip with this reason is allowed under ``CI=true``."""
    reason = _clean(reason)
    return any(re.match(pattern, reason) for pattern in ALLOWED_IN_CI)


@cache
def repo_packages() -> frozenset[str]:
    """Import names (normalised) of the core, its plugins, and every package they require."""
    names: set[str] = set()
    for pyproject in [ROOT / "core" / "pyproject.toml", *sorted(ROOT.glob("plugins/*/*/pyproject.toml"))]:
        project = tomllib.loads(pyproject.read_text()).get("project", {})
        for requirement in [project.get("name", ""), *project.get("dependencies", [])]:
            name = re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0]
            if name:
                names.add(name.lower().replace("-", "_"))
    return frozenset(names)


def missing_from_repo(reason: str) -> bool:
    """True when the skip says a plugin of this repository, or a package one requires, is missing."""
    reason = _clean(reason)
    if _PLUGIN_MISSING.match(reason):
        return True
    found = _IMPORT_MISSING.match(reason)
    return bool(found) and found.group(1).split(".")[0].lower() in repo_packages()
