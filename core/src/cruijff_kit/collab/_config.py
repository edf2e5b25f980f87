"""The option models a collaboration spec shares: participant sections, metric specs, task sources, and
the scoring settings (``preset``, ``task_type``, ``metrics``) turned into the metric set.

``ck simulate``'s ``scoring`` section and the multi-turn eval task take the same :class:`MetricSpec`
and the same three settings, resolved and checked by :func:`scoring_metrics` and
:func:`check_metric_models` (same defaults, same messages in both places).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cruijff_kit._api.kinds import Simulator
from cruijff_kit._base.errors import SpecError
from cruijff_kit.collab._collabllm import WEIGHTS


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ParticipantSection(BaseModel):
    """A simulator section: ``plugin`` picks the backend, every other key is that backend's option."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    plugin: str = Field(..., description="Simulator plugin (`openai`, or `local` for ck simulate's assistant).")


class TaskSource(_Model):
    """Where the tasks come from: one conversation (or several) per row."""

    path: str = Field(..., description="JSON list, JSON {split: list} (the instruct format) or JSONL file.")
    split: str | None = Field(None, description="Which list when the JSON file holds splits (default: train).")
    id_field: str | None = Field("id", description="Row field with a stable task id; rows without it get one.")
    prompt_field: str = Field("input", description="Row field with the task the user wants solved.")
    answer_field: str | None = Field("output", description="Row field with the reference answer, if any.")
    limit: int | None = Field(None, gt=0, description="Use only the first N tasks.")


MetricType = Literal["exact_match", "contains", "numeric", "pass_rate", "python", "grader", "interactivity",
                     "tokens", "bleu"]
LLM_METRICS = ("grader", "interactivity", "bleu")
"""Metric types that always ask a model: a judge (grader, interactivity) or the extraction model (bleu)."""
JUDGE_METRICS = ("grader", "interactivity")
"""Metric types judged by a model with a prompt."""
REFERENCE_METRICS = ("exact_match", "contains", "numeric", "grader", "bleu")
"""Metric types that compare with the task's reference answer."""
Preset = Literal["ck", "collabllm"]
Preset.__doc__ = "A scoring preset: collabllm (CollabLLM's official computation) or ck (ck's own)."
TaskType = Literal["question-answering", "document-editing", "code-generation"]
TaskType.__doc__ = "One of CollabLLM's task types, each with its official metrics and weights (WEIGHTS)."
DEFAULT_PRESET: Preset = "collabllm"
"""The scoring preset when none is named."""
DEFAULT_TASK_TYPE: TaskType = "question-answering"
"""CollabLLM's task type whose metrics preset collabllm uses when neither task_type nor metrics is given."""


class MetricSpec(_Model):
    """One term of the reward: ``weight`` x the metric's value."""

    type: MetricType = Field(..., description="exact_match, contains, numeric, pass_rate, python, grader, "
                             "interactivity, tokens or bleu.")
    weight: float = Field(1.0, description="Weight in the reward (negative for penalties).")
    function: str | None = Field(None, description="type python: `file.py:function` or `module:function`.")
    model: ParticipantSection | None = Field(None, description="grader/interactivity/bleu (and pass_rate under "
                                             "preset collabllm): the judge or extraction model (default: the "
                                             "section's judge).")
    prompt: str | None = Field(None, description="grader/interactivity under preset ck: prompt text or a file "
                               "path.")
    per: float = Field(1000.0, gt=0, description="type tokens: the value is assistant tokens / per.")
    timeout: float = Field(30.0, gt=0, description="type pass_rate: seconds per test.")

    @model_validator(mode="after")
    def _fields_for_type(self) -> MetricSpec:
        if self.type == "python" and not self.function:
            raise ValueError("a metric of type python needs `function: file.py:name` or `module:name`")
        if self.prompt is not None and self.type not in JUDGE_METRICS:
            raise ValueError(f"`prompt` only applies to grader and interactivity metrics (this is {self.type})")
        if self.function and self.type != "python":
            raise ValueError(f"`function` only applies to type python (this metric is {self.type})")
        if self.model is not None and self.type not in (*LLM_METRICS, "pass_rate"):
            raise ValueError(f"`model` only applies to grader, interactivity and bleu metrics, and to pass_rate "
                             f"under preset collabllm (this is {self.type})")
        return self


def needs_model(metric: MetricSpec, preset: str) -> bool:
    """Whether a metric calls a model: a judge (grader, interactivity), or the extraction model that reads
    the final document (bleu) or, under preset collabllm, the final code (pass_rate) out of a conversation."""
    return metric.type in LLM_METRICS or (metric.type == "pass_rate" and preset == "collabllm")


def collabllm_metrics(task_type: str) -> dict[str, MetricSpec]:
    """CollabLLM's metrics and weights for one of its task types (:data:`WEIGHTS`), named by their official
    signatures."""
    types = {"accuracy": "grader", "interactivity": "interactivity", "token_amount": "tokens",
             "document->bleu": "bleu", "runnable code->pass_rate": "pass_rate"}
    return {name: MetricSpec(type=types[name], weight=weight)  # type: ignore[arg-type]
            for name, weight in WEIGHTS[task_type].items()}


def scoring_metrics(preset: str, task_type: str | None,
                    metrics: dict[str, MetricSpec] | None) -> tuple[str | None, dict[str, MetricSpec]]:
    """The metric set of the scoring settings, and the task type it stands for (None with own metrics).

    ``metrics`` when given; else, under preset collabllm, CollabLLM's official metrics and weights of
    ``task_type`` (question-answering by default). Raises ValueError for settings that do not fit
    together: task_type without preset collabllm, task_type with metrics, preset ck without metrics, a
    prompt under preset collabllm (which uses CollabLLM's own prompts).
    """
    if task_type is not None and preset != "collabllm":
        raise ValueError(f"task_type ({task_type}) picks CollabLLM's official metrics and weights, so it "
                         "needs preset collabllm; remove task_type, or remove `preset: ck`")
    if task_type is not None and metrics:
        raise ValueError(f"give either task_type ({task_type}: CollabLLM's metrics and weights) or "
                         "metrics, not both; to change a weight, write the metrics out and drop task_type")
    if metrics:
        chosen = dict(metrics)
    elif preset == "collabllm":
        task_type = task_type or DEFAULT_TASK_TYPE
        chosen = collabllm_metrics(task_type)
    else:
        raise ValueError("preset ck needs `metrics` (name: {type, weight}); preset collabllm uses CollabLLM's "
                         "metrics of its `task_type` (question-answering by default) when none are given")
    if preset == "collabllm":
        for name, m in chosen.items():
            if m.prompt is not None and m.type in JUDGE_METRICS:
                raise ValueError(f"metric `{name}` sets a prompt, but preset collabllm uses CollabLLM's own "
                                 f"{m.type} prompt; remove `prompt`, or set `preset: ck` to use yours")
    return task_type, chosen


def check_metric_models(metrics: dict[str, MetricSpec], preset: str, *, has_judge: bool, judge_key: str,
                        metrics_key: str) -> None:
    """Every metric that calls a model has one (its ``model`` or the section's judge, ``judge_key``), and no
    other metric sets one; ValueError otherwise (``metrics_key`` names where the metrics are written)."""
    for name, m in metrics.items():
        if m.model is not None and not needs_model(m, preset):
            raise ValueError(f"metric `{name}` ({m.type}) sets a model, which only preset collabllm uses (to "
                             "extract the code from the conversation); remove `model`, or use preset collabllm")
        if needs_model(m, preset) and m.model is None and not has_judge:
            role = "a judge" if m.type in JUDGE_METRICS else "a model (the extraction model)"
            raise ValueError(f"metric `{name}` ({m.type}) needs {role}: set {judge_key} or "
                             f"{metrics_key}.{name}.model")


def preset_metrics(preset: str, task_type: str | None = None) -> dict[str, MetricSpec]:
    """The default metrics of ``preset`` (and ``task_type``): what :func:`scoring_metrics` gives when no
    metrics are written; only preset collabllm has defaults."""
    return scoring_metrics(preset, task_type, None)[1]


PRESETS: dict[str, dict[str, dict[str, object]]] = {
    "collabllm": {name: m.model_dump(include={"type", "weight"})
                  for name, m in collabllm_metrics(DEFAULT_TASK_TYPE).items()}}
"""Default metrics of each preset, as metric mappings (derived from :data:`WEIGHTS`): ``collabllm`` is
CollabLLM's question-answering reward (accuracy by a judge x 1.0, interactivity by a judge x 0.5,
thousands of cl100k assistant tokens x -0.5)."""


def simulator_class(name: str, *, file: str | None, path: str) -> type[Simulator]:
    """The simulator class registered as ``plugin: name``."""
    from cruijff_kit._api.registry import plugin_class

    try:
        return plugin_class("simulator", name)  # type: ignore[return-value]
    except Exception as exc:
        raise SpecError(str(exc), file=file, path=f"{path}.plugin") from None


def build_participant(section: ParticipantSection, *, file: str | None, path: str, base_dir: Path,
                      spec_model: str | None = None) -> Simulator:
    """Validate a participant section with its plugin's Config and build the plugin object.

    ``spec_model`` (the spec's ``model.path``, given for the assistant only) is the default of the
    option the plugin names in :attr:`Simulator.spec_model_option`, when the section does not set it.
    """
    from cruijff_kit._base.yamlfile import spec_error_from

    cls = simulator_class(section.plugin, file=file, path=path)
    options = {k: v for k, v in (section.model_extra or {}).items()}
    option = cls.spec_model_option
    if spec_model is not None and option and option in cls.Config.model_fields:
        options.setdefault(option, spec_model)
    try:
        config = cls.Config.model_validate(options)
    except ValidationError as exc:
        raise spec_error_from(exc, cls.Config, file=file, prefix=path,
                              note=f"(options of the `{section.plugin}` simulator plugin)") from None
    return cls(config, base_dir=base_dir)
