"""Options of the ``trl`` trainer: the shared :class:`TrainConfig` plus what only TRL offers."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from cruijff_kit import PluginConfig, TrainConfig
from cruijff_kit.training import Tracker, TrackerOptions, check_tracker_options

#: DPO losses of TRL's DPOTrainer (``DPOConfig.loss_type``).
DpoLoss = Literal["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]


class DpoOptions(PluginConfig):
    """``train.dpo``: direct preference optimization settings."""

    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the reference (base) model.")
    loss_type: DpoLoss = Field("sigmoid", description="DPO loss: sigmoid (the DPO paper), ipo, hinge, robust, ...")


class TrlConfig(TrainConfig):
    """``train:`` options of ``plugin: trl``."""

    #: ``trainer_args``: fields of TRL's SFTConfig / DPOConfig (:mod:`cruijff_kit_trl.trainer_args`).
    accepts_trainer_args: ClassVar[bool] = True

    objective: Literal["sft", "dpo"] = Field(
        "sft", description="Training objective: sft (supervised fine-tuning), or dpo (preference pairs: "
        "prompt/chosen/rejected rows, e.g. the multiturn dataset with pairs: true).")
    dpo: DpoOptions = Field(default_factory=DpoOptions, description="objective dpo: beta and loss type.")
    assistant_only_loss: bool = Field(
        True, description="Loss only on assistant tokens of chat data; false trains on the whole conversation.")
    packing: bool = Field(False, description="Pack several examples into each max_seq_length row "
                                             "(best-fit, padding-free).")
    padding_free: bool = Field(False, description="Flatten each batch into one sequence without padding "
                                                  "(requires packing: true, which already implies it).")
    logging_steps: int = Field(10, gt=0, description="Log train loss every N optimizer steps.")
    save_state_steps: int | None = Field(
        None, gt=0, description="Also save resumable state every N steps (default: at each epoch end).")
    report_to: list[Tracker] = Field(default_factory=list,
                                     description="Trackers: wandb, mlflow, tensorboard (keys from the environment).")
    trackers: TrackerOptions = Field(default_factory=TrackerOptions,
                                     description="W&B project/group/entity, MLflow experiment/tracking_uri (default: "
                                     "the environment, then the experiment name).")
    push_to_hub: str | None = Field(None, description="Hub repo id to upload the last adapter to (token from "
                                                      "HF_TOKEN). Off by default.")
    hub_private: bool = Field(True, description="Create the hub repo as private.")

    @model_validator(mode="after")
    def _padding_free_needs_packing(self) -> TrlConfig:
        if self.padding_free and not self.packing:
            raise ValueError("padding_free without packing cannot enforce max_seq_length in TRL; set packing: true "
                             "(packed batches are padding-free already)")
        return self

    @model_validator(mode="after")
    def _tracker_options_used(self) -> TrlConfig:
        check_tracker_options(self.report_to, self.trackers)
        return self

    @model_validator(mode="after")
    def _sft_only_options(self) -> TrlConfig:
        if self.objective == "dpo" and self.packing:
            raise ValueError("packing applies to objective sft only; DPO trains on whole preference pairs")
        return self
