"""The installable distributions: version ranges, extras, licence, one version (fast, from the
pyproject files), and the built wheels installed into a fresh virtual environment running the fast demo
with the installed ``ck`` (slow)."""

from __future__ import annotations

import ast
import csv
import email
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"
PLUGIN_DIRS = sorted(p.parent for p in ROOT.glob("plugins/*/*/pyproject.toml"))
DIST_DIRS = [CORE, *PLUGIN_DIRS]

#: the extras every reader of the README may ask for
PROMISED_EXTRAS = {"trl", "torchtune", "inspect", "slurm", "runpod", "simulate", "tabular", "all"}
#: never required by the core itself (each belongs to an extra or a plugin)
HEAVY = {"torch", "transformers", "matplotlib", "gguf"}
#: optional trackers that constraints.txt does not pin (a lower bound only, stated in the pyproject)
UNPINNED = {"wandb", "mlflow"}


def _pyproject(path: Path) -> dict:
    return tomllib.loads((path / "pyproject.toml").read_text())


def _version() -> Version:
    """The one version source, read without importing the package."""
    tree = ast.parse((CORE / "src" / "cruijff_kit" / "_base" / "version.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__version__":
            return Version(ast.literal_eval(node.value))
    raise AssertionError("core/src/cruijff_kit/_base/version.py has no __version__")


def _constraints() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def _requirements(project: dict) -> list[Requirement]:
    reqs = [Requirement(r) for r in project.get("dependencies", [])]
    for extra in project.get("optional-dependencies", {}).values():
        reqs += [Requirement(r) for r in extra]
    return reqs


def _lower_bound(spec: SpecifierSet) -> Version | None:
    lows = [Version(s.version) for s in spec if s.operator in (">=", "==")]
    return max(lows) if lows else None


def _has_upper_bound(spec: SpecifierSet) -> bool:
    return any(s.operator in ("<", "<=", "==", "~=") for s in spec)


def _ck_range(version: Version) -> SpecifierSet:
    major, minor = version.release[:2]
    return SpecifierSet(f">={major}.{minor},<{major}.{minor + 1}")


def _project_names() -> set[str]:
    return {canonicalize_name(_pyproject(d)["project"]["name"]) for d in PLUGIN_DIRS}


def check_requirement(req: Requirement, pins: dict[str, Version], version: Version) -> str | None:
    """Why ``req`` is not a tested range (``None`` when it is)."""
    name = canonicalize_name(req.name)
    if name.startswith("cruijff-kit"):
        return None if req.specifier == _ck_range(version) else f"{req}: expected {name}{_ck_range(version)}"
    low = _lower_bound(req.specifier)
    if low is None:
        return f"{req}: no lower bound"
    if name in UNPINNED:
        return None
    if name not in pins:
        return f"{req}: not in constraints.txt, so its lower bound is untested"
    if low != pins[name]:
        return f"{req}: lower bound {low} is not the tested version {pins[name]} of constraints.txt"
    if pins[name] not in req.specifier:
        return f"{req}: excludes the tested version {pins[name]}"
    if pins[name].major == 0 and not _has_upper_bound(req.specifier):
        return f"{req}: a pre-1.0 library needs an upper bound"
    return None


# --- fast tier: the pyproject files --------------------------------------------------------------


@pytest.mark.parametrize("dist", DIST_DIRS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_requirement_has_a_tested_range(dist):
    pins, version = _constraints(), _version()
    problems = [p for r in _requirements(_pyproject(dist)["project"]) if (p := check_requirement(r, pins, version))]
    assert not problems, f"{dist / 'pyproject.toml'}: " + "; ".join(problems)


def test_ranges_that_rely_on_private_apis_are_tight():
    reqs = {canonicalize_name(r.name): r.specifier for d in PLUGIN_DIRS for r in _requirements(_pyproject(d)["project"])}
    assert Version("0.6.2") not in reqs["torchtune"] and Version("0.6.1") in reqs["torchtune"]
    # private inspect-ai modules: the tested release only
    assert Version("0.3.286") not in reqs["inspect-ai"] and Version("0.3.285") in reqs["inspect-ai"]
    assert Version("0.22.0") not in reqs["peft"]
    assert Version("2.0.0") not in reqs["trl"]


def test_one_version_for_every_distribution():
    version = _version()
    core = _pyproject(CORE)
    assert "version" not in core["project"] and core["project"]["dynamic"] == ["version"]
    assert core["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "cruijff_kit._base.version.__version__"}
    for dist in PLUGIN_DIRS:
        assert Version(_pyproject(dist)["project"]["version"]) == version, dist


def test_core_is_light_and_its_extras_cover_every_plugin():
    project = _pyproject(CORE)["project"]
    required = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    assert not required & HEAVY
    extras = project["optional-dependencies"]
    assert set(extras) >= PROMISED_EXTRAS
    reachable = set(required)
    for reqs in extras.values():
        reachable |= {canonicalize_name(Requirement(r).name) for r in reqs}
    assert _project_names() <= reachable, _project_names() - reachable
    (all_req,) = (Requirement(r) for r in extras["all"])
    assert canonicalize_name(all_req.name) == "cruijff-kit"
    assert all_req.extras == set(extras) - {"all"}
    for heavy in HEAVY:  # each heavy library is reachable through an extra or a plugin
        assert any(heavy in {canonicalize_name(r.name) for r in _requirements(_pyproject(d)["project"])}
                   for d in DIST_DIRS), heavy


@pytest.mark.parametrize("dist", DIST_DIRS, ids=lambda p: str(p.relative_to(ROOT)))
def test_licence_readme_urls_and_typed_marker(dist):
    data = _pyproject(dist)
    project = data["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (dist / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
    assert project["readme"] == "README.md" and (dist / "README.md").read_text().strip()
    assert {"Homepage", "Documentation", "Changelog"} <= set(project["urls"])
    assert "Typing :: Typed" in project["classifiers"]
    (package,) = [p for p in (dist / "src").iterdir() if p.is_dir() and not p.name.endswith(".egg-info")
                  and p.name != "__pycache__"]
    assert (package / "py.typed").exists()
    assert "py.typed" in data["tool"]["setuptools"]["package-data"][package.name]


def test_licence_and_changelog_and_readme_install_line():
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert "cruijff-kit contributors" in (ROOT / "LICENSE").read_text()
    assert f"## {_version()}" in (ROOT / "CHANGELOG.md").read_text()
    readme = (ROOT / "README.md").read_text()
    assert readme.index("make demo") < readme.index("pip install")
    assert 'pip install "cruijff-kit[trl,inspect,slurm]"' in readme


def test_the_range_check_rejects_what_it_should():
    pins, version = {"peft": Version("0.21.2"), "click": Version("8.5.1")}, Version("0.1.0")
    assert check_requirement(Requirement("peft"), pins, version)
    assert check_requirement(Requirement("peft>=0.21.2"), pins, version)  # pre-1.0 without upper bound
    assert check_requirement(Requirement("click>=8.0"), pins, version)  # lower bound not the tested one
    assert check_requirement(Requirement("cruijff-kit"), pins, version)
    assert check_requirement(Requirement("cruijff-kit>=0.1,<0.3"), pins, version)
    assert check_requirement(Requirement("cruijff-kit>=0.1,<0.2"), pins, version) is None
    assert check_requirement(Requirement("click>=8.5.1,<9"), pins, version) is None


# --- slow tier: wheels, a fresh venv, the fast demo ----------------------------------------------


def _build_wheels(out: Path, work: Path) -> list[Path]:
    """Wheels of every distribution, built from copies (symlinks resolved) so the checkout stays clean."""
    ignore = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__")
    copies = []
    for dist in DIST_DIRS:
        copy = work / dist.relative_to(ROOT)
        shutil.copytree(dist, copy, symlinks=False, ignore=ignore)
        copies.append(str(copy))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(out), *copies], check=True, timeout=600)
    return sorted(out.glob("*.whl"))


def _check_wheel(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(zf.read(meta_name))
        assert meta["License-Expression"] == "MIT", wheel.name
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), wheel.name
        assert any(n.endswith("/py.typed") for n in names), wheel.name
        for req in meta.get_all("Requires-Dist") or []:
            assert Requirement(req).specifier, f"{wheel.name}: {req} has no version range"
        if meta["Name"] == "cruijff-kit":
            assert any(n.endswith("resources/words.txt") for n in names)
            assert "ck = cruijff_kit._cli:main" in zf.read(meta_name.replace("METADATA", "entry_points.txt")).decode()


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("CK_SLOW") != "1", reason="slow tier: set CK_SLOW=1")
@pytest.mark.timeout(2400)
def test_wheels_install_into_a_fresh_venv_and_run_the_fast_demo(tmp_path):
    wheels = _build_wheels(tmp_path / "wheels", tmp_path / "src")
    assert len(wheels) == len(DIST_DIRS)
    for wheel in wheels:
        _check_wheel(wheel)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py, ck = venv / "bin" / "python", venv / "bin" / "ck"
    constraints = str(ROOT / "constraints.txt")
    torch_pin = next(line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("torch=="))
    pip = [str(py), "-m", "pip", "install", "-q", "-c", constraints]
    subprocess.run([*pip, torch_pin], check=True, timeout=900)  # first and alone, as the Makefile does
    subprocess.run([*pip, "--find-links", str(tmp_path / "wheels"), "cruijff-kit[trl,inspect,plots,models]"],
                   check=True, timeout=1200)
    cuda = subprocess.run([str(py), "-c", "import torch; print(torch.version.cuda)"], capture_output=True,
                          text=True, check=True, timeout=300)
    assert cuda.stdout.strip() == "None", "the packaging test installed a CUDA build of torch"
    where = subprocess.run([str(py), "-c", "import cruijff_kit; print(cruijff_kit.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path, timeout=300)
    assert Path(where.stdout.strip()).is_relative_to(venv), "not a non-editable install into the fresh venv"

    demo = tmp_path / "demo"
    (demo / "examples").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "demo.yaml", demo / "examples" / "demo.yaml")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)
    model, data = demo / ".cache" / "models" / "tiny-llama3", demo / ".cache" / "data" / "capitalize.json"
    spec = str(demo / "examples" / "demo.yaml")
    sets = ["--set", f"model.path={model}", "--set", "experiment=capitalize-demo-fast",
            "--set", "train.learning_rate=1e-2"]
    exp = demo / "runs" / "capitalize-demo-fast"
    for args in (["models", "tiny", str(model), "--family", "llama3"], ["data", "capitalize", str(data)],
                 ["validate", spec, *sets], ["plan", spec, *sets], ["run", spec, *sets],
                 ["summarize", str(exp)], ["status", str(exp)]):
        res = subprocess.run([str(ck), *args], cwd=demo, env=env, capture_output=True, text=True, timeout=1200)
        assert res.returncode == 0, f"ck {' '.join(args)}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    rows = list(csv.DictReader((exp / "summary.csv").open()))
    assert {r["target"] for r in rows} == {"base", "epoch_2"}
    assert {r["train.lora.rank"] for r in rows} == {"4", "16"}
    assert all(r["state"] == "done" and r["match/accuracy"] != "" for r in rows)
    assert (exp / "plots" / "loss_curves.png").stat().st_size > 10000


def test_summarize_plots_without_matplotlib_name_the_extra(monkeypatch):
    from cruijff_kit import CkError
    from cruijff_kit._summaries import plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` sees when it is missing
    with pytest.raises(CkError, match=r'pip install "cruijff-kit\[plots\]"') as err:
        plots._plt()
    assert "--no-plots" in str(err.value)
