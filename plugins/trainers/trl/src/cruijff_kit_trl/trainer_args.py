"""``train.trainer_args`` of ``plugin: trl``: fields of TRL's ``SFTConfig`` / ``DPOConfig``.

One table says what the plugin itself sets: :data:`NAMED` (fields set from a named spec option, by
objective), :data:`REFUSED` and :data:`REFUSED_BY_OBJECTIVE` (fields never accepted, with the reason)
and :data:`DEFAULTS` (fields the plugin sets to a fixed value that ``trainer_args`` may change). Every keyword :func:`cruijff_kit_trl.sft.sft_args`
and :func:`cruijff_kit_trl.dpo.dpo_args` pass is in one of them (a test holds this).

The check imports TRL, so it runs only when ``trainer_args`` is not empty.
"""

from __future__ import annotations

import dataclasses
import tempfile
import typing
import warnings
from typing import Any

from cruijff_kit import SpecError, StageError

#: Fields set from a named spec option, for both objectives: field -> the option to set instead.
NAMED_COMMON: dict[str, str] = {
    "num_train_epochs": "train.epochs",
    "max_steps": "train.max_steps",
    "per_device_train_batch_size": "train.batch_size",
    "per_device_eval_batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation",
    "learning_rate": "train.learning_rate",
    "lr_scheduler_type": "train.lr_scheduler",
    "warmup_steps": "train.warmup_ratio",
    "weight_decay": "train.weight_decay",
    "max_length": "train.max_seq_length",
    "gradient_checkpointing": "train.gradient_checkpointing",
    "activation_checkpointing": "train.gradient_checkpointing",
    "bf16": "train.precision",
    "fp16": "train.precision",
    "use_cpu": "scheduler.resources.gpus",
    "seed": "the spec's `seed`",
    "data_seed": "the spec's `seed`",
    "eval_steps": "train.eval_steps",
    "save_steps": "train.save_state_steps",
    "logging_steps": "train.logging_steps",
    "report_to": "train.report_to",
    "push_to_hub": "train.push_to_hub",
    "hub_model_id": "train.push_to_hub",
    "hub_private_repo": "train.hub_private",
}
#: Fields set from a named option of one objective only.
NAMED: dict[str, dict[str, str]] = {
    "sft": {**NAMED_COMMON, "packing": "train.packing", "padding_free": "train.padding_free",
            "assistant_only_loss": "train.assistant_only_loss", "completion_only_loss": "train.assistant_only_loss",
            "chat_template_path": "train.chat_template"},
    "dpo": {**NAMED_COMMON, "beta": "train.dpo.beta", "loss_type": "train.dpo.loss_type"},
}
_LAYOUT = "the run layout depends on it (adapters per epoch, metrics rows, resumable state in train/state/)"
#: Fields never accepted, with the reason.
REFUSED: dict[str, str] = {
    "output_dir": "the trainer's state always goes to the run's train/state/ folder",
    "save_strategy": f"{_LAYOUT}; use train.save_state_steps for more frequent state",
    "eval_strategy": f"{_LAYOUT}; use train.validation and train.eval_steps",
    "logging_strategy": f"{_LAYOUT}; use train.logging_steps",
    "logging_first_step": f"{_LAYOUT} (a row at step 1)",
    "logging_nan_inf_filter": "a nan or inf loss must reach the metrics rows and stop training",
    "save_total_limit": f"{_LAYOUT} (one checkpoint kept to resume from)",
    "save_only_model": f"{_LAYOUT} (a checkpoint must hold the optimizer to resume from)",
    "save_on_each_node": _LAYOUT,
    "resume_from_checkpoint": "`ck run` resumes a stopped train stage by itself",
    "restore_callback_states_from_checkpoint": "`ck run` resumes a stopped train stage by itself",
    "load_best_model_at_end": "each epoch's adapter is that epoch's weights; compare epochs with evaluations",
    "local_rank": "the distributed launcher sets it",
    "deepspeed": "adapters are saved from one process's whole model, which sharded training does not hold",
    "fsdp": "adapters are saved from one process's whole model, which sharded training does not hold",
    "fsdp_config": "adapters are saved from one process's whole model, which sharded training does not hold",
    "parallelism_config": "adapters are saved from one process's whole model, which sharded training does not hold",
    "hub_token": "the token comes from HF_TOKEN in the environment, never from the spec",
    "hub_strategy": "train.push_to_hub uploads the last adapter after training",
    "hub_always_push": "train.push_to_hub uploads the last adapter after training",
    "hub_revision": "train.push_to_hub uploads the last adapter after training",
    "do_train": "the Trainer does not read it",
    "do_eval": "the Trainer does not read it; use train.validation",
    "do_predict": "the Trainer does not read it",
    "trust_remote_code": "cruijff-kit loads the model and tokenizer without remote code",
    "model_init_kwargs": "cruijff-kit loads the model itself (4-bit from train.method, dtype from train.precision)",
}
#: Fields refused for one objective only.
REFUSED_BY_OBJECTIVE: dict[str, dict[str, str]] = {
    "sft": {"truncation_mode": "the count of target tokens max_seq_length cuts (`ck plan`, allow_truncation) "
                               "is made for rows cut at the end, as SFT cuts them by default"},
    "dpo": {},
}
#: Fields the plugin sets to a fixed value, which trainer_args may change.
DEFAULTS = frozenset({"run_name", "dataloader_num_workers", "ddp_find_unused_parameters", "disable_tqdm",
                      "prediction_loss_only"})


def config_class(objective: str) -> type:
    """TRL's config class of ``objective`` (``SFTConfig`` or ``DPOConfig``); imports TRL."""
    if objective == "dpo":
        from trl import DPOConfig

        return DPOConfig
    from trl import SFTConfig

    return SFTConfig


def field_names(cls: type) -> list[str]:
    """The settable fields of a TRL config class."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _type_problem(cls: type, key: str, value: Any) -> str | None:
    """Why ``value`` does not fit the annotated type of ``cls.key`` (pydantic, lax), or None."""
    from pydantic import TypeAdapter, ValidationError

    try:
        hint = typing.get_type_hints(cls)[key]
        adapter = TypeAdapter(hint)
    except Exception:  # an annotation pydantic cannot read: the config class itself decides below
        return None
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        return f"{value!r:.80} is not of its type `{getattr(hint, '__name__', hint)}` ({exc.errors()[0]['msg']})"
    return None


#: Fields whose check in the config class depends on the machine and the launch (``tf32`` needs an Ampere
#: GPU, ``ddp_backend`` a started process group): the plan-time build leaves them to the stage.
MACHINE_DEPENDENT = frozenset({"tf32", "ddp_backend"})


def check_args(config: Any, file: str | None, gpus: int = 0) -> None:
    """Plan time: every ``train.trainer_args`` key is a field of the objective's TRL config class that no
    named option sets, each value has the field's type, and the config class accepts them all.

    The config class is built here for a run that trains on the CPU (``gpus`` 0), as it will be built on
    the CPU, without :data:`MACHINE_DEPENDENT` fields; a GPU run's is built when its stage starts."""
    from cruijff_kit.training import check_trainer_args

    args = dict(config.trainer_args)
    if not args:
        return
    cls = config_class(config.objective)
    refused = {**REFUSED, **REFUSED_BY_OBJECTIVE[config.objective]}
    check_trainer_args(args, known=field_names(cls), named=NAMED[config.objective], refused=refused,
                       owner=f"TRL's {cls.__name__} (objective {config.objective})", file=file)
    for key, value in args.items():
        problem = _type_problem(cls, key, value)
        if problem:
            raise SpecError(f"`{key}`: {problem}.", file=file, path=f"train.trainer_args.{key}",
                            hint=f"Give `{key}` a value of the type {cls.__name__} declares.")
    if gpus > 0:
        return
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            cls(output_dir=tmp, use_cpu=True, report_to="none",
                **{k: v for k, v in args.items() if k not in MACHINE_DEPENDENT})
        except Exception as exc:  # the config class's own checks (e.g. an unknown optim name)
            raise SpecError(f"{cls.__name__} refuses these values: {exc}", file=file, path="train.trainer_args",
                            hint="Fix the value it names (see TRL's and transformers' documentation of the field).") \
                from None


def make_args(cls: type, kwargs: dict[str, Any], config: Any) -> Any:
    """``cls(**kwargs)`` with ``train.trainer_args`` on top (the stage's config class instance).

    A trainer_args key that the plugin sets from a named option never reaches here (plan-time check,
    repeated); a value the class refuses is a StageError naming ``train.trainer_args``.
    """
    extra = dict(config.trainer_args)
    clash = sorted(set(extra) & (set(kwargs) - DEFAULTS))
    if clash:
        raise StageError(f"train.trainer_args sets {clash}, which the trl plugin sets itself; run `ck validate` "
                         "for the option to set instead.")
    try:
        return cls(**{**kwargs, **extra})
    except (TypeError, ValueError) as exc:
        if not extra:
            raise
        raise StageError(f"train.trainer_args: {cls.__name__} refuses these values: {exc}") from None
