"""Trackers of ``plugin: torchtune``: torchtune's own metric loggers, several at once.

The recipe's ``metric_logger`` is :class:`TrackerLogger`: the console (as before) plus torchtune's
``WandBLogger``, ``MLFlowLogger`` and ``TensorBoardLogger`` for the trackers in ``train.report_to``,
started with what :func:`cruijff_kit.training.tracker_settings` says (the W&B project and group, the
MLflow experiment, the run name). The W&B config and the MLflow params are the run's resolved spec
(``spec.yaml``, secrets scrubbed), not torchtune's recipe config, so a sweep's runs compare across
trainers. Metric names follow the Hugging Face Trainer's, as the trl trainer logs them: W&B and
TensorBoard get ``train/loss``, ``train/learning_rate``, ``eval/loss``; MLflow gets ``loss``,
``learning_rate``, ``eval_loss``.

:func:`metric_logger_config` (pure Python) writes the logger's section of ``train/torchtune.yaml``;
the class itself is built by torchtune's ``config.instantiate`` on rank 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: torchtune's metric names -> the Hugging Face Trainer's (validation loss is logged as ``eval_loss``).
HF_NAMES = {"loss": "loss", "lr": "learning_rate", "grad_norm": "grad_norm",
            "tokens_per_second_per_gpu": "tokens_per_second_per_gpu"}
CONSOLE = "cruijff_kit_torchtune.recipe.ConsoleLogger"
COMPONENT = "cruijff_kit_torchtune.trackers.TrackerLogger"


def metric_logger_config(settings: Any, spec_file: Path) -> dict[str, Any]:
    """The recipe's ``metric_logger`` section for the run's :class:`~cruijff_kit.training.TrackerSettings`:
    the console alone when it reports to no tracker, else :class:`TrackerLogger` with each tracker's
    arguments (``spec_file``: the run's ``spec.yaml``, read for the W&B config and the MLflow params)."""
    if not settings.report_to:
        return {"_component_": CONSOLE}
    out: dict[str, Any] = {"_component_": COMPONENT, "spec_file": str(spec_file)}
    if settings.uses("wandb"):
        out["wandb"] = dict(settings.wandb)
    if settings.uses("mlflow"):
        out["mlflow"] = dict(settings.mlflow)
    if settings.uses("tensorboard"):
        out["tensorboard"] = {"log_dir": str(settings.tensorboard_dir)}
    return out


def _number(value: Any) -> float:
    return float(value.item() if hasattr(value, "item") else value)


def hf_names(payload: Mapping[str, Any], *, prefixed: bool) -> dict[str, float]:
    """``payload`` under the Hugging Face Trainer's names, values as floats; ``prefixed``: ``train/...`` and
    ``eval/...`` (as its W&B and TensorBoard integrations write them)."""
    out: dict[str, float] = {}
    for key, value in payload.items():
        name = HF_NAMES.get(key, key)
        if prefixed:
            name = f"eval/{name[5:]}" if name.startswith("eval_") else f"train/{name}"
        out[name] = _number(value)
    return out


class TrackerLogger:
    """torchtune's ``MetricLoggerInterface`` fanned out: the console, then each tracker's torchtune logger."""

    def __init__(self, spec_file: str, wandb: dict[str, Any] | None = None, mlflow: dict[str, Any] | None = None,
                 tensorboard: dict[str, Any] | None = None) -> None:
        from cruijff_kit.files import read_yaml, scrub
        from cruijff_kit.training import flat_params
        from cruijff_kit_torchtune.recipe import ConsoleLogger

        config = scrub(read_yaml(Path(spec_file)))
        self._console = ConsoleLogger()
        #: ``(tracker, logger, prefixed names)`` per tracker.
        self._trackers: list[tuple[str, Any, bool]] = []
        if wandb is not None:
            self._trackers.append(("wandb", _wandb_logger(dict(wandb), config), True))
        if mlflow is not None:
            self._trackers.append(("mlflow", _mlflow_logger(dict(mlflow), flat_params(config)), False))
        if tensorboard is not None:
            from torchtune.training.metric_logging import TensorBoardLogger

            self._trackers.append(("tensorboard", TensorBoardLogger(log_dir=str(tensorboard["log_dir"]),
                                                                    organize_logs=False), True))

    def log(self, name: str, data: Any, step: int) -> None:
        """One metric at ``step``."""
        self.log_dict({name: data}, step)

    def log_config(self, config: Any) -> None:
        """The trackers got the run's spec when they started; torchtune's config is ``train/torchtune.yaml``."""

    def log_dict(self, payload: Mapping[str, Any], step: int) -> None:
        """Training metrics of ``step`` (torchtune's names) to the console and every tracker."""
        self._console.log_dict(payload, step)
        for _, logger, prefixed in self._trackers:
            logger.log_dict(hf_names(payload, prefixed=prefixed), step)

    def log_eval(self, loss: float, step: int) -> None:
        """The validation loss at ``step`` (``eval/loss``, or ``eval_loss`` in MLflow)."""
        self.log_dict({"eval_loss": loss}, step)

    def close(self, failed: bool = False) -> None:
        """End every tracker's run (each once; after an error the W&B run is marked failed)."""
        trackers, self._trackers = self._trackers, []
        for name, logger, _ in trackers:
            if failed and name == "wandb":
                import wandb

                if wandb.run is not None:
                    wandb.finish(exit_code=1)
            elif failed and name == "mlflow":
                import mlflow

                if mlflow.active_run() is not None:
                    mlflow.end_run(status="FAILED")
            else:
                logger.close()
        self._console.close()


def _wandb_logger(args: dict[str, Any], config: dict[str, Any]) -> Any:
    """torchtune's ``WandBLogger`` on a new W&B run with the spec as its config."""
    import wandb
    from torchtune.training.metric_logging import WandBLogger

    if wandb.run is not None:
        wandb.finish()  # left by an earlier run in this process
    log_dir = args.pop("dir")
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return WandBLogger(log_dir=log_dir, config=config, **args)


def _mlflow_logger(args: dict[str, Any], params: dict[str, str]) -> Any:
    """torchtune's ``MLFlowLogger`` on a new MLflow run, its params the flattened spec."""
    import mlflow
    from torchtune.training.metric_logging import MLFlowLogger

    if args.get("tracking_uri"):
        mlflow.set_tracking_uri(args["tracking_uri"])  # MLFlowLogger keeps a URI set before it
    if mlflow.active_run() is not None:
        mlflow.end_run()  # left by an earlier run in this process
    logger = MLFlowLogger(experiment_name=args["experiment"], tracking_uri=args.get("tracking_uri"),
                          run_name=args["run_name"])
    run = mlflow.active_run()
    items = list(params.items())
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per call
        mlflow.log_params(dict(items[i:i + 100]), run_id=run.info.run_id if run is not None else None)
    return logger
