"""Helpers for trainer plugins: precision and device, adapter folders and their export, metrics rows,
plan-time checks and estimates, the count of target tokens ``max_seq_length`` cuts, the relaunch of a stage on several processes (torchrun), the stop
at the first nan or inf loss (:class:`LossWatch`), and what to tell experiment trackers (:func:`tracker_settings`).

Nothing here imports torch at import time; the functions that need it import it when called.
"""

from cruijff_kit.training._adapters import (
    ADAPTER_FILES,
    MetricsRow,
    MetricsWriter,
    adapter_info,
    chat_template_text,
    export_adapter,
    method_info,
    peak_memory_mb,
    plan_device,
    read_metrics,
    require_saved_epochs,
    resolve_precision,
    run_device,
    save_adapter,
    save_adapter_weights,
    supports_bf16,
    torch_dtype,
    truncate_metrics,
    write_adapter_dir,
)
from cruijff_kit.training._distributed import is_worker, needs_launch, relaunch, world_size
from cruijff_kit.training._estimate import (
    ModelShape,
    check_targets,
    check_validation_split,
    estimate_run,
    find_config,
    model_ref,
    model_shape,
)
from cruijff_kit.training._finite import LossWatch, nonfinite_loss_error
from cruijff_kit.training._trackers import (
    TRACKER_MODULES,
    MlflowOptions,
    Tracker,
    TrackerOptions,
    TrackerSettings,
    WandbOptions,
    check_tracker_options,
    check_trackers_installed,
    flat_params,
    tracker_settings,
)
from cruijff_kit.training._trainer_args import check_trainer_args
from cruijff_kit.training._truncation import (
    SplitTruncation,
    TruncationCheck,
    count_truncation,
    plan_truncation,
    require_truncation_allowed,
)

__all__ = [
    "ADAPTER_FILES", "LossWatch", "MetricsRow", "MetricsWriter", "ModelShape", "SplitTruncation", "TruncationCheck", "adapter_info",
    "chat_template_text", "check_targets", "check_trainer_args", "check_validation_split", "count_truncation", "estimate_run",
    "export_adapter", "find_config", "is_worker", "method_info", "model_ref", "model_shape", "needs_launch", "nonfinite_loss_error",
    "peak_memory_mb", "plan_device", "plan_truncation", "read_metrics", "relaunch", "require_saved_epochs",
    "require_truncation_allowed", "resolve_precision", "run_device", "save_adapter", "save_adapter_weights", "supports_bf16",
    "torch_dtype", "truncate_metrics", "world_size", "write_adapter_dir",
    "TRACKER_MODULES", "MlflowOptions", "Tracker", "TrackerOptions", "TrackerSettings", "WandbOptions",
    "check_tracker_options", "check_trackers_installed", "flat_params", "tracker_settings",
]
