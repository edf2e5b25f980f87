"""Plan-time checks of a ``trl`` run: quantization backend, trackers, splits (no heavy import), and a chat
template that cannot mark the assistant's tokens of multi-turn data (loads the tokenizer only then)."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cruijff_kit import CkError, Prompt, Resources, SpecError
from cruijff_kit_trl.config import TrlConfig

if TYPE_CHECKING:  # pragma: no cover
    from cruijff_kit import PlannedRun


def _spec_file(run: PlannedRun) -> str | None:
    return run.spec.get("run", {}).get("spec_file")


def bitsandbytes_backends() -> set[str] | None:
    """Devices the installed bitsandbytes has a 4-bit backend for, without importing it; None if missing."""
    spec = find_spec("bitsandbytes")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg = Path(next(iter(spec.submodule_search_locations)))
    found: set[str] = set()
    if (pkg / "backends" / "cpu").is_dir() or any(pkg.glob("libbitsandbytes_cpu*")):
        found.add("cpu")
    if any(pkg.glob("libbitsandbytes_cuda*")) or any(pkg.glob("libbitsandbytes_rocm*")):
        found.add("cuda")
    return found


def quantization_problem(device: str) -> str | None:
    """Why 4-bit NF4 quantization cannot run on ``device`` ("cpu" or "cuda") here, or None when it can."""
    backends = bitsandbytes_backends()
    if backends is None:
        return ("method: qlora needs bitsandbytes, which is not installed in this environment. Install it "
                "(`pip install bitsandbytes`; version 0.50 quantizes on CPU and GPU), or use method: lora.")
    if device not in backends:
        where = "this CPU" if device == "cpu" else "a GPU"
        return (f"method: qlora needs a bitsandbytes build that can quantize on {where}, and the installed one "
                f"has backends for {sorted(backends) or 'no device'} only. Install bitsandbytes 0.50 or later (it has a "
                "CPU backend and CUDA builds), run on a machine with a supported GPU, or use method: lora.")
    return None


def check_run(run: PlannedRun, config: TrlConfig) -> None:
    """Everything ``ck plan`` can check about a ``trl`` run without importing torch."""
    from cruijff_kit.training import check_targets, check_trackers_installed, check_validation_split

    check_targets(run, config)
    file = _spec_file(run)
    if not config.lora.all_linear and "lm_head" in config.lora.targets:
        raise SpecError("TRL computes log-probabilities from `lm_head.weight` directly, so a LoRA adapter on "
                        "lm_head would never train.", file=file, path="train.lora.targets",
                        hint="Remove lm_head from the targets (or train with plugin: torchtune).")
    sched = run.spec.get("scheduler") or {}
    resources = Resources.model_validate(sched.get("resources", {}))
    # Quantization is checked here only when this machine is the one that trains; else at stage start.
    if config.method == "qlora" and sched.get("plugin") == "local":
        problem = quantization_problem("cuda" if resources.gpus > 0 else "cpu")
        if problem:
            raise SpecError(problem, file=file, path="train.method")
    if config.precision == "fp16" and resources.gpus == 0:
        raise SpecError("precision fp16 needs a GPU, and this run asks for none (scheduler.resources.gpus: 0).",
                        file=file, path="train.precision", hint="Use precision: auto (fp32 on CPU).")
    if sched.get("plugin") == "local":  # else the machine that trains may have them
        check_trackers_installed(config.report_to, package="cruijff-kit-trl", file=file)
    check_validation_split(run, config)
    if config.trainer_args:
        from cruijff_kit_trl.trainer_args import check_args

        check_args(config, file, resources.gpus)
    check_assistant_mask(run, config)


def _model_template(folder: Path) -> str | dict[str, str] | None:
    """The chat template saved with a model (``chat_template.jinja`` or ``tokenizer_config.json``), if readable."""
    try:
        if (folder / "chat_template.jinja").is_file():
            return (folder / "chat_template.jinja").read_text(encoding="utf-8")
        saved = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError, AttributeError):
        return None
    return saved if isinstance(saved, str | dict) else None


def _multi_turn_rows(run: PlannedRun, config: TrlConfig) -> tuple[str, int, int, int] | None:
    """The first split SFT reads with conversations of more than one assistant turn: (split, how many, of
    how many rows, the first row's index); None when there is none, or the data cannot be loaded here."""
    try:
        data: Any = run.dataset().load(Prompt.model_validate(run.spec["prompt"]))
    except CkError:
        raise
    except Exception:  # data that cannot be loaded here (a library, a hub dataset): the stage loads it
        return None
    for split in ("train", "validation") if config.validation else ("train",):
        if split not in data:
            continue
        rows = [list(r.get("messages") or []) for r in data[split]]
        multi = [i for i, m in enumerate(rows) if sum(1 for t in m if t.get("role") == "assistant") > 1]
        if multi:
            return split, len(multi), len(rows), multi[0]
    return None


def check_assistant_mask(run: PlannedRun, config: TrlConfig) -> None:
    """SpecError when ``assistant_only_loss`` (sft) meets a chat template without ``{% generation %}`` markers
    that TRL cannot patch, and conversations with more than one assistant turn: the trainer would train on
    the last assistant turn of each only (its fallback), leaving the earlier ones untrained without a word.

    Single-turn data is not refused (the last turn is the only one). Not checked when no chat template is
    on this machine (the stage says so) or the tokenizer cannot be loaded (the truncation count says so).
    Cheap first: the template's text, then the data; the tokenizer and TRL only for multi-turn data."""
    from cruijff_kit_trl.masks import has_generation_markers

    local = run.spec["model"].get("local_path")
    trainer = run.trainer()
    if config.objective != "sft" or not config.assistant_only_loss or not local or trainer is None:
        return
    spec_template = trainer.chat_template()  # type: ignore[attr-defined]
    template = spec_template or _model_template(Path(local))
    if template is None or has_generation_markers(template):
        return
    found = _multi_turn_rows(run, config)
    if found is None:
        return
    try:
        from cruijff_kit_trl.sft import load_tokenizer, supports_assistant_mask

        if supports_assistant_mask(load_tokenizer(local, spec_template)):
            return
    except Exception:  # a tokenizer that cannot be loaded here: the stage says so, in the same words
        return
    split, count, total, first = found
    whose = "train.chat_template" if config.chat_template else f"the chat template of {local}"
    raise SpecError(
        f"{whose} has no {{% generation %}} markers and TRL cannot add them, so assistant_only_loss cannot mark "
        f"the assistant's tokens: the trainer would train on the last assistant turn of each conversation only, "
        f"and {count} of {total} `{split}` conversations (the first: row {first + 1}) have earlier assistant turns "
        "that would silently go untrained.", file=run.spec.get("run", {}).get("spec_file"),
        path="train.chat_template" if config.chat_template else "train.assistant_only_loss",
        hint="Set train.chat_template to a template that wraps each assistant turn in {% generation %}..."
             "{% endgeneration %} (inline, or a .jinja file), or set train.assistant_only_loss: false to train on "
             "the whole conversation.")
