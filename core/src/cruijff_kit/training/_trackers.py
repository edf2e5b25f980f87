"""Experiment trackers (W&B, MLflow, TensorBoard): the options every trainer accepts and what to tell
each tracker about a run, so that the runs of one experiment (a sweep) land together.

A trainer lists its trackers in ``train.report_to`` and may set ``train.trackers`` (:class:`TrackerOptions`).
:func:`tracker_settings` turns the run's resolved spec into :class:`TrackerSettings`:

* W&B: project and group default to the experiment's name, the run name is the run's name, the
  config is the resolved spec (secrets scrubbed), files go to ``train/`` of the run folder;
* MLflow: the experiment defaults to the experiment's name, the run name is the run's name, the
  params are the resolved spec flattened to dotted keys (secrets scrubbed);
* TensorBoard: event files in ``train/tensorboard/``.

Each value comes from, first to last: the spec (``train.trackers``), an environment variable the user
set (``WANDB_PROJECT``, ``WANDB_RUN_GROUP``, ``WANDB_ENTITY``, ``WANDB_DIR``,
``MLFLOW_EXPERIMENT_NAME``, ``MLFLOW_TRACKING_URI``), the experiment. Nothing here imports a tracker.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from cruijff_kit._api.kinds import PluginConfig
from cruijff_kit._base.errors import SpecError
from cruijff_kit._base.secrets import scrub

#: A tracker a trainer can report to (``train.report_to``).
Tracker = Literal["wandb", "mlflow", "tensorboard"]
Tracker.__doc__ = "A tracker a trainer can report to (train.report_to): wandb, mlflow, tensorboard."
#: The Python module each tracker needs (each is an extra of the trainer plugins: ``pip install 'PKG[wandb]'``).
TRACKER_MODULES: dict[str, str] = {"wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboard"}
#: MLflow refuses longer parameter values (``mlflow.utils.validation.MAX_PARAM_VAL_LENGTH``).
MLFLOW_PARAM_CHARS = 6000
#: The environment variable each option falls back to (before the experiment's name).
ENV = {"wandb.project": "WANDB_PROJECT", "wandb.group": "WANDB_RUN_GROUP", "wandb.entity": "WANDB_ENTITY",
       "wandb.dir": "WANDB_DIR", "mlflow.experiment": "MLFLOW_EXPERIMENT_NAME",
       "mlflow.tracking_uri": "MLFLOW_TRACKING_URI"}


class WandbOptions(PluginConfig):
    """``train.trackers.wandb``: where a W&B run goes (unset: the environment, then the experiment)."""

    project: str | None = Field(None, min_length=1, description="W&B project (default: WANDB_PROJECT, else the "
                                                                 "experiment name).")
    group: str | None = Field(None, min_length=1, description="W&B group (default: WANDB_RUN_GROUP, else the "
                                                               "experiment name).")
    entity: str | None = Field(None, min_length=1, description="W&B entity (default: WANDB_ENTITY, else W&B's "
                                                                "default entity).")


class MlflowOptions(PluginConfig):
    """``train.trackers.mlflow``: where an MLflow run goes (unset: the environment, then the experiment)."""

    experiment: str | None = Field(None, min_length=1, description="MLflow experiment (default: "
                                                                    "MLFLOW_EXPERIMENT_NAME, else the experiment name).")
    tracking_uri: str | None = Field(None, min_length=1, description="MLflow tracking URI (default: "
                                                                      "MLFLOW_TRACKING_URI, else MLflow's default).")


class TrackerOptions(PluginConfig):
    """``train.trackers``: per-tracker options; the trackers used are those of ``train.report_to``."""

    wandb: WandbOptions = Field(default_factory=WandbOptions, description="W&B project, group, entity.")
    mlflow: MlflowOptions = Field(default_factory=MlflowOptions, description="MLflow experiment, tracking URI.")


def check_tracker_options(report_to: Sequence[str], options: TrackerOptions) -> None:
    """ValueError when ``train.trackers`` sets options of a tracker ``train.report_to`` does not list
    (they would be ignored); trainer configs call it from a model validator."""
    for name in ("wandb", "mlflow"):
        sub = getattr(options, name)
        set_keys = [k for k, v in sub.model_dump().items() if v is not None]
        if set_keys and name not in report_to:
            raise ValueError(f"trackers.{name} sets {', '.join(set_keys)} but report_to does not list {name}, so "
                             f"nothing would use it; add {name} to train.report_to or remove trackers.{name}")


def check_trackers_installed(report_to: Sequence[str], *, package: str, file: str | None = None) -> None:
    """SpecError (at ``train.report_to``) naming each tracker of ``report_to`` whose module is not installed,
    and the extra of ``package`` that installs it."""
    missing = [t for t in report_to if find_spec(TRACKER_MODULES[t]) is None]
    if missing:
        extras = ",".join(missing)
        raise SpecError(f"report_to asks for {missing}, which is not installed here.", file=file,
                        path="train.report_to", hint=f"Install it: pip install '{package}[{extras}]' (or remove it "
                        "from train.report_to).")


def flat_params(spec: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``spec`` as flat ``dotted.key -> text`` pairs (MLflow params): strings as they are, other values as
    JSON (``4``, ``true``, ``null``, ``["q_proj", "v_proj"]``); an empty mapping is ``{}``. A text longer
    than :data:`MLFLOW_PARAM_CHARS` is cut there and ends in ``...``."""
    out: dict[str, str] = {}
    for key, value in spec.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat_params(value, dotted + "."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        if len(text) > MLFLOW_PARAM_CHARS:
            text = text[:MLFLOW_PARAM_CHARS - 3] + "..."
        out[dotted] = text
    return out


@dataclass(frozen=True)
class TrackerSettings:
    """What a trainer tells each tracker about one run (from :func:`tracker_settings`)."""

    #: The trackers to report to, in the spec's order.
    report_to: tuple[str, ...]
    experiment: str
    run_name: str
    #: The resolved spec (the run's ``spec.yaml``), secrets scrubbed: W&B's config.
    config: dict[str, Any]
    #: The same, flattened (:func:`flat_params`): MLflow's params.
    params: dict[str, str]
    #: ``wandb.init`` keyword arguments: project, group, name, dir, and entity when one is set.
    wandb: dict[str, Any] = field(default_factory=dict)
    #: experiment, run_name, and tracking_uri (None: MLflow's own default).
    mlflow: dict[str, Any] = field(default_factory=dict)
    #: Where TensorBoard event files go.
    tensorboard_dir: Path | None = None
    #: ``wandb.project`` etc. -> where its value came from: ``spec``, the variable's name, or ``experiment``.
    sources: dict[str, str] = field(default_factory=dict)

    def uses(self, tracker: str) -> bool:
        """Whether this run reports to ``tracker``."""
        return tracker in self.report_to

    def describe(self) -> list[str]:
        """One line per tracker: where this run reports, and where each value came from."""
        def shown(key: str, value: Any) -> str:
            return f"{key.split('.', 1)[1]} {value!r} ({self.sources.get(key, 'default')})"

        lines = []
        if self.uses("wandb"):
            parts = [shown(f"wandb.{k}", self.wandb[k]) for k in ("project", "group", "entity", "dir") if k in self.wandb]
            lines.append(f"W&B run {self.run_name!r}: " + ", ".join(parts))
        if self.uses("mlflow"):
            parts = [shown(f"mlflow.{k}", self.mlflow[k]) for k in ("experiment", "tracking_uri")
                     if self.mlflow.get(k) is not None]
            lines.append(f"MLflow run {self.run_name!r}: " + ", ".join(parts))
        if self.uses("tensorboard"):
            lines.append(f"TensorBoard event files in {self.tensorboard_dir}")
        return lines


def tracker_settings(spec: Mapping[str, Any], report_to: Sequence[str], options: TrackerOptions, *,
                     train_dir: Path, env: Mapping[str, str] | None = None) -> TrackerSettings:
    """What to tell each tracker about the run whose resolved spec is ``spec`` (see the module's text for
    the order: the spec's ``options``, then an environment variable set in ``env`` (default:
    ``os.environ``), then the experiment's name). ``train_dir`` is the run's ``train/`` folder."""
    env = os.environ if env is None else env
    experiment = str(spec["experiment"])
    run_name = str(spec["run"]["name"])
    sources: dict[str, str] = {}

    def pick(key: str, spec_value: str | None, default: str | None, origin: str = "experiment") -> str | None:
        variable = ENV[key]
        if spec_value is not None:
            sources[key] = "spec"
            return spec_value
        if env.get(variable):
            sources[key] = variable
            return env[variable]
        if default is not None:
            sources[key] = origin
        return default

    config = scrub(json.loads(json.dumps(dict(spec), default=str)), dict(env))
    wandb: dict[str, Any] = {
        "project": pick("wandb.project", options.wandb.project, experiment),
        "group": pick("wandb.group", options.wandb.group, experiment),
        "name": run_name,
        "dir": pick("wandb.dir", None, str(train_dir), "run folder"),
    }
    entity = pick("wandb.entity", options.wandb.entity, None)
    if entity is not None:
        wandb["entity"] = entity
    mlflow = {"experiment": pick("mlflow.experiment", options.mlflow.experiment, experiment), "run_name": run_name,
              "tracking_uri": pick("mlflow.tracking_uri", options.mlflow.tracking_uri, None)}
    return TrackerSettings(report_to=tuple(report_to), experiment=experiment, run_name=run_name, config=config,
                           params=flat_params(config), wandb=wandb, mlflow=mlflow,
                           tensorboard_dir=Path(train_dir) / "tensorboard", sources=sources)
