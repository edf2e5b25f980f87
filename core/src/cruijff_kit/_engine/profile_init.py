"""``ck init``: write a user profile by asking questions (or from ``--set`` values)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel

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
            _ask(model, section, scheduler)
        else:
            _require_what_runs_need(model, section, scheduler, target)
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


def required_to_run(field: Any) -> bool:
    """Whether a profile field is marked as needed before the scheduler can run anything.

    A scheduler's ``Profile`` marks such a field (optional for the model, so that ``ck init`` can
    write a partial profile) with ``Field(..., json_schema_extra={"required_to_run": True})``.
    """
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("required_to_run"))


def _section_model(field: Any) -> type[BaseModel] | None:
    """The options model of a nested section field (``store: StoreProfile | None``), else None."""
    import typing

    candidates = typing.get_args(field.annotation) or (field.annotation,)
    for c in candidates:
        if isinstance(c, type) and issubclass(c, BaseModel):
            return c
    return None


def _ask(model: type[BaseModel], section: dict[str, Any], prefix: str) -> None:
    """Prompt for each option of ``model`` not given yet; nested sections are asked field by field."""
    for name, field in model.model_fields.items():
        if name in section:
            continue
        nested = _section_model(field)
        if nested is not None:
            needed = required_to_run(field)
            if needed or click.confirm(f"Configure {prefix}.{name} ({field.description or ''})?", default=False):
                sub: dict[str, Any] = {}
                _ask(nested, sub, f"{prefix}.{name}")
                if sub:
                    section[name] = sub
            continue
        question = f"{prefix}.{name} ({field.description or ''})"
        if field.is_required():  # asked again until answered
            section[name] = parse_overrides([f"x={click.prompt(question)}"])["x"]
            continue
        default = field.get_default(call_default_factory=True)
        shown = "" if default is None else str(default)
        answer = click.prompt(question, default=shown, show_default=True)
        if answer not in ("", shown):  # Enter keeps the model's default (not its text)
            section[name] = parse_overrides([f"x={answer}"])["x"]


def _require_what_runs_need(model: type[BaseModel], section: dict[str, Any], prefix: str, target: Path) -> None:
    """``--yes``: refuse to write a profile that the scheduler would refuse to run with."""
    for name, field in model.model_fields.items():
        if name in section or not required_to_run(field):
            continue
        nested = _section_model(field)
        needed = [f"{prefix}.{name}.{k}=..." for k, f in (nested.model_fields.items() if nested else ())
                  if f.is_required()] or [f"{prefix}.{name}=..."]
        raise SpecError(
            f"`{prefix}.{name}` is needed before the {prefix} scheduler can run anything "
            f"({(field.description or '').rstrip('.')}), and --yes asks no questions.",
            file=str(target), path=f"{prefix}.{name}",
            hint=f"Give it with {' '.join('--set ' + n for n in needed)}, or run "
                 f"`ck init --scheduler {prefix}` without --yes to be asked.")
