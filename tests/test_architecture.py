"""The core's layers and its public API hold: what may import what, and what plugins may import.

- The import-linter contracts in the root ``pyproject.toml`` pass, counting imports inside functions,
  and fail on a planted back-edge.
- No import cycle in the core (imports under ``if TYPE_CHECKING:`` excepted).
- The engine loads no feature module, also through imports by string.
- Every plugin and every scaffold template imports only names listed in ``docs/plugins.md``, which
  lists each public module's ``__all__`` exactly; every other core module is private (a leading
  underscore on itself or a package above it).
"""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

import cruijff_kit

ROOT = Path(__file__).resolve().parents[1]
CORE_SRC = ROOT / "core" / "src"
PLUGINS_MD = ROOT / "docs" / "plugins.md"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

#: Feature packages: above the engine, each adding its own commands.
FEATURES = ("cruijff_kit._simulate", "cruijff_kit._models", "cruijff_kit._datatools", "cruijff_kit._scaffold",
            "cruijff_kit._summaries", "cruijff_kit.inference")
#: The engine: spec loading, planner, runner, stage (and its public façade).
ENGINE = ("cruijff_kit._engine", "cruijff_kit.engine")


def documented_api() -> dict[str, list[str]]:
    """``{module: names}`` from the "Public API" part of docs/plugins.md: a heading naming the module
    (``### `cruijff_kit.x` ``) followed by a fenced ``text`` block with one name per line."""
    found: dict[str, list[str]] = {}
    module: str | None = None
    block: list[str] | None = None
    for line in PLUGINS_MD.read_text(encoding="utf-8").splitlines():
        heading = re.fullmatch(r"### `(cruijff_kit[\w.]*)`", line.strip())
        if heading:
            module, block = heading.group(1), None
        elif module and line.strip() == "```text":
            block = []
        elif module and block is not None and line.strip() == "```":
            found[module], module, block = block, None, None
        elif block is not None and line.split("#")[0].strip():
            block.append(line.split("#")[0].strip())
    return found


PUBLIC = documented_api()


def _imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) for every import of ``cruijff_kit`` in a file, functions included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and \
                (node.module == "cruijff_kit" or node.module.startswith("cruijff_kit.")):
            out.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "cruijff_kit" or alias.name.startswith("cruijff_kit."):
                    out.append((alias.name, [], node.lineno))
    return out


def _lint(config: Path, cwd: Path, env_path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = None
    if env_path is not None:
        import os

        env = {**os.environ, "PYTHONPATH": env_path}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(config), "--no-cache"], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=300)


# --------------------------------------------------------------------------- layers
def test_import_linter_contracts_pass():
    res = _lint(ROOT / "pyproject.toml", ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Contracts: 3 kept, 0 broken." in res.stdout, res.stdout


@pytest.mark.parametrize(("victim", "planted", "broken"), [
    # the engine reaching up into a feature, from inside a function
    ("_engine/planner.py", "def _planted():\n    from cruijff_kit._simulate import config  # noqa\n",
     "Core layers"),
    # a base utility reaching up into the public API at module level
    ("_base/fileio.py", "import cruijff_kit._api.kinds  # noqa\n", "Core layers"),
])
def test_import_linter_fails_on_a_planted_back_edge(tmp_path, victim, planted, broken):
    copy = tmp_path / "src"
    shutil.copytree(CORE_SRC / "cruijff_kit", copy / "cruijff_kit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    config = tmp_path / "pyproject.toml"
    config.write_text((ROOT / "pyproject.toml").read_text(encoding="utf-8"), encoding="utf-8")
    # Without the plant, the copy passes: the failure below is the planted edge's doing.
    assert _lint(config, tmp_path, env_path=str(copy)).returncode == 0
    target = copy / "cruijff_kit" / victim
    target.write_text(target.read_text(encoding="utf-8") + "\n\n" + planted, encoding="utf-8")
    res = _lint(config, tmp_path, env_path=str(copy))
    assert res.returncode != 0, res.stdout
    assert f"{broken}" in res.stdout and "BROKEN" in res.stdout, res.stdout
    module = "cruijff_kit." + victim.removesuffix(".py").replace("/", ".")
    assert module in res.stdout, res.stdout


def _core_graph() -> grimp.ImportGraph:
    return grimp.build_graph("cruijff_kit", exclude_type_checking_imports=True, cache_dir=None)


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.find_modules_directly_imported_by(v):
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle_in_the_core():
    graph = _core_graph()
    assert len(graph.modules) > 50  # the whole core was scanned
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    """The finder above is not vacuous: two modules importing each other inside functions are a cycle."""
    graph = grimp.ImportGraph()
    for m in ("pkg", "pkg.a", "pkg.b", "pkg.c"):
        graph.add_module(m)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.a")
    graph.add_import(importer="pkg.c", imported="pkg.a")
    assert _cycles(graph) == [["pkg.a", "pkg.b"]]


def test_engine_loads_no_feature_module_in_a_fresh_interpreter():
    """Imports by string (lazy exports, default plugins) are invisible to import-linter: check sys.modules."""
    engine_modules = sorted(m.name for m in pkgutil.walk_packages(
        importlib.import_module("cruijff_kit._engine").__path__, "cruijff_kit._engine."))
    assert "cruijff_kit._engine.planner" in engine_modules
    code = (
        "import importlib, json, sys\n"
        f"for m in {engine_modules + ['cruijff_kit.engine', 'cruijff_kit']!r}:\n"
        "    importlib.import_module(m)\n"
        "import cruijff_kit\n"
        # the façade's lazy names that live in the engine or below resolve without a feature
        "for name in cruijff_kit.__all__: getattr(cruijff_kit, name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    loaded = json.loads(res.stdout)
    assert "cruijff_kit._engine.planner" in loaded
    features = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FEATURES)]
    assert features == []
    assert "cruijff_kit._cli" not in loaded
    assert "torch" not in loaded


# --------------------------------------------------------------------------- the public API
def test_docs_list_the_public_modules():
    assert "cruijff_kit" in PUBLIC
    assert {"cruijff_kit.training", "cruijff_kit.data", "cruijff_kit.scoring", "cruijff_kit.inference",
            "cruijff_kit.collab"} <= set(PUBLIC)
    assert all(names for names in PUBLIC.values()), PUBLIC


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_module_all_matches_the_docs(module):
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(PUBLIC[module]), \
        f"{module}.__all__ and docs/plugins.md disagree: update both together"
    for name in mod.__all__:
        value = getattr(mod, name)  # lazy names resolve
        if callable(value) and not isinstance(value, type(re)) and name != "__version__":
            assert (getattr(value, "__doc__", None) or "").strip(), f"{module}.{name} has no docstring"


def test_every_other_core_module_is_private():
    """A module is public only when docs/plugins.md lists it; every other one has a leading underscore."""
    public_packages = set(PUBLIC)
    offenders = []
    for info in pkgutil.walk_packages(cruijff_kit.__path__, "cruijff_kit."):
        parts = info.name.split(".")[1:]
        if info.name in public_packages or parts == ["__main__"]:
            continue
        if not any(p.startswith("_") for p in parts):
            offenders.append(info.name)
    assert offenders == []


def _plugin_files() -> list[Path]:
    """Every built-in plugin's sources and the test suite's third-party plugin."""
    roots = [ROOT / "plugins", ROOT / "tests" / "toy_plugin"]
    return sorted(p for root in roots for p in root.rglob("*.py") if "build" not in p.parts)


def _check_public_imports(files: list[Path]) -> tuple[list[str], set[str]]:
    bad, used = [], set()
    for path in files:
        for module, names, line in _imports_of(path):
            where = f"{path.relative_to(path.anchor)}:{line}"
            if module not in PUBLIC:
                bad.append(f"{where}: imports private module {module}")
                continue
            used.add(module)
            for name in names:
                if f"{module}.{name}" in PUBLIC:  # `from cruijff_kit import status`: a public module
                    used.add(f"{module}.{name}")
                elif name not in PUBLIC[module]:
                    bad.append(f"{where}: {module}.{name} is not in the public API (docs/plugins.md)")
    return bad, used


def test_plugins_import_only_public_names():
    files = _plugin_files()
    assert len(files) > 50
    bad, used = _check_public_imports(files)
    assert bad == []
    assert len(used) <= 9, sorted(used)


def test_public_import_check_catches_a_private_import(tmp_path):
    planted = tmp_path / "plugin.py"
    planted.write_text("def f():\n    from cruijff_kit._engine.stage import load_run\n"
                       "from cruijff_kit import Trainer, _private_thing, status\n", encoding="utf-8")
    bad, used = _check_public_imports([planted])
    assert sorted(bad) == sorted([
        f"{planted.relative_to(planted.anchor)}:2: imports private module cruijff_kit._engine.stage",
        f"{planted.relative_to(planted.anchor)}:3: cruijff_kit._private_thing is not in the public API (docs/plugins.md)",
    ])
    assert used == {"cruijff_kit", "cruijff_kit.status"}


def test_scaffold_templates_import_only_public_names(tmp_path):
    from cruijff_kit._scaffold import new_plugin, new_task
    from cruijff_kit._scaffold.plugin import PLUGIN_KINDS

    assert sorted(PLUGIN_KINDS) == ["dataset", "evaluator", "scheduler", "simulator", "trainer"]
    for kind in PLUGIN_KINDS:
        new_plugin(kind, f"my-{kind}", tmp_path / kind)
    (tmp_path / "task").mkdir()
    new_task("my-task", tmp_path / "task")  # the experiment scaffold writes YAML only
    files = sorted(tmp_path.rglob("*.py"))
    assert len(files) >= 6, files
    bad, _ = _check_public_imports(files)
    assert bad == []
