"""Reading YAML files and turning pydantic validation errors into one SpecError each.

Both name the file and the YAML path of the problem, and suggest the fix (did-you-mean for keys).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from cruijff_kit._base.errors import SpecError, clip, did_you_mean, short_repr
from cruijff_kit._base.parsing import parse_yaml_text, yaml_problem


def _loc_to_path(loc: tuple[Any, ...], prefix: str = "") -> str:
    parts: list[str] = [prefix] if prefix else []
    for item in loc:
        if isinstance(item, int):
            if parts:
                parts[-1] = f"{parts[-1]}[{item}]"
            else:
                parts.append(f"[{item}]")
        elif item in ("function-after", "function-before") or str(item).startswith(("literal[", "list[", "int", "str")):
            continue
        else:
            parts.append(str(item))
    return ".".join(parts)


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at the parent of ``loc`` (for did-you-mean on unknown keys)."""
    current: Any = model
    for item in loc[:-1]:
        if isinstance(item, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        info = current.model_fields.get(str(item))
        if info is None:
            return []
        ann = info.annotation
        current = _model_in(ann)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _model_in(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def spec_error_from(exc: ValidationError, model: type[BaseModel], *, file: str | None,
                    prefix: str = "", note: str = "") -> SpecError:
    """Turn a pydantic ValidationError into one SpecError naming the YAML path and the fix."""
    errors = exc.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    path = _loc_to_path(loc, prefix)
    if first["type"] == "extra_forbidden":
        key = str(loc[-1])
        valid = _fields_at(model, loc)
        msg = f"unknown key `{clip(key, 80)}`."
        hint = did_you_mean(key, valid) if valid else None
    elif first["type"] == "missing":
        msg = f"required key `{loc[-1]}` is missing."
        hint = None
    else:
        got = first.get("input")
        shown = short_repr(got) if not isinstance(got, dict) else "a mapping"
        msg = f"{first['msg']} (got {shown})."
        hint = None
    if len(errors) > 1:
        msg += f" ({len(errors) - 1} more problem{'s' if len(errors) > 2 else ''} after this one.)"
    if note:
        msg += f" {note}"
    return SpecError(msg, file=file, path=path, hint=hint)



def read_yaml(path: Path, what: str = "spec") -> dict[str, Any]:
    """Read a YAML mapping as ``safe_load`` does; errors name the file and the line.

    A key twice in one mapping, nesting deeper than 100 levels and an alias bomb are errors too
    (:func:`cruijff_kit._base.parsing.parse_yaml_text`).
    """
    if not path.exists():
        raise SpecError(f"the {what} file does not exist.", file=str(path),
                        hint="Check the path (relative paths are relative to the current folder).")
    text = None
    try:
        text = path.read_text(encoding="utf-8")
        data = parse_yaml_text(text, file=str(path))
    except yaml.YAMLError as exc:
        raise SpecError(f"is not valid YAML{yaml_problem(exc, text)}.", file=str(path),
                        hint="Fix the indentation or quoting there.") from None
    except UnicodeDecodeError:
        raise SpecError("is not UTF-8 text.", file=str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"must be a YAML mapping (key: value), got {type(data).__name__}.", file=str(path))
    return data
