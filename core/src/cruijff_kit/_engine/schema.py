"""JSON Schema (draft 2020-12) of the run spec, with each installed plugin's options, for validators
and editors (e.g. the YAML language server): a key no model knows is refused everywhere."""

from __future__ import annotations

import json
import re
from typing import Any

from cruijff_kit._api.sections import embed_defs, plugin_section_schema
from cruijff_kit._engine.spec import SECTION_KINDS, SpecModel

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _dotted_path_names() -> dict[str, str]:
    """``propertyNames`` of ``sweep`` and of each variant: a dotted path under a top-level key."""
    keys = "|".join(re.escape(k) for k in SpecModel.model_fields)
    return {"pattern": rf"^({keys})([.\[]|$)"}


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` that also accepts null; an object schema by its type, so that a validator reports an
    error inside the object, not only that no alternative matched."""
    if schema.get("type") == "object":
        return {**schema, "type": ["object", "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _description(prop: dict[str, Any]) -> dict[str, Any]:
    """The ``description`` of a property schema, to keep when the schema is replaced."""
    return {"description": prop["description"]} if "description" in prop else {}


def spec_json_schema() -> dict[str, Any]:
    """The schema of :class:`SpecModel` with each plugin section typed by the installed plugins and
    each owned section (``simulate``) by its owner's schema; every ``$defs`` entry at the root."""
    from cruijff_kit._api.registry import registry

    schema = SpecModel.model_json_schema()
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    props = schema["properties"]
    for key, kind in SECTION_KINDS.items():
        if not registry().plugins[kind]:  # none installed: left as the untyped `Section`
            continue
        section = plugin_section_schema(kind, defs)
        if key == "eval":
            props[key] = {"type": "array", "items": section, **_description(props[key])}
        elif key == "train":
            props[key] = {**_or_null(section), **_description(props[key])}
        else:
            props[key] = {**section, **_description(props[key])}
    for key, owner in sorted(registry().spec_sections.items()):
        if owner.schema is not None and key in props:
            props[key] = {**_or_null(embed_defs(owner.schema(), f"{key}.", defs)), **_description(props[key])}
    props["sweep"]["propertyNames"] = _dotted_path_names()
    props["variants"]["items"]["propertyNames"] = _dotted_path_names()
    if '"#/$defs/Section"' not in json.dumps(props):
        del defs["Section"]
    return {"$schema": DRAFT, **schema, "title": "cruijff-kit run spec"}
