"""JSON Schema of the run spec, with each installed plugin's options (for editor completion)."""

from __future__ import annotations

from typing import Any

from cruijff_kit._engine.spec import SECTION_KINDS, SpecModel


def _plugin_variants(kind: str) -> list[dict[str, Any]]:
    from cruijff_kit._api.registry import registry

    out = []
    for name, reg in sorted(registry().plugins[kind].items()):
        schema = reg.cls.Config.model_json_schema()
        schema.setdefault("properties", {})
        schema["properties"] = {"plugin": {"const": name}, **schema["properties"]}
        schema["required"] = ["plugin", *schema.get("required", [])]
        schema["title"] = f"{kind} plugin `{name}`"
        out.append(schema)
    return out


def spec_json_schema() -> dict[str, Any]:
    """The schema of :class:`SpecModel` with plugin sections as ``oneOf`` the installed plugins."""
    schema = SpecModel.model_json_schema()
    props = schema["properties"]
    for key, kind in SECTION_KINDS.items():
        variants = _plugin_variants(kind)
        if not variants:
            continue
        one = {"oneOf": variants}
        if key == "eval":
            props[key] = {"type": "array", "items": one, "description": props[key].get("description", "")}
        elif key == "train":
            props[key] = {"anyOf": [one, {"type": "null"}]}
        else:
            props[key] = one
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cruijff-kit run spec"
    return schema
