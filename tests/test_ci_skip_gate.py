"""The skip gate: under CI=true a test may skip only for a reason listed in tests/skip_reasons.py, and a
skip because a plugin of this repository (or a package it requires) is missing fails everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

HERE = Path(__file__).resolve().parent


def _suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    # the real tests/conftest.py, importing the real tests/skip_reasons.py (which reads the repo's pyproject files)
    monkeypatch.setenv("PYTHONPATH", str(HERE))
    pytester.makeconftest((HERE / "conftest.py").read_text())
    pytester.makepyfile(test_gated="""
        import pytest

        def test_unlisted():
            pytest.skip("the database is not running")

        def test_listed():
            pytest.skip("needs a GPU: none here")

        def test_plugin_missing():
            pytest.skip("the trl trainer plugin is not installed")

        @pytest.mark.xfail(reason="known")
        def test_expected_failure():
            assert False
    """)
    # a package the trl plugin requires, made unimportable: the real pytest.importorskip skips the module
    pytester.makepyfile(test_repo_import="""
        import sys
        import pytest

        sys.modules["peft"] = None
        pytest.importorskip("peft")

        def test_uses_peft():
            pass
    """)
    pytester.makepyfile(test_other_import="""
        import pytest

        pytest.importorskip("a_package_no_plugin_of_this_repo_needs")

        def test_uses_it():
            pass
    """)


@pytest.mark.parametrize("ci, failed, skipped, errors", [("true", 2, 1, 2), ("", 1, 3, 1)])
def test_skip_gate(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                   ci: str, failed: int, skipped: int, errors: int) -> None:
    monkeypatch.setenv("CI", ci)
    _suite(pytester, monkeypatch)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", "-rA",
                                           "--continue-on-collection-errors")
    result.assert_outcomes(failed=failed, skipped=skipped, errors=errors, xfailed=1)
    missing = "*skipped because a part of this repository is missing; `make install` installs the core*"
    result.stdout.fnmatch_lines([f"{missing}the trl trainer plugin is not installed*"])
    result.stdout.fnmatch_lines([f"{missing}could not import 'peft'*"])
    if ci:
        result.stdout.fnmatch_lines(["*test_unlisted skipped under CI=true for a reason not listed in "
                                     "tests/skip_reasons.py*the database is not running*"])
        result.stdout.fnmatch_lines(["*test_other_import.py skipped under CI=true for a reason not listed in "
                                     "*could not import 'a_package_no_plugin_of_this_repo_needs'*"])
