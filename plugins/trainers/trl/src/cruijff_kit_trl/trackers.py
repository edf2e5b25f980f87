"""Trackers of ``plugin: trl``: the Hugging Face Trainer's integrations, told where each run belongs.

TensorBoard is the Trainer's own ``report_to`` (event files in ``train/tensorboard/``). W&B and MLflow
are the Trainer's ``WandbCallback`` and ``MLflowCallback`` with their setup replaced: the project,
group, experiment and run name come from :func:`cruijff_kit.training.tracker_settings`, and the config
(W&B) or params (MLflow) are the run's resolved spec instead of the Trainer's arguments. The metrics
they log are the Trainer's (``train/loss``, ``eval/loss`` in W&B; ``loss``, ``eval_loss`` in MLflow).

Imported only inside a train stage (it imports transformers).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cruijff_kit import training
from cruijff_kit_trl.config import TrlConfig

#: Trackers the Trainer reports to through ``report_to`` (the others get the callbacks below).
NATIVE = ("tensorboard",)


def settings(ctx: Any, config: TrlConfig) -> training.TrackerSettings:
    """What to tell each tracker about this run."""
    return training.tracker_settings(ctx.spec, config.report_to, config.trackers, train_dir=ctx.layout.train_dir)


def report_to(ctx: Any, config: TrlConfig) -> list[str] | str:
    """The Trainer's ``report_to`` ("none" when empty): the trackers it drives itself.

    TensorBoard event files always go to ``train/tensorboard/`` inside the run folder: the Trainer's
    default (``output_dir/runs``) is the resumable state, deleted after success, and a
    ``TENSORBOARD_LOGGING_DIR`` left in the environment (by an earlier run in the same process, say)
    could point anywhere, so it is overridden.
    """
    if "tensorboard" in config.report_to:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(ctx.layout.train_dir / "tensorboard")
    return [t for t in config.report_to if t in NATIVE] or "none"


def callbacks(ctx: Any, config: TrlConfig) -> list[Any]:
    """The W&B and MLflow callbacks this run asks for (none when ``report_to`` lists neither)."""
    wanted = [t for t in config.report_to if t not in NATIVE]
    if not wanted:
        return []
    found = settings(ctx, config)
    out: list[Any] = []
    if "wandb" in wanted:
        out.append(wandb_callback(found))
    if "mlflow" in wanted:
        out.append(mlflow_callback(found))
    return out


def describe(ctx: Any, config: TrlConfig) -> list[str]:
    """One line per tracker of this run (for the stage's log)."""
    return settings(ctx, config).describe() if config.report_to else []


def close(trainer: Any, *, failed: bool) -> None:
    """End the tracker runs of ``trainer``'s callbacks (after an error the W&B run is marked failed)."""
    for cb in trainer.callback_handler.callbacks:
        if hasattr(cb, "ck_close"):
            cb.ck_close(failed=failed)


def wandb_callback(found: training.TrackerSettings) -> Any:
    """The Trainer's ``WandbCallback``, starting the run from ``found`` with the spec as its config."""
    from transformers.integrations import WandbCallback

    class CkWandbCallback(WandbCallback):
        """``WandbCallback`` whose run is named and grouped by the experiment; finished at train end."""

        def setup(self, args: Any, state: Any, model: Any, **kwargs: Any) -> None:
            self._initialized = True
            if not state.is_world_process_zero:
                return
            Path(found.wandb["dir"]).mkdir(parents=True, exist_ok=True)
            self._wandb.init(**found.wandb, config=found.config, reinit="finish_previous")
            self._wandb.define_metric("train/global_step")
            self._wandb.define_metric("*", step_metric="train/global_step", step_sync=True)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            super().on_train_end(args, state, control, **kwargs)
            self.ck_close(failed=False)

        def ck_close(self, *, failed: bool) -> None:
            if self._wandb.run is not None:
                self._wandb.finish(exit_code=1 if failed else 0)

    return CkWandbCallback()


def mlflow_callback(found: training.TrackerSettings) -> Any:
    """The Trainer's ``MLflowCallback``, starting the run from ``found`` with the flattened spec as params."""
    from transformers.integrations import MLflowCallback

    class CkMlflowCallback(MLflowCallback):
        """``MLflowCallback`` whose run goes to the experiment's MLflow experiment; ended at train end."""

        def setup(self, args: Any, state: Any, model: Any) -> None:
            self._log_artifacts = False
            self._async_log = True
            self._initialized = True
            if not state.is_world_process_zero:
                return
            mlflow = self._ml_flow
            if found.mlflow["tracking_uri"]:
                mlflow.set_tracking_uri(found.mlflow["tracking_uri"])
            if mlflow.active_run() is not None:
                mlflow.end_run()  # left by an earlier run in this process
            mlflow.set_experiment(found.mlflow["experiment"])
            mlflow.start_run(run_name=found.mlflow["run_name"])
            self._auto_end_run = True
            items = list(found.params.items())
            for i in range(0, len(items), self._MAX_PARAMS_TAGS_PER_BATCH):
                mlflow.log_params(dict(items[i:i + self._MAX_PARAMS_TAGS_PER_BATCH]))

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            super().on_train_end(args, state, control, **kwargs)
            self._auto_end_run = False  # else __del__, run whenever the trainer is collected, ends a later run

        def ck_close(self, *, failed: bool) -> None:
            if self._auto_end_run and self._ml_flow.active_run() is not None:
                self._ml_flow.end_run(status="FAILED" if failed else "FINISHED")
            self._auto_end_run = False

    return CkMlflowCallback()
