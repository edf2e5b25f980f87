"""Options of the ``inspect`` evaluator (light: pydantic only, no inspect-ai import)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from cruijff_kit import EvalConfig, PluginConfig
from cruijff_kit.files import is_secret_name
from cruijff_kit_inspect.collab_config import COLLAB_TASK, CollabOptions

BUILTIN_TASKS = ("exact-match", "includes", "choice", "model-graded")
"""Tasks that read the run's dataset split (the final assistant turn is the target)."""

DEFAULT_SCORERS = {"exact-match": "match", "includes": "includes", "choice": "choice",
                   "model-graded": "model-graded"}
"""The scorer a built-in task uses when the spec names none."""


# --------------------------------------------------------------------------- scorers
class MatchScorer(PluginConfig):
    """The answer matches the target: exactly, or at the beginning or end, or anywhere."""

    name: Literal["match"] = "match"
    location: Literal["exact", "begin", "end", "any"] = Field("exact", description="Where the target must appear.")
    ignore_case: bool = Field(False, description="Case-insensitive comparison (off: exact means exact).")
    numeric: bool = Field(False, description="Compare as numbers (e.g. 1.0 matches 1).")


class IncludesScorer(PluginConfig):
    """The target occurs anywhere in the answer."""

    name: Literal["includes"] = "includes"
    ignore_case: bool = True


class ChoiceScorer(PluginConfig):
    """Multiple choice: the chosen letter is the target (task `choice` only)."""

    name: Literal["choice"] = "choice"


class ModelGradedScorer(PluginConfig):
    """A grader model judges whether the answer states the target."""

    name: Literal["model-graded"] = "model-graded"
    grader: str | None = Field(None, description="Inspect model string of the grader; default: the eval's `grader`.")
    partial_credit: bool = False
    instructions: str | None = Field(None, description="Replaces the grader's default instructions.")


class RiskScorer(PluginConfig):
    """Binary question scored from the log-probabilities of the first answer token."""

    name: Literal["risk"] = "risk"
    options: list[str] = Field(default_factory=lambda: ["0", "1"], min_length=2, max_length=2,
                               description="[negative, positive] answer tokens; risk = P(positive).")
    ignore_case: bool = Field(False, description="Also sum the mass of differently cased variants.")
    n_bins: int = Field(10, ge=1, le=100, description="Bins of the calibration errors.")


class NumericRiskScorer(PluginConfig):
    """Binary question where the model states a probability (``0.73`` or ``73%``) of the positive class."""

    name: Literal["numeric-risk"] = "numeric-risk"
    options: list[str] = Field(default_factory=lambda: ["0", "1"], min_length=2, max_length=2,
                               description="[negative, positive] target labels.")
    n_bins: int = Field(10, ge=1, le=100)


class ContinuousScorer(PluginConfig):
    """Numeric answers: the first number in the answer against the target's."""

    name: Literal["continuous"] = "continuous"


class ClassificationScorer(PluginConfig):
    """Label answers: accuracy, balanced accuracy, F1 and the confusion matrix."""

    name: Literal["classification"] = "classification"
    labels: list[str] | None = Field(None, description="Valid labels, in confusion-matrix order.")
    positive: str | None = Field(None, description="Report F1 of this label (default: macro F1).")
    ignore_case: bool = True

    @model_validator(mode="after")
    def _positive_is_label(self) -> ClassificationScorer:
        if self.positive is not None and self.labels is not None and self.positive not in self.labels:
            raise ValueError(f"positive label {self.positive!r} is not one of labels {self.labels}")
        return self


ScorerSpec = Annotated[
    MatchScorer | IncludesScorer | ChoiceScorer | ModelGradedScorer | RiskScorer | NumericRiskScorer
    | ContinuousScorer | ClassificationScorer,
    Field(discriminator="name"),
]
SCORER_NAMES = ("match", "includes", "choice", "model-graded", "risk", "numeric-risk", "continuous",
                "classification")
LOGPROB_SCORERS = ("risk",)
"""Scorers that read log-probabilities; they turn them on for their task."""
ScorerName = Literal["match", "includes", "choice", "model-graded", "risk", "numeric-risk", "continuous",
                     "classification"]
#: What a spec may write for ``scorers`` (a name stands for ``{name: NAME}``), as the JSON Schema shows it.
ScorersInput = ScorerName | list[ScorerName | ScorerSpec] | None


# --------------------------------------------------------------------------- generation
class Generation(PluginConfig):
    """How answers are generated. Greedy unless ``sample: true``."""

    max_tokens: int = Field(32, gt=0, description="Longest answer, in tokens.")
    sample: bool = Field(False, description="Sample instead of greedy decoding (then `temperature` is required).")
    temperature: float | None = Field(None, gt=0, description="Sampling temperature (with sample: true).")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling (with sample: true).")
    seed: int | None = Field(None, description="Generation seed; defaults to the run's seed.")
    logprobs: bool | None = Field(None, description="Record log-probabilities; default: on when a scorer needs them.")
    top_logprobs: int = Field(20, ge=1, le=20, description="Alternatives recorded per token with logprobs.")
    assistant_prefix: str | None = Field(
        None, description="Text the answer starts with (prefilled); the model continues it.")
    max_connections: int | None = Field(
        None, gt=0, description="Concurrent requests (remote models) or batch size override (local).")

    @model_validator(mode="after")
    def _sampling(self) -> Generation:
        if self.sample and self.temperature is None:
            raise ValueError("sample: true needs a temperature (e.g. temperature: 0.7)")
        if not self.sample and (self.temperature is not None or self.top_p is not None):
            raise ValueError("temperature and top_p apply only when sampling; set sample: true, "
                             "or remove them for greedy decoding")
        return self


# --------------------------------------------------------------------------- the evaluator's options
class InspectConfig(EvalConfig, CollabOptions):
    """Options of the ``inspect`` evaluator (``task: collab``: see :mod:`cruijff_kit_inspect.collab_config`)."""

    scorers: list[ScorerSpec] | None = Field(
        None, description="Scorers, all reported; a name or {name: ..., options}. Default: the task's own.")
    generation: Generation = Field(default_factory=Generation)
    limit: int | None = Field(None, gt=0, description="Evaluate only the first N samples.")
    epochs: int = Field(1, gt=0, description="Repeat each sample N times (useful with sampling).")
    backend: Literal["hf", "vllm"] = Field("hf", description="hf: transformers + peft in process; vllm: "
                                           "inspect's vLLM provider (GPU machines with vllm installed).")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, mps; with backend: vllm auto, cuda, "
                        "cuda:1 or cuda:0,1 (passed to vLLM as the GPU list 1 or 0,1).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = bfloat16 on a GPU that supports it, else float32.")
    batch_size: int = Field(8, gt=0, description="Local models: answers generated per batch.")
    quantization: Literal["auto", "nf4", "none"] = Field(
        "auto", description="How the base model loads: auto = 4-bit NF4 when the adapter was trained with "
        "qlora (and, for the base target, when the run trains with qlora), else full precision; nf4 = always "
        "4-bit NF4 (bitsandbytes); none = full precision in `dtype`.")
    merge_adapter: Literal["no", "memory", "disk"] = Field(
        "no", description="Merge the adapter into the base weights: in memory, or as a copy on disk "
        "under the eval folder, saved in the training dtype (e.g. for vllm without LoRA: adapters vLLM "
        "cannot serve, with LoRA on lm_head or embed_tokens, or modules_to_save).")
    model: str | None = Field(None, description="An inspect model string (openai/..., hf/..., vllm/...) "
                              "to evaluate instead of the run's model; base target only.")
    model_args: dict[str, Any] = Field(default_factory=dict, description="Model args of `model` (e.g. "
                                       "responses_api: true to use OpenAI's responses API at a custom base_url).")
    base_url: str | None = Field(None, description="Base URL of `model`'s API, e.g. an OpenAI-compatible server "
                                 "http://127.0.0.1:8000/v1; default: the provider's variable (OPENAI_BASE_URL).")
    grader: str | None = Field(None, description="Inspect model string of the grader (task model-graded).")
    task_args: dict[str, Any] = Field(default_factory=dict, description="Arguments of a user task file.")

    @field_validator("scorers", mode="before", json_schema_input_type=ScorersInput)
    @classmethod
    def _names_to_mappings(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list):
            out = []
            for item in v:
                if isinstance(item, str):
                    if item not in SCORER_NAMES:
                        from cruijff_kit import did_you_mean

                        raise ValueError(f"unknown scorer {item!r}. {did_you_mean(item, SCORER_NAMES)}")
                    item = {"name": item}
                out.append(item)
            return out
        return v

    @field_validator("task")
    @classmethod
    def _task_shape(cls, v: str) -> str:
        if v in BUILTIN_TASKS or v == COLLAB_TASK:
            return v
        if "@" in v:
            file, _, name = v.rpartition("@")
            if file.endswith(".py") and name.isidentifier():
                return v
        from cruijff_kit import did_you_mean

        raise ValueError(f"unknown task {v!r}: use a built-in task ({', '.join(BUILTIN_TASKS)}), {COLLAB_TASK} "
                         f"(multi-turn) or path/to/file.py@task_name. {did_you_mean(v, (*BUILTIN_TASKS, COLLAB_TASK))}")

    @field_validator("model", "grader")
    @classmethod
    def _model_string(cls, v: str | None) -> str | None:
        if v is not None and "/" not in v:
            raise ValueError(f"{v!r} is not an inspect model string; use provider/model, e.g. "
                             "openai/gpt-4o-mini or hf/path/to/model")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> InspectConfig:
        names = [s.name for s in self.effective_scorers()]
        if self.generation.logprobs is False:
            needs = [n for n in names if n in LOGPROB_SCORERS]
            if needs:
                raise ValueError(f"scorer {needs[0]!r} reads log-probabilities; remove "
                                 "generation.logprobs: false (it is turned on automatically)")
        if "choice" in names and self.task != "choice":
            raise ValueError("scorer 'choice' needs task: choice (it reads the sample's choices)")
        if self.task == "model-graded" or "model-graded" in names:
            graders = [s.grader for s in self.effective_scorers() if isinstance(s, ModelGradedScorer)]
            if not self.grader and not all(graders):
                raise ValueError("model-graded scoring needs a grader model: set `grader:` to an inspect "
                                 "model string, e.g. grader: openai/gpt-4o-mini")
        secret = [k for k in self.model_args if is_secret_name(k.upper())]
        if secret:
            raise ValueError(f"model_args.{secret[0]} would be written into every eval log; set it in the "
                             "environment instead (e.g. OPENAI_API_KEY), which the provider reads")
        if "base_url" in self.model_args:
            raise ValueError("model_args.base_url: set the eval's `base_url:` instead (it is passed to inspect "
                             "as the model's base URL)")
        if self.base_url is not None and not self.model:
            raise ValueError("base_url applies to `model` (an inspect model string such as openai/my-model); "
                             "set `model:` too, or remove base_url")
        if self.quantization != "auto" and self.model:
            raise ValueError(f"quantization: {self.quantization} applies to the run's own model; `model: "
                             f"{self.model}` is loaded by its provider. Remove quantization, or remove `model`")
        if self.quantization == "nf4" and self.backend == "vllm":
            raise ValueError("quantization: nf4 needs backend: hf (the vllm backend here loads the base in "
                             "full precision only); set backend: hf, or quantization: none")
        if self.quantization == "nf4" and self.merge_adapter != "no":
            raise ValueError(f"merge_adapter: {self.merge_adapter} would fold the adapter into 4-bit NF4 weights, "
                             "rounding most of it away; set merge_adapter: no (the adapter is applied on top of "
                             "the 4-bit base), or quantization: none to merge into a full-precision base")
        if self.model_args and not self.model:
            raise ValueError("model_args apply to `model` (an inspect model string); for the run's own "
                             "model use device, dtype and batch_size")
        if self.task == COLLAB_TASK and (self.scorers or self.task_args):
            raise ValueError("task: collab scores each conversation with `metrics` (and their reward); remove "
                             "scorers and task_args")
        if self.task_args and self.is_builtin:
            raise ValueError(f"task_args apply to user task files only; the built-in task {self.task!r} "
                             "takes none (use scorers, generation and prompt instead)")
        return self

    @property
    def is_builtin(self) -> bool:
        """True for a built-in task, False for ``file.py@task``."""
        return self.task in BUILTIN_TASKS

    def effective_scorers(self) -> list[Any]:
        """The configured scorers, or the built-in task's default (user tasks: [] = their own)."""
        if self.scorers:
            return list(self.scorers)
        if self.is_builtin:
            default = DEFAULT_SCORERS[self.task]
            return [{"match": MatchScorer, "includes": IncludesScorer, "choice": ChoiceScorer,
                     "model-graded": ModelGradedScorer}[default]()]
        return []

    @property
    def needs_logprobs(self) -> bool:
        """Whether log-probabilities are recorded (asked for, or needed by a scorer)."""
        if self.generation.logprobs is not None:
            return self.generation.logprobs
        return any(s.name in LOGPROB_SCORERS for s in self.effective_scorers())
