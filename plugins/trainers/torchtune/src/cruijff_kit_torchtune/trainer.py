"""The ``torchtune`` trainer plugin class: options, plan-time checks, estimate, and the train stage.

Importing this module is cheap (no torch, no torchtune): the work happens in :mod:`.run` and
:mod:`.recipe`, imported inside :meth:`TorchtuneTrainer.train`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, model_validator

from cruijff_kit import Estimate, SpecError, TrainConfig, Trainer
from cruijff_kit.training import Tracker, TrackerOptions, check_tracker_options

if TYPE_CHECKING:  # pragma: no cover
    from cruijff_kit import PlannedRun, StageContext


class TorchtuneConfig(TrainConfig):
    """Options of the torchtune trainer: the shared train options plus torchtune's own."""

    #: ``trainer_args``: dotted keys of the recipe config (:mod:`cruijff_kit_torchtune.trainer_args`).
    accepts_trainer_args: ClassVar[bool] = True

    compile: bool = Field(False, description="torch.compile the model and loss (slow first step; for GPUs).")
    apply_lora_to_mlp: bool | None = Field(
        None, description="LoRA on gate_proj/up_proj/down_proj; default: whether lora.targets lists them.")
    apply_lora_to_output: bool | None = Field(
        None, description="LoRA on the output projection; default: whether lora.targets lists lm_head.")
    clip_grad_norm: float | None = Field(None, gt=0, description="Clip the gradient norm to this value.")
    logging_steps: int = Field(1, gt=0, description="Log train loss every N optimizer steps (that step's loss).")
    report_to: list[Tracker] = Field(default_factory=list, description="Trackers: wandb, mlflow, tensorboard "
                                     "(torchtune's metric loggers; keys from the environment).")
    trackers: TrackerOptions = Field(default_factory=TrackerOptions,
                                     description="W&B project/group/entity, MLflow experiment/tracking_uri (default: "
                                     "the environment, then the experiment name).")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="The same as trainer_args (checked the same way; a key may not be in both): torchtune "
                    "recipe config keys (dotted), e.g. {'optimizer._component_': 'torch.optim.SGD'}.")

    @model_validator(mode="after")
    def _tracker_options_used(self) -> TorchtuneConfig:
        check_tracker_options(self.report_to, self.trackers)
        return self


class TorchtuneTrainer(Trainer):
    """LoRA / QLoRA fine-tuning with torchtune's LoRA recipes (single device, or distributed)."""

    name = "torchtune"
    description = "LoRA/QLoRA with torchtune recipes (Llama 2/3.x, Qwen2); PEFT adapters per epoch."
    Config = TorchtuneConfig

    def check(self, run: PlannedRun) -> None:
        """Plan-time errors: unsupported model family, LoRA targets, precision, QLoRA block sizes."""
        from cruijff_kit.training import (
            check_trackers_installed,
            check_validation_split,
            find_config,
            model_ref,
        )
        from cruijff_kit_torchtune.families import check_qlora, detect_family, map_targets

        cfg: TorchtuneConfig = self.config  # type: ignore[assignment]
        file = run.spec.get("run", {}).get("spec_file")
        try:
            if cfg.precision == "fp16":
                raise SpecError("torchtune's recipes train in fp32 or bf16 only, not fp16.", path="train.precision",
                                hint="Use precision: auto (bf16 on GPUs that support it, else fp32) or bf16.")
            map_targets(cfg.lora.targets, cfg.apply_lora_to_mlp, cfg.apply_lora_to_output)
            from cruijff_kit_torchtune.families import check_lora_options
            from cruijff_kit_torchtune.trainer_args import check_args

            check_lora_options(cfg.lora)
            check_args(cfg.trainer_args, cfg.overrides, file)
            check_validation_split(run, cfg)
            if (run.spec.get("scheduler") or {}).get("plugin") == "local":  # else the machine that trains may have them
                check_trackers_installed(cfg.report_to, package="cruijff-kit-torchtune", file=file)
            config_path = find_config(model_ref(run))
            if config_path is None:
                return  # not on this machine (yet): checked again when the stage starts
            model_dir = config_path.parent
            family = detect_family(model_dir)
            if cfg.method == "qlora":
                check_qlora(family, model_dir)
        except SpecError as exc:
            raise SpecError(exc.problem, file=file, path=exc.path, hint=exc.hint) from None

    def estimate(self, run: PlannedRun) -> Estimate:
        """The shared plan-time estimate (config.json and the dataset's description)."""
        from cruijff_kit.training import estimate_run

        return estimate_run(run, self.config)  # type: ignore[arg-type]

    def target_masker(self, model_path: str, revision: str | None = None) -> Callable[[list[dict[str, Any]]],
                                                                                      list[bool]]:
        """Target flags per token, from the tokenizer the recipe trains with (:class:`HFChatTokenizer`)."""
        from cruijff_kit.training import chat_template_text
        from cruijff_kit_torchtune.run import local_model_dir
        from cruijff_kit_torchtune.tokenizer import HFChatTokenizer

        cfg: TorchtuneConfig = self.config  # type: ignore[assignment]
        template = chat_template_text(cfg.chat_template, self.path)
        return HFChatTokenizer(str(local_model_dir(model_path)), chat_template=template).target_mask

    def train(self, ctx: StageContext) -> None:
        """Run the train stage; relaunch under torchrun first when the run asks for several processes.

        Before training, rows whose target tokens ``max_seq_length`` cuts are refused unless allowed.
        """
        from cruijff_kit import training

        resources = ctx.resources
        if training.needs_launch(resources):
            training.relaunch(Path(ctx.run_dir), ctx.stage.name, resources, launcher="torchrun")
            return
        from cruijff_kit_torchtune.run import run_training
        from cruijff_kit_torchtune.tokenizer import shared_tokenization

        with shared_tokenization():  # the count's tokenization is the dataset's: each row tokenized once
            training.require_truncation_allowed(ctx, self, ctx.dataset())
            run_training(self, ctx)
