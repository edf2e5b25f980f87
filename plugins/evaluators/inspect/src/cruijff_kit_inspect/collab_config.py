"""Options of the multi-turn ``collab`` task (light: pydantic and :mod:`cruijff_kit.collab` only).

``task: collab`` evaluates each target in simulated collaboration: per held-out task a simulated user
(any simulator plugin) converses with the model until it ends the chat or ``max_turns`` is reached;
each conversation is scored with ``metrics`` and their combined reward. ``preset``, ``task_type`` and
``metrics`` mean what they mean in ``simulate.scoring`` (one function,
:func:`cruijff_kit.collab.scoring_metrics`, turns them into the metric set). These options apply to
``task: collab`` only.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cruijff_kit import RetryPolicy
from cruijff_kit.collab import (
    DEFAULT_PRESET,
    TERMINATION_MARKER,
    MetricSpec,
    ParticipantSection,
    Preset,
    TaskSource,
    TaskType,
    check_metric_models,
    scoring_metrics,
)

COLLAB_TASK = "collab"
"""The name of the multi-turn collaboration task."""

COLLAB_FIELDS = ("user", "judge", "max_turns", "tasks", "metrics", "preset", "task_type", "user_prompt", "termination_marker",
                 "json_retries", "retry", "cache_user")
"""Options that only ``task: collab`` reads."""


class CollabOptions(BaseModel):
    """The ``collab`` task's options (a base of the evaluator's options; defaults mean "not set")."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    user: ParticipantSection | None = Field(None, description="task collab: the simulated user, a simulator "
                                            "section (e.g. {plugin: openai, model: ..., base_url: ...}).")
    judge: ParticipantSection | None = Field(None, description="task collab: the default model of grader, "
                                             "interactivity and bleu metrics (and of pass_rate under preset "
                                             "collabllm), a simulator section; as simulate.scoring.judge.")
    max_turns: int = Field(6, gt=0, description="task collab: assistant turns per conversation at most.")
    tasks: TaskSource | None = Field(None, description="task collab: held-out tasks (JSON or JSONL, as in "
                                     "simulate.tasks); default: the run's `split`, the last user turn as the "
                                     "task and the final assistant turn as the reference.")
    metrics: dict[str, MetricSpec] | None = Field(None, description="task collab: name: metric, as "
                                                  "simulate.scoring.metrics; the reward is sum(weight x value). "
                                                  "Required with preset ck; with preset collabllm the default is "
                                                  "the metrics of task_type.")
    preset: Preset = Field(DEFAULT_PRESET, description="task collab: as simulate.scoring.preset: collabllm (the "
                           "default) computes tokens, judges and extractions as CollabLLM does; ck: ck's own.")
    task_type: TaskType | None = Field(None, description="task collab, preset collabllm: CollabLLM's task type, "
                                       "whose official metrics and weights are used when `metrics` is not given "
                                       "(question-answering, document-editing or code-generation; "
                                       "question-answering when neither is given), as simulate.scoring.task_type.")
    user_prompt: str | None = Field(None, description="task collab: the user simulator's prompt (text; default: "
                                    "the built-in one, as in ck simulate).")
    termination_marker: str = Field(TERMINATION_MARKER, min_length=1, description="task collab: text by "
                                    "which the user ends the chat.")
    json_retries: int = Field(3, gt=0, description="task collab: tries when the user's or a judge's reply is "
                              "not the JSON asked for.")
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="task collab: backoff of the user's and "
                               "judges' calls.")
    cache_user: bool = Field(True, description="task collab: reuse the user's replies across targets (same "
                             "task, same conversation so far, same seed); keep on for a deterministic user.")

    @model_validator(mode="after")
    def _collab_consistent(self) -> CollabOptions:
        task = getattr(self, "task", COLLAB_TASK)
        if task != COLLAB_TASK:
            defaults = CollabOptions.model_fields
            given = sorted(f for f in COLLAB_FIELDS if getattr(self, f) != defaults[f].get_default(call_default_factory=True))
            if given:
                raise ValueError(f"{', '.join(given)} apply to task: collab only (this task is {task!r}); "
                                 "remove them, or set task: collab")
            return self
        if getattr(self, "epochs", 1) > 1:
            raise ValueError("task: collab holds one conversation per task; remove epochs (or set epochs: 1)")
        if self.user is None:
            raise ValueError("task: collab needs `user:`, the simulated user (a simulator section, e.g. "
                             "{plugin: openai, model: NAME, base_url: http://127.0.0.1:8000/v1})")
        check_metric_models(self.effective_metrics(), self.preset, has_judge=self.judge is not None,
                            judge_key="`judge:` (a simulator section)", metrics_key="metrics")
        return self

    def effective_metrics(self) -> dict[str, MetricSpec]:
        """The metric set of ``preset``, ``task_type`` and ``metrics`` (as ``simulate.scoring`` resolves them:
        :func:`cruijff_kit.collab.scoring_metrics`)."""
        return scoring_metrics(self.preset, self.task_type, self.metrics)[1]

    def collab_fingerprint(self) -> dict[str, Any]:
        """What shapes a conversation and its scores (for the journal of finished conversations)."""
        return self.model_dump(mode="json", include=set(COLLAB_FIELDS) - {"retry"})
