"""The one plugin manager: loads the default plugins and every ``cruijff_kit`` entry point once, and
keeps the registry.

The core's features are default plugins named by string in :data:`DEFAULT_PLUGINS` (so nothing below
them imports them); backends come from entry points. A plugin that fails to import is recorded (name
and error) and reported by ``ck plugins``; the others still load.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

import pluggy

from cruijff_kit._api import hookspecs
from cruijff_kit._api.kinds import KINDS, Plugin
from cruijff_kit._base.errors import PluginError, did_you_mean
from cruijff_kit._base.version import __version__

if TYPE_CHECKING:  # pragma: no cover - typing only
    from cruijff_kit._api.sections import SpecSection

ENTRY_POINT_GROUP = "cruijff_kit"

#: The core's features, registered like plugins (each module implements ``register_commands`` and
#: maybe other hooks); named by string so that the engine never imports a feature.
DEFAULT_PLUGINS = (
    "cruijff_kit._simulate.plugin",
    "cruijff_kit._models.plugin",
    "cruijff_kit._datatools.plugin",
    "cruijff_kit._scaffold.commands",
    "cruijff_kit._summaries.plugin",
    "cruijff_kit.inference._plugin",
)


@dataclass
class Registered:
    """One registered plugin class and where it came from."""

    cls: type[Plugin]
    kind: str
    distribution: str
    version: str


@dataclass
class Registry:
    """Everything the entry points registered, by kind and name, plus load failures."""

    pm: pluggy.PluginManager
    plugins: dict[str, dict[str, Registered]] = field(default_factory=lambda: {k: {} for k in KINDS})
    failures: dict[str, str] = field(default_factory=dict)
    #: Top-level spec sections owned by features and plugins, by key.
    spec_sections: dict[str, SpecSection] = field(default_factory=dict)

    def get(self, kind: str, name: str, *, where: str | None = None) -> type[Plugin]:
        """The class registered as ``name`` for ``kind``, or a PluginError that suggests a fix."""
        found = self.plugins[kind].get(name)
        if found is not None:
            return found.cls
        broken = [f"`{ep}` ({err})" for ep, err in self.failures.items()]
        msg = f"Unknown {kind} plugin `{name}`"
        if where:
            msg = f"{where}: {msg}"
        msg += f". {did_you_mean(name, self.plugins[kind])}"
        if broken:
            msg += " Some plugins failed to load: " + "; ".join(broken) + "."
        else:
            msg += " Install the distribution that provides it (see `ck plugins`)."
        raise PluginError(msg)

    def names(self, kind: str) -> list[str]:
        """Registered names of one kind."""
        return sorted(self.plugins[kind])


def _register_into(registry: Registry, kind: str, dist: str, version: str):
    base = KINDS[kind]

    def register(cls: type[Plugin]) -> None:
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"{dist}: register_{kind}s got {cls!r}, which is not a {base.__name__} subclass.")
        name = getattr(cls, "name", None)
        if not name:
            raise PluginError(f"{dist}: {cls.__name__} has no `name`.")
        registry.plugins[kind][name] = Registered(cls, kind, dist, version)

    return register


def _hook_for(kind: str) -> str:
    return f"register_{kind}s"


def build_registry(extra_plugins: list[object] | None = None) -> Registry:
    """Load entry points (and any in-process plugin objects) into a fresh registry."""
    pm = pluggy.PluginManager("cruijff_kit")
    pm.add_hookspecs(hookspecs)
    registry = Registry(pm=pm)
    owners: dict[str, tuple[str, str]] = {}
    for name in DEFAULT_PLUGINS:
        try:
            pm.register(importlib.import_module(name), name=name)
        except Exception as exc:  # pragma: no cover - a broken install
            registry.failures[name] = f"{type(exc).__name__}: {exc}"
            continue
        owners[name] = ("cruijff-kit", __version__)
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin must not break the others
            registry.failures[ep.name] = f"{type(exc).__name__}: {exc}"
            continue
        owners[ep.name] = (dist, version)
    for i, obj in enumerate(extra_plugins or []):
        name = f"inprocess-{i}"
        pm.register(obj, name=name)
        owners[name] = ("(in process)", "")
    for kind in KINDS:
        for impl in getattr(pm.hook, _hook_for(kind)).get_hookimpls():
            dist, version = owners.get(impl.plugin_name, ("?", "?"))
            try:
                impl.function(register=_register_into(registry, kind, dist, version))
            except Exception as exc:
                registry.failures[impl.plugin_name] = f"{type(exc).__name__}: {exc}"
    for impl in pm.hook.register_spec_sections.get_hookimpls():
        try:
            impl.function(register=lambda section: registry.spec_sections.__setitem__(section.key, section))
        except Exception as exc:
            registry.failures[impl.plugin_name] = f"{type(exc).__name__}: {exc}"
    return registry


@cache
def registry() -> Registry:
    """The process-wide registry (entry points are read once)."""
    return build_registry()


def plugin_class(kind: str, name: str, *, where: str | None = None) -> type[Plugin]:
    """Shortcut for ``registry().get(kind, name)``."""
    return registry().get(kind, name, where=where)
