"""Plugin sections of a spec (``{plugin: NAME, ...options}``) validated by the plugin's ``Config``,
and the top-level sections that features and plugins own (such as ``simulate``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, PydanticUserError, ValidationError

from cruijff_kit._api.kinds import PluginConfig
from cruijff_kit._api.registry import plugin_class
from cruijff_kit._base.errors import PluginError, SpecError
from cruijff_kit._base.yamlfile import spec_error_from

if TYPE_CHECKING:  # pragma: no cover - typing only
    from cruijff_kit._engine.spec import LoadedSpec

#: (title, options model, one-line description): one table of the spec reference page.
ReferenceTable = tuple[str, type[BaseModel], str]


@dataclass(frozen=True)
class SpecSection:
    """A top-level spec section that a feature or plugin owns (``simulate`` is one).

    The engine does not know what the section means: at plan time it calls ``check`` once per spec
    (raise :class:`SpecError` naming the path; the notes it may return are shown like the plan's), writes ``resolve(section, spec)`` into each run's
    resolved spec (kept out of the run name), and adds ``reference()`` to the spec reference page.
    ``schema()`` (optional) returns the section's JSON Schema for ``ck schema`` (its own ``$defs``
    and ``#/$defs/...`` references are allowed); without it the section is any mapping there.
    """

    key: str
    check: Callable[[LoadedSpec], list[str] | None]
    resolve: Callable[[Any, LoadedSpec], Any]
    reference: Callable[[], list[ReferenceTable]]
    schema: Callable[[], dict[str, Any]] | None = None


def validate_section(kind: str, section: dict[str, Any], *, path: str, file: str | None,
                     note: str = "") -> tuple[type, PluginConfig]:
    """Validate one plugin section with its plugin's Config; return (plugin class, config)."""
    if not isinstance(section, dict) or "plugin" not in section:
        raise SpecError("needs a `plugin:` key naming the backend.", file=file, path=path,
                        hint="See `ck plugins` for what is installed.")
    name = section["plugin"]
    try:
        cls = plugin_class(kind, str(name))
    except PluginError as exc:
        raise SpecError(str(exc), file=file, path=f"{path}.plugin") from None
    options = {k: v for k, v in section.items() if k != "plugin"}
    try:
        config = cls.Config.model_validate(options)
    except ValidationError as exc:
        raise spec_error_from(exc, cls.Config, file=file, prefix=path,
                              note=f"(options of the `{name}` {kind} plugin{note})") from None
    return cls, config


def dump_section(name: str, config: PluginConfig) -> dict[str, Any]:
    """A resolved section: plugin name plus every option with defaults filled."""
    return {"plugin": name, **config.model_dump(mode="json")}


# --------------------------------------------------------------------------- JSON Schema of sections
_DEFS = "#/$defs/"


def _pointer(name: str) -> str:
    """``name`` escaped for a JSON pointer (RFC 6901)."""
    return name.replace("~", "~0").replace("/", "~1")


def embed_defs(schema: dict[str, Any], prefix: str, defs: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` moved into ``defs`` (the root's) as ``prefix + name``.

    Every ``#/$defs/name`` reference in ``schema`` and in the moved definitions is rewritten to the
    new name, so a schema made on its own (such as pydantic's) can sit anywhere inside another one.
    """
    local = schema.get("$defs", {})
    renamed = {f"{_DEFS}{_pointer(n)}": f"{_DEFS}{_pointer(prefix + n)}" for n in local}

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: fix(v) for k, v in node.items() if node is not schema or k != "$defs"}
        if isinstance(node, list):
            return [fix(v) for v in node]
        return renamed.get(node, node) if isinstance(node, str) else node

    for name, definition in local.items():
        defs[prefix + name] = fix(definition)
    return fix(schema)


def _options_schema(cls: type, prefix: str, defs: dict[str, Any]) -> dict[str, Any]:
    """The schema of a plugin's ``Config``, described by the plugin's description. An option type that
    JSON Schema cannot express (a callable, say) leaves the plugin's options unchecked, and says so."""
    description = getattr(cls, "description", "") or ""
    try:
        options = embed_defs(cls.Config.model_json_schema(), prefix, defs)
    except PydanticUserError as exc:
        note = f"Options not expressible in JSON Schema ({str(exc).splitlines()[0]}); `ck validate` checks them."
        return {"type": "object", "description": f"{description} {note}".strip()}
    if description:
        options["description"] = description
    return options


def plugin_section_schema(kind: str, defs: dict[str, Any], *,
                          optional: Callable[[type], tuple[str, ...]] = lambda cls: ()) -> dict[str, Any]:
    """The JSON Schema of a ``{plugin: NAME, ...options}`` section of ``kind``: ``plugin`` is one of
    the installed plugins, and the options are that plugin's ``Config`` (no other key allowed).

    One ``if plugin == NAME then <NAME's options>`` per plugin, so a validator reports a misspelt
    option against the plugin the section names. ``optional(cls)`` names options that are required
    by the Config but filled in by the core when missing (not required here). Nested definitions go
    into ``defs`` as ``KIND.NAME.Model``.
    """
    from cruijff_kit._api.registry import registry

    plugins = registry().plugins[kind]
    branches = []
    for name, reg in sorted(plugins.items()):
        options = _options_schema(reg.cls, f"{kind}.{name}.", defs)
        options["properties"] = {"plugin": {"const": name}, **options.get("properties", {})}
        filled = set(optional(reg.cls))
        options["required"] = ["plugin", *(r for r in options.get("required", []) if r not in filled)]
        options["title"] = f"{kind} plugin `{name}`"
        condition = {"type": "object", "properties": {"plugin": {"const": name}}, "required": ["plugin"]}
        branches.append({"if": condition, "then": options})
    return {
        "type": "object",
        "required": ["plugin"],
        "properties": {"plugin": {"enum": sorted(plugins), "description": f"The {kind} plugin (see `ck plugins`)."}},
        "allOf": branches,
    }
