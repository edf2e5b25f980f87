"""Docs that are generated from code stay current."""

from __future__ import annotations

from pathlib import Path

from cruijff_kit._engine.reference import spec_reference

ROOT = Path(__file__).resolve().parents[1]


def test_spec_reference_is_generated_from_the_models():
    page = (ROOT / "docs" / "spec-reference.md").read_text()
    assert page == spec_reference(), "regenerate with: ck schema --markdown > docs/spec-reference.md"
    assert "`rank`" in page and "`save_epochs`" in page and "`checkpoints`" in page


def test_readme_shows_the_two_commands_first():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block
    assert "make test" in (ROOT / ".ci" / "run").read_text()
