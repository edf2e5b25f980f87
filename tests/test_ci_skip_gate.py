"""Under CI=true a test may skip only for a reason listed in tests/skip_reasons.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

HERE = Path(__file__).resolve().parent


def _suite(pytester: pytest.Pytester) -> None:
    shutil.copy(HERE / "skip_reasons.py", pytester.path / "skip_reasons.py")
    gate = (HERE / "conftest.py").read_text()
    pytester.makeconftest(gate)
    pytester.makepyfile(test_gated="""
        import pytest

        def test_unlisted():
            pytest.skip("the database is not running")

        def test_listed():
            pytest.skip("runs as root: permissions cannot fail")

        @pytest.mark.xfail(reason="known")
        def test_expected_failure():
            assert False
    """)


@pytest.mark.parametrize("ci, failed, skipped", [("true", 1, 1), ("", 0, 2)])
def test_only_listed_skip_reasons_pass_under_ci(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                                ci: str, failed: int, skipped: int) -> None:
    monkeypatch.setenv("CI", ci)
    _suite(pytester)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist")
    result.assert_outcomes(failed=failed, skipped=skipped, xfailed=1)
    if failed:
        result.stdout.fnmatch_lines(["*test_unlisted skipped under CI=true for a reason not listed in "
                                     "tests/skip_reasons.py*the database is not running*"])
