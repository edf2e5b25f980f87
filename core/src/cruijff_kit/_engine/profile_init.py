"""``ck init``: write a user profile by asking questions (or from ``--set`` values)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cruijff_kit._base.errors import CkError, SpecError
from cruijff_kit._engine.profile import check_no_secrets, user_profile_path, write_profile
from cruijff_kit._engine.spec import parse_overrides, set_path


def run_init(scheduler: str | None, path: Path | None, sets: tuple[str, ...], *, interactive: bool) -> Path:
    """Ask for (or take) each option of the scheduler's Profile model and write the profile."""
    from pydantic import ValidationError

    from cruijff_kit._api.registry import registry

    reg = registry()
    with_profile = [n for n, r in reg.plugins["scheduler"].items() if getattr(r.cls, "Profile", None)]
    if scheduler is None and interactive and with_profile:
        scheduler = click.prompt("Scheduler to configure", type=click.Choice(sorted(with_profile)))
    target = path or user_profile_path()
    data: dict[str, Any] = {}
    overrides = parse_overrides(sets)
    for key, value in overrides.items():
        set_path(data, key, value, origin="--set")
    if scheduler:
        cls = reg.get("scheduler", scheduler)
        model = getattr(cls, "Profile", None)
        if model is None:
            raise CkError(f"The `{scheduler}` scheduler takes no profile settings.")
        section = data.setdefault(scheduler, {})
        if interactive:
            for name, field in model.model_fields.items():
                if name in section:
                    continue
                default = None if field.is_required() else field.default
                answer = click.prompt(f"{scheduler}.{name} ({field.description or ''})",
                                      default="" if default is None else str(default), show_default=True)
                if answer != "":
                    section[name] = parse_overrides([f"x={answer}"])["x"]
        try:
            model.model_validate(section)
        except ValidationError as exc:
            from cruijff_kit._base.yamlfile import spec_error_from

            raise spec_error_from(exc, model, file=str(target), prefix=scheduler) from None
    if not data:
        raise SpecError("nothing to write: name a scheduler with --scheduler, or give --set values.",
                        file=str(target))
    check_no_secrets(data, target)
    write_profile(target, data)
    return target
