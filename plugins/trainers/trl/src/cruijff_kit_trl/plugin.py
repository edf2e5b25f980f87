"""The ``trl`` trainer class: options, plan-time checks, estimate, and the train stage."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from cruijff_kit import Estimate, Trainer
from cruijff_kit_trl.config import TrlConfig

if TYPE_CHECKING:  # pragma: no cover
    from cruijff_kit import PlannedRun, StageContext


class TrlTrainer(Trainer):
    """LoRA and QLoRA supervised fine-tuning with TRL's ``SFTTrainer`` and a PEFT ``LoraConfig``."""

    name: ClassVar[str] = "trl"
    description: ClassVar[str] = "LoRA/QLoRA supervised fine-tuning with TRL (SFTTrainer + PEFT)."
    Config: ClassVar[type[TrlConfig]] = TrlConfig
    config: TrlConfig

    def check(self, run: PlannedRun) -> None:
        """Plan-time errors: unknown LoRA targets, qlora without a 4-bit backend, missing trackers/splits."""
        from cruijff_kit_trl.checks import check_run

        check_run(run, self.config)

    def estimate(self, run: PlannedRun) -> Estimate:
        """Parameters, trainable LoRA parameters, memory and tokens per epoch, from config.json alone."""
        from cruijff_kit.training import estimate_run

        return estimate_run(run, self.config)

    def chat_template(self) -> str | None:
        """The spec's chat template: inline Jinja, or the text of a ``.jinja``/``.j2`` file it names."""
        from cruijff_kit.training import chat_template_text

        return chat_template_text(self.config.chat_template, self.path)

    def target_masker(self, model_path: str, revision: str | None = None) -> Callable[[list[dict[str, Any]]],
                                                                                      list[bool]] | None:
        """Target flags per token, tokenized as ``SFTTrainer`` does (None for dpo: pairs are not counted)."""
        from cruijff_kit_trl.masks import sft_masker

        return sft_masker(model_path, self.config, self.chat_template(), revision)

    def train(self, ctx: StageContext) -> None:
        """Train; with more than one process, relaunch this stage under ``accelerate launch`` first.

        Before training, rows whose target tokens ``max_seq_length`` cuts are refused unless allowed.
        """
        from cruijff_kit import training

        resources = ctx.resources
        if training.needs_launch(resources):
            training.relaunch(ctx.run_dir, ctx.stage.name, resources, launcher="accelerate")
            return
        training.require_truncation_allowed(ctx, self, ctx.dataset())
        if self.config.objective == "dpo":
            from cruijff_kit_trl.dpo import run_dpo

            run_dpo(ctx, self.config, self.chat_template())
            return
        if self.config.objective == "sft":
            from cruijff_kit_trl.sft import run_sft

            run_sft(ctx, self.config, self.chat_template())
        else:  # pragma: no cover - the Literal admits only implemented objectives
            raise NotImplementedError(self.config.objective)
