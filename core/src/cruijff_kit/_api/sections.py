"""Plugin sections of a spec (``{plugin: NAME, ...options}``) validated by the plugin's ``Config``,
and the top-level sections that features and plugins own (such as ``simulate``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

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
    (raise :class:`SpecError` naming the path), writes ``resolve(section, spec)`` into each run's
    resolved spec (kept out of the run name), and adds ``reference()`` to the spec reference page.
    """

    key: str
    check: Callable[[LoadedSpec], None]
    resolve: Callable[[Any, LoadedSpec], Any]
    reference: Callable[[], list[ReferenceTable]]


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
