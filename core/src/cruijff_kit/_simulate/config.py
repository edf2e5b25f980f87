"""The ``simulate:`` section of a run spec, validated, and the participants built from it.

``SpecModel.simulate`` is a plain mapping at the top level; :func:`load_simulation` validates it
with :class:`SimulateConfig` (``extra="forbid"`` everywhere) and each participant section (``user``,
``assistant``, ``scoring.judge``, a metric's ``model``) with its simulator plugin's own ``Config``.
Errors name the spec file and the YAML path. Relative paths are relative to the spec's folder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cruijff_kit._api.kinds import Simulator
from cruijff_kit._api.retry import RetryPolicy
from cruijff_kit._base.errors import SpecError
from cruijff_kit.collab import _config as shared
from cruijff_kit.collab import _prompts as prompts
from cruijff_kit.collab._config import MetricSpec, ParticipantSection, TaskSource, build_participant
from cruijff_kit.collab._prompts import prompt_text

DEFAULT_PRESET, LLM_METRICS = shared.DEFAULT_PRESET, shared.LLM_METRICS
collabllm_metrics, needs_model = shared.collabllm_metrics, shared.needs_model


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


__all__ = ["DEFAULT_PRESET", "LLM_METRICS", "MetricSpec", "ParticipantSection", "ScoringConfig",
           "SimulateConfig", "Simulation", "TaskSource", "check_simulate", "collabllm_metrics",
           "load_simulation", "needs_model", "parse_config", "preset_line", "resolved_section",
           "simulate_json_schema"]


class ScoringConfig(_Model):
    """The multiturn-aware reward: per assistant turn, candidates scored by simulated futures."""

    preset: shared.Preset = Field(DEFAULT_PRESET, description="collabllm (the default): CollabLLM's official "
                           "computation (whole-conversation futures, cl100k tokens, official judge and extraction "
                           "prompts, no max_turns cut, 3 futures unless continuations is set, the user's next "
                           "message from the longest future); ck: the reward described in docs/simulation.md.")
    task_type: shared.TaskType | None = Field(None, description="preset collabllm: CollabLLM's task type, whose official "
                                       "metrics and weights are used when `metrics` is not given "
                                       "(question-answering, document-editing or code-generation; "
                                       "question-answering when neither is given).")
    candidates: int = Field(3, gt=0, description="Candidate responses sampled per assistant turn.")
    continuations: int = Field(2, gt=0, description="Futures simulated per candidate (N; 3 by default with "
                               "preset collabllm).")
    horizon: int = Field(2, ge=0, description="User turns simulated into each future.")
    candidate_temperature: float | None = Field(None, ge=0.0, description="Temperature for candidates "
                                                "(default: the assistant's).")
    judge: ParticipantSection | None = Field(None, description="Default model of grader, interactivity and bleu "
                                             "metrics (and of pass_rate under preset collabllm).")
    metrics: dict[str, MetricSpec] = Field(default_factory=dict, description="name: metric; the reward is "
                                           "sum(weight x value). Required with preset ck; with preset collabllm "
                                           "the default is the metrics of task_type.")

    @model_validator(mode="after")
    def _collabllm_futures(self) -> ScoringConfig:
        if self.preset == "collabllm" and "continuations" not in self.model_fields_set:
            self.continuations = 3
        return self

    @model_validator(mode="after")
    def _metric_set(self) -> ScoringConfig:
        task_type, metrics = shared.scoring_metrics(self.preset, self.task_type, self.metrics)
        self.task_type, self.metrics = task_type, metrics  # type: ignore[assignment]
        shared.check_metric_models(self.metrics, self.preset, has_judge=self.judge is not None,
                            judge_key="scoring.judge", metrics_key="scoring.metrics")
        return self


class SimulateConfig(_Model):
    """What ``ck simulate`` runs."""

    tasks: TaskSource
    user: ParticipantSection = Field(..., description="The simulated user (e.g. plugin: openai).")
    assistant: ParticipantSection = Field(..., description="The assistant: plugin openai, or local "
                                          "(the spec's model plus an adapter).")
    output: str | None = Field(None, description="JSONL of finished conversations (default: "
                               "<output_dir>/<experiment>/simulate/conversations.jsonl).")
    conversations_per_task: int = Field(1, gt=0)
    concurrency: int = Field(8, gt=0, description="Conversations in flight at once.")
    max_in_flight: int | None = Field(None, gt=0, description="Requests in flight at once "
                                      "(default: 4 x concurrency).")
    max_turns: int = Field(6, gt=0, description="Assistant turns per conversation at most.")
    termination_marker: str = Field(prompts.TERMINATION_MARKER, min_length=1)
    user_prompt: str | None = Field(None, description="User simulator prompt: text or a file path "
                                    "(default: the built-in CollabLLM-style prompt).")
    system_prompt: str | None = Field(None, description="The assistant's system prompt (default: "
                                      "the spec's prompt.system).")
    json_retries: int = Field(3, gt=0, description="Tries when the user's reply is not the JSON asked for.")
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    scoring: ScoringConfig | None = Field(None, description="Omit to keep one response per turn, unscored.")

    @field_validator("user_prompt")
    @classmethod
    def _prompt_not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("user_prompt is empty")
        return v

    def fingerprint(self) -> str:
        """Hash of what shapes a conversation (not concurrency, output or retry settings, nor how many
        tasks and conversations per task are simulated: ``--limit`` then a full run resume one file)."""
        skip = dict.fromkeys(("concurrency", "max_in_flight", "output", "retry", "conversations_per_task"), True)
        data = self.model_dump(mode="json", exclude={**skip, "tasks": {"limit"}})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def simulate_json_schema() -> dict[str, Any]:
    """JSON Schema of the ``simulate`` section: :class:`SimulateConfig` with every participant typed by
    the installed simulator plugins (the assistant's spec-model option may be left out)."""
    from cruijff_kit._api.sections import plugin_section_schema

    schema = SimulateConfig.model_json_schema()
    defs = schema["$defs"]
    defs["ParticipantSection"] = plugin_section_schema("simulator", defs)
    assistant = plugin_section_schema("simulator", defs, optional=lambda cls: tuple(filter(None, [cls.spec_model_option])))
    schema["properties"]["assistant"] = {**assistant, "description": schema["properties"]["assistant"]["description"]}
    return schema


# --------------------------------------------------------------------------- participants
@dataclass
class Simulation:
    """A validated ``simulate`` section with its participants built (nothing started yet)."""

    config: SimulateConfig
    spec_file: Path
    base_dir: Path
    output: Path
    seed: int
    user: Simulator
    assistant: Simulator
    metric_models: dict[str, Simulator] = field(default_factory=dict)
    system_prompt: str | None = None
    user_prompt: str = prompts.USER_PROMPT
    metric_prompts: dict[str, str] = field(default_factory=dict)

    def path(self, value: str) -> Path:
        """A spec path resolved against the spec's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    def participants(self) -> list[Simulator]:
        """Every distinct plugin object (for open/close)."""
        seen: dict[int, Simulator] = {}
        for p in [self.user, self.assistant, *self.metric_models.values()]:
            seen.setdefault(id(p), p)
        return list(seen.values())


def default_output(loaded: Any) -> Path:
    """``<output_dir>/<experiment>/simulate/conversations.jsonl``."""
    return loaded.experiment_dir / "simulate" / "conversations.jsonl"


def parse_config(data: dict[str, Any], *, file: str | None) -> SimulateConfig:
    """Validate a ``simulate`` mapping (errors name ``simulate.<path>``)."""
    from cruijff_kit._base.yamlfile import spec_error_from

    try:
        return SimulateConfig.model_validate(data)
    except ValidationError as exc:
        raise spec_error_from(exc, SimulateConfig, file=file, prefix="simulate") from None


def output_path(cfg: SimulateConfig, loaded: Any) -> Path:
    """Where finished conversations are appended."""
    if cfg.output:
        p = Path(cfg.output).expanduser()
        return p if p.is_absolute() else (loaded.spec_dir / p).resolve()
    return default_output(loaded)


def load_simulation(loaded: Any) -> Simulation:
    """Validate ``loaded.model.simulate`` (a :class:`cruijff_kit._engine.spec.LoadedSpec`) and build participants."""
    file = str(loaded.file)
    raw = loaded.model.simulate
    if raw is None:
        raise SpecError("has no `simulate:` section, so there is nothing to simulate.", file=file,
                        hint="Add one (see docs/simulation.md or examples/simulate-sft-dpo.yaml).")
    for key in [*loaded.model.sweep, *(k for v in loaded.model.variants for k in v)]:
        if str(key).split(".")[0].split("[")[0] == "simulate":
            raise SpecError(f"`{key}` cannot be swept: one spec runs one simulation.", file=file,
                            path="sweep", hint="Use `--set simulate.KEY=VALUE`, or one spec per simulation.")
    cfg = parse_config(raw, file=file)
    base_dir = loaded.spec_dir
    spec_model_path = loaded.model.model.path

    tasks_file = (base_dir / Path(cfg.tasks.path).expanduser()).resolve()
    if not tasks_file.is_file():
        raise SpecError(f"the tasks file {tasks_file} does not exist.", file=file, path="simulate.tasks.path",
                        hint="Give a JSON or JSONL file of task rows (relative to the spec's folder).")

    user = build_participant(cfg.user, file=file, path="simulate.user", base_dir=base_dir)
    assistant = build_participant(cfg.assistant, file=file, path="simulate.assistant", base_dir=base_dir,
                                  spec_model=spec_model_path)
    metric_models: dict[str, Simulator] = {}
    metric_prompts: dict[str, str] = {}
    if cfg.scoring is not None:
        judge = None
        if cfg.scoring.judge is not None:
            judge = build_participant(cfg.scoring.judge, file=file, path="simulate.scoring.judge",
                                      base_dir=base_dir)
        for name, m in cfg.scoring.metrics.items():
            where = f"simulate.scoring.metrics.{name}"
            if needs_model(m, cfg.scoring.preset):
                model = (build_participant(m.model, file=file, path=f"{where}.model", base_dir=base_dir)
                         if m.model is not None else judge)
                assert model is not None
                metric_models[name] = model
            if m.type in shared.JUDGE_METRICS:
                default = prompts.GRADER_PROMPT if m.type == "grader" else prompts.INTERACTIVITY_PROMPT
                metric_prompts[name] = (prompt_text(m.prompt, base_dir, file=file, path=f"{where}.prompt")
                                        if m.prompt else default)
            if m.type == "python":
                from cruijff_kit.collab import load_function

                load_function(str(m.function), base_dir, file=file, path=f"{where}.function")
            if m.type in shared.REFERENCE_METRICS and cfg.tasks.answer_field is None:
                raise SpecError(f"metric `{name}` ({m.type}) compares with a reference answer, but "
                                "simulate.tasks.answer_field is null.", file=file, path=where,
                                hint="Name the row field with the reference answer in tasks.answer_field.")
        if cfg.scoring.preset == "collabllm" and any(m.type == "tokens" for m in cfg.scoring.metrics.values()):
            from cruijff_kit._base.errors import CkError
            from cruijff_kit.collab import cl100k_file

            try:
                cl100k_file()
            except CkError as exc:
                raise SpecError(str(exc), file=file, path="simulate.scoring.preset") from None
    user_prompt = (prompt_text(cfg.user_prompt, base_dir, file=file, path="simulate.user_prompt")
                   if cfg.user_prompt else prompts.USER_PROMPT)
    if "{chat_history}" not in user_prompt or "{task}" not in user_prompt:
        raise SpecError("the user prompt must contain the placeholders {task} and {chat_history}.",
                        file=file, path="simulate.user_prompt",
                        hint="They are replaced by the task and the conversation so far.")
    return Simulation(
        config=cfg, spec_file=loaded.file, base_dir=base_dir, output=output_path(cfg, loaded),
        seed=int(loaded.model.seed), user=user, assistant=assistant, metric_models=metric_models,
        system_prompt=cfg.system_prompt if cfg.system_prompt is not None else loaded.model.prompt.system,
        user_prompt=user_prompt, metric_prompts=metric_prompts,
    )


def preset_line(scoring: ScoringConfig | None) -> str | None:
    """One sentence naming the scoring preset a simulation uses (None without scoring)."""
    if scoring is None:
        return None
    given = "" if "preset" in scoring.model_fields_set else ", the default"
    metrics = ", ".join(f"{n} x {m.weight:g}" for n, m in scoring.metrics.items())
    futures = f"{scoring.continuations} futures per candidate"
    if scoring.preset == "collabllm":
        task = f", task type {scoring.task_type}" if scoring.task_type else ""
        return (f"simulate.scoring uses preset `collabllm`{given}: CollabLLM's official reward{task} ({metrics}), "
                f"{futures}; `preset: ck` gives ck's own (docs/simulation.md).")
    return (f"simulate.scoring uses preset `ck`{given}: ck's own reward, not CollabLLM's official one ({metrics}), "
            f"{futures} (docs/simulation.md lists the differences).")


def check_simulate(loaded: Any) -> list[str]:
    """Plan-time check used by ``ck validate``/``plan``/``run``: validate the section when present; the
    notes to show (which scoring preset is used)."""
    from cruijff_kit._base.errors import CkError

    if loaded.model.simulate is None:
        return []
    sim = load_simulation(loaded)
    roles = [("simulate.user", sim.user), ("simulate.assistant", sim.assistant)]
    roles += [(f"simulate.scoring.metrics.{name}", m) for name, m in sim.metric_models.items()]
    for where, participant in roles:
        try:
            participant.check(None)  # type: ignore[arg-type]
        except SpecError:
            raise
        except CkError as exc:
            raise SpecError(str(exc), file=str(loaded.file), path=where) from None
    line = preset_line(sim.config.scoring)
    return [line] if line else []


def resolved_section(raw: dict[str, Any], loaded: Any) -> dict[str, Any]:
    """The ``simulate`` section as written into a run's resolved spec: as given, ``output`` absolute.

    Not validated here (``check_simulate`` does that once per spec); a section that is not a mapping
    is passed through for the check to report.
    """
    if not isinstance(raw, dict):
        return raw
    out = dict(raw)
    given = raw.get("output")
    if isinstance(given, str) and given:
        p = Path(given).expanduser()
        out["output"] = str(p if p.is_absolute() else (loaded.spec_dir / p).resolve())
    else:
        out["output"] = str(default_output(loaded))
    return out
