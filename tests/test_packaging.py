"""The installable distributions: version ranges, extras, licence, one version (fast, from the
pyproject files), and the built wheels installed into a fresh virtual environment running the fast demo
with the installed ``ck`` (slow)."""

from __future__ import annotations

import ast
import csv
import email
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
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
#: never installed by a plain ``pip install cruijff-kit`` (each belongs to an extra or a plugin)
HEAVY = {"torch", "transformers", "matplotlib", "gguf", "datasets", "pyarrow", "pandas"}


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


def test_litellm_is_held_to_the_tested_minor():
    # the collabllm preset reads a file inside litellm's package (not an API): the tested minor only
    pinned = _constraints()["litellm"]
    specs = [r.specifier for d in DIST_DIRS for r in _requirements(_pyproject(d)["project"])
             if canonicalize_name(r.name) == "litellm"]
    assert len(specs) >= 2  # the core's simulate extra and the inspect plugin's collab extra
    next_minor = Version(f"{pinned.major}.{pinned.minor + 1}.0")
    assert all(pinned in spec and next_minor not in spec for spec in specs), specs


def test_vllm_is_left_to_the_user_and_says_so():
    for dist in DIST_DIRS:
        assert "vllm" not in {canonicalize_name(r.name) for r in _requirements(_pyproject(dist)["project"])}, dist
    section = " ".join(install_section((ROOT / "plugins/evaluators/inspect/README.md").read_text()).split())
    assert "not in any extra" in section and "untested in CI" in section and "pip install vllm" in section


def test_one_version_for_every_distribution():
    version = _version()
    core = _pyproject(CORE)
    assert "version" not in core["project"] and core["project"]["dynamic"] == ["version"]
    assert core["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "cruijff_kit._base.version.__version__"}
    for dist in PLUGIN_DIRS:
        assert Version(_pyproject(dist)["project"]["version"]) == version, dist


def _plain_install() -> set[str]:
    """What ``pip install cruijff-kit`` installs among direct requirements: the core's required set plus
    the required sets of the project's distributions in it (the local scheduler, the formats datasets)."""
    by_name = {canonicalize_name(_pyproject(d)["project"]["name"]): d for d in DIST_DIRS}
    todo, seen = ["cruijff-kit"], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in by_name:
            todo += [canonicalize_name(Requirement(r).name) for r in _pyproject(by_name[name])["project"]["dependencies"]]
    return seen


def test_core_is_light_and_its_extras_cover_every_plugin():
    project = _pyproject(CORE)["project"]
    required = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    assert not _plain_install() & HEAVY, _plain_install() & HEAVY
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


def install_section(readme: str) -> str:
    """The text of the README's ``## Install`` section (empty when there is none)."""
    match = re.search(r"^## Install[^\n]*\n(.*?)(?=^## |\Z)", readme, flags=re.M | re.S)
    return match.group(1) if match else ""


def installers(name: str, core: dict) -> set[str]:
    """The core's extras that install distribution ``name`` (``""``: the core's plain install does)."""
    name = canonicalize_name(name)
    plain = name == "cruijff-kit" or name in {canonicalize_name(Requirement(r).name) for r in core["dependencies"]}
    return ({""} if plain else set()) | {extra for extra, reqs in core["optional-dependencies"].items()
                           if name in {canonicalize_name(Requirement(r).name) for r in reqs}}


def readme_problem(readme: str, name: str, core: dict) -> str | None:
    """Why ``readme`` does not tell how to install distribution ``name`` (``None`` when it does)."""
    section = install_section(readme)
    if "pip install" not in section:
        return "no `## Install` section with a `pip install` command"
    wanted = installers(name, core)
    shown = {e for extras in re.findall(r'pip install "cruijff-kit\[([^\]]+)\]"', section)
             for e in extras.split(",")}
    if "" in wanted and re.search(r"pip install cruijff-kit(?![\w\[-])", section):
        return None
    if shown & wanted or re.search(rf"pip install \"?{re.escape(name)}[\"\[\s]", section):
        return None
    return f"its `## Install` section shows no command that installs {name} (extras: {sorted(wanted)})"


@pytest.mark.parametrize("dist", DIST_DIRS, ids=lambda p: str(p.relative_to(ROOT)))
def test_readme_says_how_to_install_the_distribution(dist):
    problem = readme_problem((dist / "README.md").read_text(), _pyproject(dist)["project"]["name"],
                             _pyproject(CORE)["project"])
    assert problem is None, f"{dist / 'README.md'}: {problem}"


def test_the_readme_check_rejects_what_it_should():
    core = {"dependencies": ["cruijff-kit-local>=0.1,<0.2"],
            "optional-dependencies": {"trl": ["cruijff-kit-trl>=0.1,<0.2"], "all": ["cruijff-kit[trl]"]}}
    good = '# x\n\n## Install\n\n```bash\npip install "cruijff-kit[trl,slurm]"\n```\n\n## Options\n'
    assert readme_problem(good, "cruijff-kit-trl", core) is None
    assert readme_problem("# cruijff-kit-trl\n", "cruijff-kit-trl", core)  # a title only
    assert readme_problem(good.replace("[trl,slurm]", "[slurm]"), "cruijff-kit-trl", core)  # another extra
    # a command outside the Install section does not count
    assert readme_problem('# x\n\npip install "cruijff-kit[trl]"\n\n## Install\n\nsee above\n',
                          "cruijff-kit-trl", core)
    assert readme_problem("# x\n## Install\npip install cruijff-kit\n", "cruijff-kit-local", core) is None
    assert readme_problem("# x\n## Install\npip install cruijff-kit\n", "cruijff-kit-trl", core)


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


#: the oldest setuptools that writes License-Expression and ships license-files (PEP 639)
SETUPTOOLS_MIN = Version("77")


def _build_wheels(out: Path, work: Path) -> list[Path]:
    """Wheels of every distribution, built from copies (symlinks resolved) so the checkout stays clean,
    with this environment's setuptools (requirements-dev.txt asks for one new enough)."""
    setuptools = Version(metadata.version("setuptools"))
    assert setuptools >= SETUPTOOLS_MIN, (
        f"setuptools {setuptools} cannot build these wheels (PEP 639 licence fields need >= {SETUPTOOLS_MIN}): "
        "`make install` installs the version of constraints.txt")
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


def _distribution_names() -> set[str]:
    return {canonicalize_name(_pyproject(d)["project"]["name"]) for d in DIST_DIRS}


def _local_only(wheels: list[Path], path: Path) -> Path:
    """A constraints file pinning every cruijff-kit distribution to the version of its wheel here, so an
    index that also has them cannot win."""
    pins = []
    for wheel in wheels:
        name, version = wheel.name.split("-")[:2]
        pins.append(f"{canonicalize_name(name)}=={version}")
    path.write_text("\n".join(sorted(pins)) + "\n")
    return path


def _installed_from(report: Path, wheels: Path) -> dict[str, str]:
    """Canonical name -> where pip took it from, for each cruijff-kit distribution of a ``--report``."""
    items = json.loads(report.read_text())["install"]
    return {canonicalize_name(i["metadata"]["name"]): i["download_info"]["url"] for i in items
            if canonicalize_name(i["metadata"]["name"]).startswith("cruijff-kit")}


def _not_from(sources: dict[str, str], wheels: Path) -> dict[str, str]:
    """The distributions of ``sources`` that pip did not take from the folder ``wheels``."""
    return {name: url for name, url in sources.items() if not url.startswith(wheels.as_uri() + "/")}


def test_the_wheel_source_check_rejects_an_index_download(tmp_path):
    wheels = tmp_path / "wheels"
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"install": [
        {"metadata": {"name": "cruijff_kit"}, "download_info": {"url": f"{wheels.as_uri()}/cruijff_kit-0.1.0-py3-none-any.whl"}},
        {"metadata": {"name": "cruijff-kit-trl"}, "download_info": {"url": "https://files.example.org/cruijff_kit_trl-0.1.0-py3-none-any.whl"}},
        {"metadata": {"name": "cruijff-kit-slurm"}, "download_info": {"url": f"{wheels.as_uri()}-old/cruijff_kit_slurm-0.1.0-py3-none-any.whl"}},
        {"metadata": {"name": "torch"}, "download_info": {"url": "https://files.example.org/torch.whl"}},
    ]}))
    sources = _installed_from(report, wheels)
    assert set(sources) == {"cruijff-kit", "cruijff-kit-trl", "cruijff-kit-slurm"}
    assert set(_not_from(sources, wheels)) == {"cruijff-kit-trl", "cruijff-kit-slurm"}
    pins = _local_only([tmp_path / "cruijff_kit_local_simulator-0.1.0-py3-none-any.whl"], tmp_path / "c.txt")
    assert pins.read_text() == "cruijff-kit-local-simulator==0.1.0\n"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("CK_SLOW") != "1", reason="slow tier: set CK_SLOW=1")
@pytest.mark.timeout(2400)
def test_wheels_install_into_a_fresh_venv_and_run_the_fast_demo(tmp_path):
    wheel_dir = tmp_path / "wheels"
    wheels = _build_wheels(wheel_dir, tmp_path / "src")
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
    report = tmp_path / "install-report.json"
    subprocess.run([*pip, "-c", str(_local_only(wheels, tmp_path / "local.txt")), "--find-links", str(wheel_dir),
                    "--report", str(report), "cruijff-kit[all]"], check=True, timeout=1500)
    # every distribution installed, each from the wheel folder (not from an index)
    sources = _installed_from(report, wheel_dir)
    assert set(sources) == _distribution_names(), set(sources) ^ _distribution_names()
    assert not (wrong := _not_from(sources, wheel_dir)), f"not installed from {wheel_dir}: {wrong}"
    cuda = subprocess.run([str(py), "-c", "import torch; print(torch.version.cuda)"], capture_output=True,
                          text=True, check=True, timeout=300)
    assert cuda.stdout.strip() == "None", "the packaging test installed a CUDA build of torch"
    where = subprocess.run([str(py), "-c", "import cruijff_kit; print(cruijff_kit.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path, timeout=300)
    assert Path(where.stdout.strip()).is_relative_to(venv), "not a non-editable install into the fresh venv"

    demo = tmp_path / "demo"
    (demo / "examples").mkdir(parents=True)
    for name in ("demo.py", "demo.yaml"):
        shutil.copy(ROOT / "examples" / name, demo / "examples" / name)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)

    # every plugin of every wheel loads in the installed ck
    res = subprocess.run([str(ck), "plugins", "--json"], cwd=demo, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    listed = json.loads(res.stdout)
    assert listed["failed"] == {}, listed["failed"]
    assert {canonicalize_name(p["distribution"]) for p in listed["plugins"]} == _project_names()

    # the repository's fast demo, run by the fresh venv's Python (it calls the installed ck)
    res = subprocess.run([str(py), str(demo / "examples" / "demo.py"), "--fast"], cwd=demo, env=env,
                         capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, f"demo.py --fast:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    exp = demo / "runs" / "capitalize-demo-fast"
    rows = list(csv.DictReader((exp / "summary.csv").open()))
    assert {r["target"] for r in rows} == {"base", "epoch_2"}
    assert {r["train.lora.rank"] for r in rows} == {"4", "16"}
    assert all(r["state"] == "done" and r["match/accuracy"] != "" for r in rows)
    assert (exp / "plots" / "loss_curves.png").stat().st_size > 10000
    res = subprocess.run([str(ck), "status", str(exp), "--json"], cwd=demo, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0 and {r["state"] for r in json.loads(res.stdout)} == {"done"}, res.stderr[-3000:]


def test_summarize_plots_without_matplotlib_name_the_extra(monkeypatch):
    from cruijff_kit import CkError
    from cruijff_kit._summaries import plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` sees when it is missing
    with pytest.raises(CkError, match=r'pip install "cruijff-kit\[plots\]"') as err:
        plots._plt()
    assert "--no-plots" in str(err.value)
