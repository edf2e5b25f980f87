"""The ``ck`` command line: :mod:`.main` composes it from the engine's areas (:mod:`.runs`, :mod:`.admin`)
and the commands that plugins (the core's features first) add. Imports only light modules."""

from __future__ import annotations

from cruijff_kit._cli.main import _add_plugin_commands, cli, main

__all__ = ["_add_plugin_commands", "cli", "main"]
