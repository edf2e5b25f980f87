"""A spec that holds only a `simulate:` section: `ck validate` and `ck plan` accept it, `ck run` says to use
`ck simulate`, and `ck simulate` runs it; a spec that has runs still needs a dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fake_openai import FakeOpenAI
from simulate_fixtures import key_in_environment, read_conversations, running_server, write_sim_spec
from test_simulate_cli import ck_here as run_ck_here

fake_server = pytest.fixture(running_server, name="fake_server")
api_key = pytest.fixture(key_in_environment, name="api_key")


def ck_here(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The `ck` entry point in this process: (exit code, stdout + stderr)."""
    code, out, err = run_ck_here(capsys, *args)
    return code, out + err


def without_dataset(spec: Path, **top: object) -> Path:
    data = yaml.safe_load(spec.read_text())
    del data["dataset"]
    data.update(top)
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    return spec


def test_simulate_only_spec_validates_plans_and_simulates(tmp_path: Path, fake_server: FakeOpenAI, api_key: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    spec = without_dataset(write_sim_spec(tmp_path, fake_server.url, stops=[1, 2]))
    code, out = ck_here(capsys, "validate", str(spec))
    assert code == 0 and "valid. No runs" in out and f"ck simulate {spec}" in out, out
    code, out = ck_here(capsys, "plan", str(spec))
    assert code == 0 and "No runs" in out, out
    code, out = ck_here(capsys, "run", str(spec))
    assert code == 2 and "holds only a `simulate:` section" in out and "ck simulate" in out, out
    assert not (tmp_path / "runs").exists()  # neither plan nor run wrote an experiment folder

    code, out = ck_here(capsys, "simulate", str(spec))
    assert code == 0, out
    assert len(read_conversations(tmp_path / "sim" / "conversations.jsonl")) == 2


def test_simulate_section_is_still_checked_without_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_sim_spec(tmp_path, "http://127.0.0.1:9/v1", stops=[1], simulate={"max_turn": 2})
    without_dataset(spec)
    code, out = ck_here(capsys, "validate", str(spec))
    assert code == 2 and "simulate.max_turn" in out and "Did you mean `max_turns`?" in out, out


@pytest.mark.parametrize("top", [{}, {"eval": [{"plugin": "inspect", "task": "t"}]}])
def test_a_spec_with_runs_or_without_simulate_needs_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               top: dict[str, object]) -> None:
    spec = without_dataset(write_sim_spec(tmp_path, "http://127.0.0.1:9/v1", stops=[1]), **top)
    if not top:  # no simulate section either
        data = yaml.safe_load(spec.read_text())
        del data["simulate"]
        spec.write_text(yaml.safe_dump(data))
    code, out = ck_here(capsys, "validate", str(spec))
    assert code == 2 and "at `dataset`: required key `dataset` is missing" in out, out
    assert ("`eval`" in out) == bool(top)
