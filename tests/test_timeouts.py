"""Every test has a time limit from its tier (tests/conftest.py): a hang fails that test, quickly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

HERE = Path(__file__).resolve().parent
MARKERS = """
[pytest]
markers =
    integration: tier
    slow: tier
"""


def _suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, unit_limit: float | None = None) -> None:
    """The real tests/conftest.py, its unit limit optionally shortened so a hang is seen in seconds."""
    monkeypatch.setenv("PYTHONPATH", str(HERE))
    monkeypatch.delenv("PYTEST_TIMEOUT", raising=False)
    conftest = (HERE / "conftest.py").read_text()
    if unit_limit is not None:
        assert "UNIT_TIMEOUT: float = 120\n" in conftest
        conftest = conftest.replace("UNIT_TIMEOUT: float = 120\n", f"UNIT_TIMEOUT: float = {unit_limit}\n")
    pytester.makeconftest(conftest)
    pytester.makeini(MARKERS)


def test_each_tier_gets_its_limit_and_an_explicit_marker_wins(pytester, monkeypatch):
    _suite(pytester, monkeypatch)
    pytester.makepyfile(test_limits="""
        import pytest

        def limit(request):
            return request.node.get_closest_marker("timeout").args[0]

        def test_unit(request):
            assert limit(request) == 120

        @pytest.mark.integration
        def test_integration(request):
            assert limit(request) == 300

        @pytest.mark.slow
        def test_slow(request):
            assert limit(request) == 900

        @pytest.mark.integration
        @pytest.mark.slow
        def test_both(request):
            assert limit(request) == 900

        @pytest.mark.integration
        @pytest.mark.timeout(7)
        def test_explicit(request):
            assert limit(request) == 7
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist")
    result.assert_outcomes(passed=5)


def test_a_hanging_unit_test_fails_at_its_limit(pytester, monkeypatch):
    _suite(pytester, monkeypatch, unit_limit=2)
    pytester.makepyfile(test_hang="""
        import time
        import pytest

        def test_hangs():
            time.sleep(600)

        def test_next_one_still_runs():
            pass

        @pytest.mark.integration
        def test_integration_not_cut_at_the_unit_limit():
            time.sleep(3)
    """)
    start = time.monotonic()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", timeout=120)
    assert time.monotonic() - start < 60
    result.assert_outcomes(failed=1, passed=2)
    result.stdout.fnmatch_lines(["*FAILED test_hang.py::test_hangs - Failed: Timeout (>2.0s) from pytest-timeout*"])


def test_timeout_option_replaces_the_tier_limits(pytester, monkeypatch):
    _suite(pytester, monkeypatch, unit_limit=1)
    pytester.makepyfile(test_opt="""
        import time

        def test_longer_than_the_unit_limit():
            time.sleep(2)
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", "--timeout=0")
    result.assert_outcomes(passed=1)
