"""``ck new``: start a third-party plugin distribution, an inspect task file or an experiment spec.

Templates are plain strings in :mod:`cruijff_kit._scaffold.plugin`, :mod:`~cruijff_kit._scaffold.task`
and :mod:`~cruijff_kit._scaffold.experiment`; nothing here imports a heavy library.
"""

from __future__ import annotations

from cruijff_kit._scaffold.experiment import experiment_answers, experiment_spec, new_experiment
from cruijff_kit._scaffold.plugin import PLUGIN_KINDS, new_plugin
from cruijff_kit._scaffold.task import new_task

__all__ = ["PLUGIN_KINDS", "experiment_answers", "experiment_spec", "new_experiment", "new_plugin", "new_task"]
