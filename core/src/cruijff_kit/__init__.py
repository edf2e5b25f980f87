"""cruijff-kit: fine-tune, evaluate and compare LLMs from one run spec.

This is the public API for plugin authors (see docs/plugins.md): the hook marker, the base class and
options model of each plugin kind, what a stage receives, the run records a scheduler gets, and the
errors to raise. Names load on first use, so ``import cruijff_kit`` stays light (no torch, no pydantic
until a name needs it). Everything in a module or package whose name starts with ``_`` is private.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cruijff_kit._base.lazy import lazy_exports
from cruijff_kit._base.version import __version__

if TYPE_CHECKING:  # pragma: no cover - typing only: the names below load lazily at run time
    from cruijff_kit._api.context import RunInfo, StageContext, Target
    from cruijff_kit._api.hookspecs import hookimpl
    from cruijff_kit._api.kinds import (
        Dataset,
        DatasetConfig,
        Estimate,
        EvalConfig,
        Evaluator,
        LoraOptions,
        Plugin,
        PluginConfig,
        Prompt,
        Resources,
        Scheduler,
        SchedulerConfig,
        Simulator,
        SimulatorConfig,
        TrainConfig,
        Trainer,
    )
    from cruijff_kit._api.records import PlannedRun, StageDef, StageJob
    from cruijff_kit._api.registry import Registry, plugin_class, registry
    from cruijff_kit._api.retry import (
        BadResponse,
        Caller,
        CallFailed,
        Deadline,
        DeadlineExceeded,
        DownloadStalled,
        RetryPolicy,
        StallGuard,
        call_with_deadline,
        call_with_stall_guard,
        json_body,
        read_body,
        within_deadline,
    )
    from cruijff_kit._api.sections import SpecSection
    from cruijff_kit._api.units import parse_memory, parse_slurm_time
    from cruijff_kit._base.errors import CkError, DataError, PluginError, SpecError, StageError, did_you_mean
    from cruijff_kit._base.layout import ExperimentLayout, RunLayout
    from cruijff_kit._base.yamlfile import spec_error_from

_WHERE = {
    **dict.fromkeys(["hookimpl"], "cruijff_kit._api.hookspecs"),
    **dict.fromkeys(["CkError", "DataError", "PluginError", "SpecError", "StageError", "did_you_mean"],
                    "cruijff_kit._base.errors"),
    **dict.fromkeys(["Plugin", "PluginConfig", "Trainer", "TrainConfig", "LoraOptions", "Evaluator", "EvalConfig",
                     "Scheduler", "SchedulerConfig", "Resources", "Dataset", "DatasetConfig", "Prompt",
                     "Simulator", "SimulatorConfig", "Estimate"], "cruijff_kit._api.kinds"),
    **dict.fromkeys(["StageContext", "RunInfo", "Target"], "cruijff_kit._api.context"),
    **dict.fromkeys(["PlannedRun", "StageDef", "StageJob"], "cruijff_kit._api.records"),
    **dict.fromkeys(["RunLayout", "ExperimentLayout"], "cruijff_kit._base.layout"),
    **dict.fromkeys(["Registry", "registry", "plugin_class"], "cruijff_kit._api.registry"),
    **dict.fromkeys(["Caller", "CallFailed", "RetryPolicy", "Deadline", "DeadlineExceeded", "BadResponse",
                     "DownloadStalled", "StallGuard", "call_with_deadline", "within_deadline", "read_body",
                     "json_body", "call_with_stall_guard"], "cruijff_kit._api.retry"),
    **dict.fromkeys(["SpecSection"], "cruijff_kit._api.sections"),
    **dict.fromkeys(["parse_memory", "parse_slurm_time"], "cruijff_kit._api.units"),
    **dict.fromkeys(["spec_error_from"], "cruijff_kit._base.yamlfile"),
}

__all__ = [
    "BadResponse", "Deadline", "DeadlineExceeded", "DownloadStalled", "StallGuard", "call_with_deadline",
    "call_with_stall_guard", "json_body", "read_body", "within_deadline",
    "CallFailed", "Caller", "CkError", "DataError", "Dataset", "DatasetConfig", "Estimate", "EvalConfig",
    "Evaluator", "ExperimentLayout", "LoraOptions", "PlannedRun", "Plugin", "PluginConfig", "PluginError",
    "Prompt", "Registry", "Resources", "RetryPolicy", "RunInfo", "RunLayout", "Scheduler",
    "SchedulerConfig", "Simulator", "SimulatorConfig", "SpecError", "SpecSection", "StageContext",
    "StageDef", "StageError", "StageJob", "Target", "TrainConfig", "Trainer", "__version__",
    "did_you_mean", "hookimpl", "parse_memory", "parse_slurm_time", "plugin_class", "registry", "spec_error_from",
]

__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
