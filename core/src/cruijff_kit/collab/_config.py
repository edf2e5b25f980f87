"""The option models a collaboration spec shares: participant sections, metric specs, task sources.

``ck simulate``'s ``scoring.metrics`` and the multi-turn eval task's ``metrics`` take the same
:class:`MetricSpec`; :data:`PRESETS` names the default metrics of each scoring preset.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cruijff_kit.collab._collabllm import WEIGHTS


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ParticipantSection(BaseModel):
    """A simulator section: ``plugin`` picks the backend, every other key is that backend's option."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    plugin: str = Field(..., description="Simulator plugin (e.g. `openai`).")


MetricType = Literal["exact_match", "contains", "numeric", "pass_rate", "python", "grader", "interactivity", "tokens"]
LLM_METRICS = ("grader", "interactivity")
"""Metric types that ask a judge model."""


class MetricSpec(_Model):
    """One term of the reward: ``weight`` x the metric's value."""

    type: MetricType = Field(..., description="exact_match, contains, numeric, pass_rate, python, grader, "
                             "interactivity or tokens.")
    weight: float = Field(1.0, description="Weight in the reward (negative for penalties).")
    function: str | None = Field(None, description="type python: `file.py:function` or `module:function`.")
    model: ParticipantSection | None = Field(None, description="grader/interactivity: the judge model "
                                             "(default: the section's judge).")
    prompt: str | None = Field(None, description="grader/interactivity: prompt text or a file path.")
    per: float = Field(1000.0, gt=0, description="type tokens: the value is assistant tokens / per.")
    timeout: float = Field(30.0, gt=0, description="type pass_rate: seconds per test.")

    @model_validator(mode="after")
    def _fields_for_type(self) -> MetricSpec:
        if self.type == "python" and not self.function:
            raise ValueError("a metric of type python needs `function: file.py:name` or `module:name`")
        if self.function and self.type != "python":
            raise ValueError(f"`function` only applies to type python (this metric is {self.type})")
        if self.model is not None and self.type not in LLM_METRICS:
            raise ValueError(f"`model` only applies to grader and interactivity metrics (this is {self.type})")
        return self


def _collabllm_metrics() -> dict[str, dict[str, object]]:
    w = WEIGHTS["question-answering"]
    return {"accuracy": {"type": "grader", "weight": w["accuracy"]},
            "interactivity": {"type": "interactivity", "weight": w["interactivity"]},
            "token_amount": {"type": "tokens", "weight": w["token_amount"], "per": 1000.0}}


PRESETS: dict[str, dict[str, dict[str, object]]] = {"collabllm": _collabllm_metrics()}
"""Default metrics of each preset: ``collabllm`` is CollabLLM's question-answering reward (accuracy by a
judge x 1.0, interactivity by a judge x 0.5, thousands of cl100k assistant tokens x -0.5)."""


def preset_metrics(preset: str) -> dict[str, MetricSpec]:
    """The default metrics of ``preset`` (a copy, validated)."""
    return {name: MetricSpec.model_validate(m) for name, m in PRESETS[preset].items()}


class TaskSource(_Model):
    """Where the tasks come from: one conversation per row."""

    path: str = Field(..., description="JSON list, JSON {split: list} (the instruct format) or JSONL file.")
    split: str | None = Field(None, description="Which list when the JSON file holds splits (default: train).")
    id_field: str | None = Field("id", description="Row field with a stable task id; rows without it get one.")
    prompt_field: str = Field("input", description="Row field with the task the user wants solved.")
    answer_field: str | None = Field("output", description="Row field with the reference answer, if any.")
    limit: int | None = Field(None, gt=0, description="Use only the first N tasks.")
