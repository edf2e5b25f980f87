"""What a registered plugin class provides, one base class per kind.

A plugin class has a ``name`` (the value users write as ``plugin:`` in the spec), a pydantic
``Config`` (its options; extra keys are errors) and the few methods of its kind. Subclass the base
class of your kind; the base ``Config`` models hold the options the core itself reads, so every
backend of a kind accepts them the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from cruijff_kit._api.units import parse_memory, parse_slurm_time

if TYPE_CHECKING:  # pragma: no cover
    from cruijff_kit._api.context import StageContext
    from cruijff_kit._api.records import PlannedRun, StageDef, StageJob


def nonfinite_at(value: Any, path: str = "") -> tuple[str, float] | None:
    """``(dotted path, value)`` of the first nan or inf inside nested dicts and lists, else None."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:  # iterative: a deeply nested value cannot exhaust the recursion limit
        where, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return where, item
        if isinstance(item, dict):
            children = [(f"{where}.{k}" if where else str(k), v) for k, v in item.items()]
        elif isinstance(item, list | tuple):
            children = [(f"{where}[{i}]", v) for i, v in enumerate(item)]
        else:
            continue
        stack.extend(reversed(children))
    return None


class PluginConfig(BaseModel):
    """Base of every plugin's options: unknown keys are errors, never silently ignored; every number
    must be finite (``.inf``, ``.nan`` and ``1e999`` are refused, in free-form mappings too)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _ck_finite_inside(cls, v: Any) -> Any:
        # float fields refuse inf/nan themselves (allow_inf_nan); this covers values typed Any
        if isinstance(v, dict | list | tuple):
            found = nonfinite_at(v)
            if found is not None:
                raise ValueError(f"every number in it must be a finite number, but `{found[0]}` is {found[1]}")
        return v


# --------------------------------------------------------------------------- shared option models
class LoraOptions(PluginConfig):
    """LoRA adapter shape, shared by every trainer."""

    rank: int = Field(8, gt=0, description="LoRA rank r (must be > 0).")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha; defaults to 2 x rank.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    targets: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="Module names (HF naming) that get LoRA adapters, or `all-linear` (PEFT's: every linear "
                    "layer of the decoder blocks, not the output layer).",
    )
    modules_to_save: list[str] | None = Field(
        None, min_length=1, description="Modules trained in full and saved with the adapter (PEFT's "
                                        "modules_to_save, e.g. [lm_head]).")
    use_rslora: bool = Field(False, description="Rank-stabilized LoRA: scale by alpha / sqrt(rank) instead of "
                                                "alpha / rank.")
    use_dora: bool = Field(False, description="DoRA: a learned magnitude per output row on top of LoRA.")

    @model_validator(mode="after")
    def _default_alpha(self) -> LoraOptions:
        if self.alpha is None:
            self.alpha = float(2 * self.rank)
        return self

    @property
    def all_linear(self) -> bool:
        """True when ``targets`` is ``all-linear``."""
        return self.targets == "all-linear"


#: Epochs a run trains without ``--allow-many-epochs`` (``TrainConfig.epochs`` refuses more than 100,000).
EPOCHS_WITHOUT_CONFIRMATION = 1000


class TrainConfig(PluginConfig):
    """Options every trainer accepts. Trainer plugins subclass this and add their own."""

    method: Literal["lora", "qlora"] = Field("lora", description="lora, or qlora (4-bit NF4 base).")
    epochs: int = Field(1, gt=0, le=100_000, description="Passes over the training split (more than 1000 "
                        "needs `--allow-many-epochs`).")
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int = Field(4, gt=0, description="Per-device batch size.")
    gradient_accumulation: int = Field(1, gt=0)
    max_seq_length: int = Field(512, gt=0)
    lora: LoraOptions = Field(default_factory=LoraOptions)
    save_epochs: Literal["all", "last"] | list[int] = Field(
        "all", description="Which epochs keep an adapter: all, last, or a list of 0-based epochs."
    )
    validation: bool = Field(True, description="Compute validation loss each epoch.")
    eval_steps: int | None = Field(None, gt=0, description="Also compute validation loss every N steps.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto = bf16 on a GPU that supports it, fp32 on CPU."
    )
    gradient_checkpointing: bool = False
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    keep_state: bool = Field(False, description="Keep optimizer state for resume after the stage ends.")
    chat_template: str | None = Field(None, description="Jinja chat template overriding the tokenizer's.")
    allow_truncation: bool = Field(
        False, description="Train even when max_seq_length cuts target (assistant) tokens off some rows; "
        "by default `ck plan`, `ck run` and the train stage refuse such data (the rows and tokens are counted).")
    trainer_args: dict[str, Any] = Field(
        default_factory=dict, description="Settings of the trainer's own config class that no option above "
        "sets (TRL's SFTConfig/DPOConfig fields; torchtune recipe keys, dotted), checked at `ck validate`.")

    #: Whether the plugin reads ``trainer_args``; a Config that leaves this False refuses them (so that they
    #: are never silently dropped).
    accepts_trainer_args: ClassVar[bool] = False

    @field_validator("trainer_args")
    @classmethod
    def _trainer_args_read(cls, v: dict[str, Any]) -> dict[str, Any]:
        # The core reads the shared options of any train section with TrainConfig itself; a plugin's Config
        # subclass says whether its trainer reads trainer_args (a plain TrainConfig: Trainer.__init__ does).
        if v and cls is not TrainConfig and not cls.accepts_trainer_args:
            raise ValueError("this trainer does not read trainer_args, so they would be ignored; remove them, "
                             "or use a trainer that reads them (trl, torchtune)")
        return v

    @field_validator("save_epochs")
    @classmethod
    def _non_negative(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("save_epochs must name at least one epoch; use `last` to keep only the final one")
        if isinstance(v, list) and any(int(e) < 0 for e in v):
            raise ValueError("epochs in save_epochs are 0-based and must be >= 0")
        return v

    @model_validator(mode="after")
    def _epochs_in_range(self) -> TrainConfig:
        if isinstance(self.save_epochs, list):
            bad = [e for e in self.save_epochs if e >= self.epochs]
            if bad:
                raise ValueError(
                    f"save_epochs {bad} is past the last epoch ({self.epochs - 1}; epochs are 0-based)"
                )
        return self

    def saved_epochs(self) -> list[int]:
        """The 0-based epochs whose adapters this configuration keeps."""
        if self.save_epochs == "all":
            return list(range(self.epochs))
        if self.save_epochs == "last":
            return [self.epochs - 1]
        return sorted(set(int(e) for e in self.save_epochs))


class Prompt(PluginConfig):
    """How instruct rows become chat messages; set per experiment, per run, and per eval task."""

    system: str | None = Field(None, description="System prompt placed before every conversation.")
    template: str = Field("{input}", description="User turn; `{input}` is replaced by the row's input.")


class EvalConfig(PluginConfig):
    """Options every evaluator accepts: what to evaluate. Evaluator plugins add how."""

    task: str = Field(..., description="Task name (built-in) or path/to/file.py@task_name.")
    name: str | None = Field(None, description="Name of this evaluation in folders and tables; defaults to task.")
    split: str = Field("test", description="Dataset split the task reads.")
    checkpoints: Literal["all", "last", "none"] | list[int] = Field(
        "last", description="Which saved epochs to evaluate: all, last, none, or a list."
    )
    include_base: bool = Field(True, description="Also evaluate the base model.")
    prompt: Prompt | None = Field(None, description="Overrides the run's prompt fields for this task.")

    @property
    def label(self) -> str:
        """Folder-safe name of this evaluation."""
        raw = self.name or self.task.rsplit("@", 1)[-1]
        return "".join(c if c.isalnum() or c in "-_" else "-" for c in raw).strip("-") or "task"


class Resources(PluginConfig):
    """What one stage asks of the machine."""

    gpus: int = Field(0, ge=0)
    cpus: int = Field(1, gt=0)
    memory: str = Field("8GB", description="Memory per node as sbatch --mem reads it: 32GB, 1.5G, 800M; units K, M, "
                        "G, T are binary (1G = 1024M); a bare number is megabytes.")
    time: str = Field("01:00:00", description="Wall-time limit of one stage in one of sbatch's --time formats: MM, "
                      "MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS (\"30:00\" is 30 minutes; quote it in YAML).")
    nodes: int = Field(1, gt=0)
    processes: int | None = Field(
        None, gt=0, description="Training processes per node (data parallel); default one per GPU. "
        "Set it on CPU to run the distributed path with gloo.")

    def for_stage(self, kind: str) -> Resources:
        """What a stage of ``kind`` asks: training takes these resources as written; an evaluation
        generates on one device, so it asks one GPU where these ask any (none where they ask none),
        one node and no data-parallel processes."""
        if kind != "eval":
            return self
        return self.model_copy(update={"gpus": min(self.gpus, 1), "nodes": 1, "processes": None})

    @field_validator("memory", "time", mode="before")
    @classmethod
    def _slurm_units(cls, v: Any, info: ValidationInfo) -> Any:
        """Held to sbatch's meanings (:mod:`cruijff_kit._api.units`); a whole number is kept as its text."""
        (parse_memory if info.field_name == "memory" else parse_slurm_time)(v)
        return str(v) if isinstance(v, int) else v


class SchedulerConfig(PluginConfig):
    """Options every scheduler accepts."""

    resources: Resources = Field(default_factory=Resources)
    eval_resources: Resources | None = Field(
        None, description="Resources of eval stages; default: those of `resources` with at most one GPU, "
        "on one node.")

    def stage_resources(self, kind: str) -> Resources:
        """What a stage of ``kind`` (train or eval) asks: ``eval_resources`` for an evaluation when set,
        else :meth:`Resources.for_stage` of ``resources``."""
        if kind == "eval" and self.eval_resources is not None:
            return self.eval_resources
        return self.resources.for_stage(kind)

    def resources_option(self, kind: str) -> str:
        """The spec key whose resources a stage of ``kind`` asks (for messages): ``scheduler.eval_resources``
        for an evaluation when that section is set, else ``scheduler.resources``."""
        if kind == "eval" and self.eval_resources is not None:
            return "scheduler.eval_resources"
        return "scheduler.resources"

    @classmethod
    def common_of(cls, section: dict[str, Any]) -> SchedulerConfig:
        """The options every scheduler shares, from a ``scheduler:`` section of a resolved spec (its other
        keys, the plugin's own, are not read)."""
        return cls.model_validate({k: section[k] for k in cls.model_fields if section.get(k) is not None})

    @classmethod
    def stage_resources_of(cls, section: dict[str, Any], kind: str) -> Resources:
        """:meth:`stage_resources` from a ``scheduler:`` section of a resolved spec (:meth:`common_of`)."""
        return cls.common_of(section).stage_resources(kind)


class DatasetConfig(PluginConfig):
    """Options every dataset accepts (plugins add where the data is)."""


# --------------------------------------------------------------------------- plugin base classes
class Plugin:
    """Base of every registered class."""

    name: ClassVar[str]
    kind: ClassVar[str]
    Config: ClassVar[type[PluginConfig]] = PluginConfig
    description: ClassVar[str] = ""

    def __init__(self, config: PluginConfig, base_dir: Path | None = None) -> None:
        self.config = config
        #: Folder that relative paths in the spec are relative to (the spec file's folder).
        self.base_dir = Path(base_dir) if base_dir else Path.cwd()

    def path(self, value: str | Path) -> Path:
        """Resolve a path from the spec (relative to the spec's folder), with ``~`` expanded."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    def uses_gpus(self) -> bool:
        """Whether this plugin's stage work runs on the GPUs its resources ask for (default True for
        trainers and evaluators). When it does, a stage that asks for GPUs and sees none fails at its
        start instead of running on the CPU; an evaluator of a remote model returns False."""
        return self.kind in ("trainer", "evaluator")

    def check(self, run: PlannedRun) -> list[str] | None:
        """Plan-time checks beyond the schema (raise :class:`cruijff_kit.CkError`). Must stay cheap.

        May return notes: things that are not errors but that the user should read before running
        (``ck validate``/``ck plan``/``ck run`` print each once as a ``Note:`` on stderr).
        """
        return None


@dataclass
class Estimate:
    """What a trainer expects one run to cost; shown by ``ck plan``."""

    parameters: int | None = None
    trainable_parameters: int | None = None
    memory_bytes: int | None = None
    tokens_per_epoch: int | None = None
    notes: list[str] = field(default_factory=list)


class Trainer(Plugin):
    """Fine-tunes the run's model on the canonical dataset and writes PEFT adapters per epoch."""

    kind = "trainer"
    Config = TrainConfig

    def __init__(self, config: PluginConfig, base_dir: Path | None = None) -> None:
        super().__init__(config, base_dir)
        if getattr(config, "trainer_args", None) and not getattr(type(config), "accepts_trainer_args", False):
            from cruijff_kit._base.errors import SpecError

            raise SpecError(f"the `{self.name}` trainer does not read trainer_args, so they would be ignored.",
                            path="train.trainer_args", hint="Remove them, or use a trainer that reads them "
                                                            "(trl, torchtune).")

    def estimate(self, run: PlannedRun) -> Estimate:
        """Cheap resource estimate (never imports torch)."""
        return Estimate()

    def train(self, ctx: StageContext) -> None:  # pragma: no cover - abstract
        """Run the train stage: write ``ctx.adapter_dir(epoch)`` per saved epoch, log via ``ctx.log_metrics``."""
        raise NotImplementedError

    def target_masker(self, model_path: str, revision: str | None = None
                      ) -> Callable[[list[dict[str, Any]]], Sequence[bool]] | None:
        """How this trainer tokenizes one conversation: a function giving one flag per token, True where the
        token is a training target, before any cut at ``max_seq_length`` (loads the tokenizer of
        ``model_path`` at ``revision``). :func:`cruijff_kit.training.plan_truncation` (``ck plan``) and
        :func:`cruijff_kit.training.require_truncation_allowed` (stage start) count with it.

        None (the default): the trainer does not count truncation, and ``ck plan`` says "not checked".
        """
        return None


class Evaluator(Plugin):
    """Evaluates one target (base model or a checkpoint) on one task."""

    kind = "evaluator"
    Config = EvalConfig

    def evaluate(self, ctx: StageContext) -> dict[str, Any]:  # pragma: no cover - abstract
        """Evaluate ``ctx.target``; write logs under ``ctx.eval_dir``; return metrics for results.json."""
        raise NotImplementedError

    def identity(self, run: PlannedRun, stage: StageDef) -> dict[str, Any] | None:
        """Everything that determines the result of ``stage`` (one of ``run``'s eval stages), or None
        when it must never be shared with another run.

        Stages of one experiment with equal identities run once, in a shared folder, for every run that
        needs them (see ``docs/artifacts.md``). Only targets that need nothing from the run's own
        training are shared (``base`` and ``adapter``). The default covers the model (path, revision,
        adapter), the dataset, the prompt, this evaluation's whole section (task, split, scorers,
        generation settings, dtype, quantization), the seed, the target, and what the run's training
        changes about loading the base model (4-bit for a ``qlora`` run, with its precision, and the
        chat template). An evaluator that reads more of the run adds it here.
        """
        if stage.target not in ("base", "adapter") or stage.eval_index is None:
            return None
        spec = run.spec
        train = spec.get("train") or {}
        quantized = train.get("method") == "qlora"
        return {
            "model": {k: v for k, v in spec["model"].items() if k != "local_path"},
            "dataset": spec["dataset"],
            "prompt": spec.get("prompt"),
            # which targets an eval selects changes no target's result
            "eval": {k: v for k, v in spec["eval"][stage.eval_index].items() if k not in ("checkpoints", "include_base")},
            "seed": spec.get("seed"),
            "target": stage.target,
            "load": {"qlora": quantized, "precision": train.get("precision") if quantized else None,
                     "chat_template": train.get("chat_template")},
        }


class Scheduler(Plugin):
    """Moves stage work somewhere to run. Every job runs ``ck stage RUN_DIR STAGE``."""

    kind = "scheduler"
    Config = SchedulerConfig
    Profile: ClassVar[type[PluginConfig] | None] = None
    #: True when ``submit`` returns only after the work finished (the local scheduler).
    blocking: ClassVar[bool] = False
    #: Whether ``ck run`` submits failed stages again without ``--retry-failed``.
    retry_failed_default: ClassVar[bool] = True

    def submit(self, jobs: list[StageJob], experiment_dir: Any, profile: PluginConfig | None) -> None:
        """Start the jobs honouring ``job.depends_on``; record job ids with :mod:`cruijff_kit.status`."""
        raise NotImplementedError

    def refresh(self, jobs: list[StageJob]) -> dict[str, str]:
        """Map job id -> stage state for jobs whose state only the scheduler knows (default: none).

        ``ck status`` also passes stages whose status entry has a ``live`` line (a billed resource the
        scheduler still holds, e.g. a cloud machine), whatever their state; a scheduler may update
        status entries here (the rows are re-read afterwards).
        """
        return {}

    def wants_refresh(self, entry: dict[str, Any]) -> bool:
        """Whether ``ck status`` passes a stage with this status entry (one with a ``job_id``) to
        :meth:`refresh`. Default: while it is submitted or running, or has a ``live`` line."""
        return entry.get("state") in ("submitted", "running") or bool(entry.get("live"))

    def plan_columns(self, run: PlannedRun) -> dict[str, str]:
        """Extra cells of this run's row in ``plan.md`` (e.g. machine and estimated cost). Cheap."""
        return {}

    def cancel(self, jobs: list[StageJob]) -> None:
        """Cancel the given jobs."""
        raise NotImplementedError


class Dataset(Plugin):
    """Loads the user's data into the canonical form: a ``datasets.DatasetDict`` of ``messages`` rows."""

    kind = "dataset"
    Config = DatasetConfig

    def load(self, prompt: Any) -> Any:  # pragma: no cover - abstract
        """Return a DatasetDict; instruct rows rendered with ``prompt`` (a PromptSpec)."""
        raise NotImplementedError

    def describe(self, prompt: Any = None) -> dict[str, Any]:
        """Cheap facts for ``ck plan``: ``rows`` and rendered ``chars`` per split (with ``prompt``); may be empty."""
        return {}

    def allows_truncation(self) -> bool:
        """True when the dataset's own options accept rows that ``train.max_seq_length`` cuts (default False)."""
        return False

    def splits(self) -> list[str] | None:
        """Names of the splits, cheaply, or None when unknown before loading."""
        info = self.describe()
        return list(info.get("rows", {})) or None


class SimulatorConfig(PluginConfig):
    """Options every simulator accepts: generation defaults (a call's own arguments override them)."""

    temperature: float | None = Field(None, ge=0.0, description="Sampling temperature; None = backend default.")
    max_tokens: int | None = Field(None, gt=0, description="Longest reply in tokens; None = backend default.")


class Simulator(Plugin):
    """A chat participant for ``ck simulate`` (a simulated user, an assistant, or a judge).

    ``ck simulate`` calls :meth:`open` once, then :meth:`complete` from many coroutines at once, and
    :meth:`aclose` at the end. Retries are the core's: :meth:`complete` raises, and the core retries
    with backoff when :meth:`is_retryable` says so (rate limits, 5xx, timeouts). At plan time
    :meth:`Plugin.check` is called with ``run=None`` (a simulation is not a run).
    """

    kind = "simulator"
    Config = SimulatorConfig
    #: Name of an option of :attr:`Config` that defaults to the spec's ``model.path`` when the
    #: simulator is the assistant and its section does not set it (the ``local`` simulator: ``"model"``).
    #: None (the default): the spec's model is never filled in.
    spec_model_option: ClassVar[str | None] = None

    async def complete(self, messages: list[dict[str, str]], **generation: Any) -> str:  # pragma: no cover
        """Return the next message's text given the conversation so far.

        ``generation`` may hold ``temperature``, ``max_tokens`` and ``seed``; they override the config.
        """
        raise NotImplementedError

    def open(self) -> None:
        """Prepare before the first call (read API keys...); raise :class:`cruijff_kit.CkError` if unusable."""

    async def aclose(self) -> None:
        """Release clients, threads or models after the last call."""

    def is_retryable(self, exc: BaseException) -> bool:
        """True when ``exc`` is transient (rate limit, server error, timeout) and the call may be retried.

        Raise a :class:`cruijff_kit.CkError` instead for errors that stop the whole simulation (a key
        the endpoint refuses, an unknown model).
        """
        return isinstance(exc, TimeoutError | ConnectionError)

    def retry_after(self, exc: BaseException) -> float | None:
        """Seconds the backend asked to wait before retrying (e.g. a Retry-After header), if any."""
        return None

    def stats(self) -> dict[str, Any]:
        """Counters for the simulation's summary (calls, tokens); may be empty."""
        return {}

    def label(self) -> str:
        """Short description of this participant for logs and output files (never a secret)."""
        return self.name


KINDS: dict[str, type[Plugin]] = {
    "trainer": Trainer,
    "evaluator": Evaluator,
    "scheduler": Scheduler,
    "dataset": Dataset,
    "simulator": Simulator,
}
