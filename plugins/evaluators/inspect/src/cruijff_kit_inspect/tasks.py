"""Build the inspect ``Task`` of an evaluation: a built-in task over the run's dataset split, or a
user task from ``path/to/file.py@task_name``, with the spec's scorers."""

from __future__ import annotations

import ast
import importlib.util
import inspect as pyinspect
import string
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cruijff_kit import DataError, StageError
from cruijff_kit_inspect.config import (
    ChoiceScorer,
    ClassificationScorer,
    ContinuousScorer,
    IncludesScorer,
    InspectConfig,
    MatchScorer,
    ModelGradedScorer,
    NumericRiskScorer,
    RiskScorer,
)

_ROLES = ("system", "user", "assistant")


# --------------------------------------------------------------------------- samples
def rows_to_samples(rows: Sequence[dict[str, Any]], split: str, *, choices: bool = False) -> list[Any]:
    """Canonical ``messages`` rows -> inspect Samples: every turn before the final assistant turn is
    the input, the final assistant turn is the target. Other simple columns become metadata."""
    from inspect_ai.dataset import Sample
    from inspect_ai.model import ChatMessageAssistant, ChatMessageSystem, ChatMessageUser

    classes = {"system": ChatMessageSystem, "user": ChatMessageUser, "assistant": ChatMessageAssistant}
    samples = []
    for i, row in enumerate(rows):
        where = f"split `{split}`, row {i}"
        messages = row.get("messages")
        if not messages:
            raise DataError(f"{where} has no `messages`; the dataset plugin must produce canonical rows.")
        if messages[-1].get("role") != "assistant":
            raise DataError(f"{where}: the last message is `{messages[-1].get('role')}`, not the assistant "
                            "turn holding the expected answer. Evaluated rows must end with an assistant turn.")
        inputs = []
        for m in messages[:-1]:
            role = m.get("role")
            if role not in _ROLES:
                raise DataError(f"{where}: unknown role `{role}` (use {', '.join(_ROLES)}).")
            inputs.append(classes[role](content=str(m.get("content", ""))))
        target = str(messages[-1].get("content", ""))
        metadata = {k: v for k, v in row.items()
                    if k not in ("messages", "choices") and isinstance(v, str | int | float | bool)}
        sample_id = row.get("id", i + 1)
        kwargs: dict[str, Any] = {}
        if choices:
            opts = row.get("choices")
            if not isinstance(opts, list) or len(opts) < 2:
                raise DataError(f"{where}: task `choice` needs a `choices` list (two or more) in every row.")
            opts = [str(o) for o in opts]
            target = _choice_letter(target, opts, where)
            kwargs["choices"] = opts
        samples.append(Sample(input=inputs, target=target, id=sample_id, metadata=metadata, **kwargs))
    return samples


def _choice_letter(target: str, options: list[str], where: str) -> str:
    letters = string.ascii_uppercase[: len(options)]
    t = target.strip()
    if len(t) == 1 and t.upper() in letters:
        return t.upper()
    for letter, opt in zip(letters, options, strict=False):
        if t == opt.strip():
            return letter
    raise DataError(f"{where}: the answer {target!r} is neither a choice letter ({', '.join(letters)}) nor "
                    "the text of one of the row's choices.")


# --------------------------------------------------------------------------- solvers and scorers
def prefill(prefix: str) -> Any:
    """A solver that starts the assistant's answer with ``prefix``; the model continues it."""
    from inspect_ai.model import ChatMessageAssistant
    from inspect_ai.solver import Generate, TaskState, solver

    @solver(name="prefill")
    def _prefill() -> Any:
        async def solve(state: TaskState, generate: Generate) -> TaskState:
            state.messages.append(ChatMessageAssistant(content=prefix, source="input"))
            return state

        return solve

    return _prefill()


def build_scorers(cfg: InspectConfig) -> list[Any]:
    """inspect scorers for the configured scorer specs (all of them are reported)."""
    from inspect_ai import scorer as s

    from cruijff_kit_inspect import scorers as ck

    out = []
    for spec in cfg.effective_scorers():
        if isinstance(spec, MatchScorer):
            out.append(s.match(spec.location, ignore_case=spec.ignore_case, numeric=spec.numeric))
        elif isinstance(spec, IncludesScorer):
            out.append(s.includes(ignore_case=spec.ignore_case))
        elif isinstance(spec, ChoiceScorer):
            out.append(s.choice())
        elif isinstance(spec, ModelGradedScorer):
            out.append(s.model_graded_fact(model=spec.grader or cfg.grader, partial_credit=spec.partial_credit,
                                           instructions=spec.instructions))
        elif isinstance(spec, RiskScorer):
            out.append(ck.risk(options=spec.options, ignore_case=spec.ignore_case, n_bins=spec.n_bins))
        elif isinstance(spec, NumericRiskScorer):
            out.append(ck.numeric_risk(options=spec.options, n_bins=spec.n_bins))
        elif isinstance(spec, ContinuousScorer):
            out.append(ck.continuous())
        elif isinstance(spec, ClassificationScorer):
            out.append(ck.classification(labels=spec.labels, positive=spec.positive, ignore_case=spec.ignore_case))
        else:  # pragma: no cover - the config's union is closed
            raise StageError(f"scorer {spec.name!r} is not implemented.")
    return out


# --------------------------------------------------------------------------- tasks
def builtin_task(cfg: InspectConfig, samples: list[Any], name: str) -> Any:
    """A Task over ``samples`` for a built-in task name."""
    from inspect_ai import Task
    from inspect_ai.solver import generate, multiple_choice

    solvers: list[Any] = []
    if cfg.generation.assistant_prefix:
        solvers.append(prefill(cfg.generation.assistant_prefix))
    solvers.append(multiple_choice() if cfg.task == "choice" else generate())
    return Task(dataset=samples, solver=solvers, scorer=build_scorers(cfg), name=name)


def split_task_ref(ref: str) -> tuple[str, str]:
    """``path/to/file.py@task_name`` -> (file, task_name)."""
    file, _, name = ref.rpartition("@")
    return file, name


def task_functions(file: Path) -> list[str]:
    """Names of the top-level functions in a task file, without importing it (cheap, plan time)."""
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def load_user_task(file: Path, name: str, task_args: dict[str, Any],
                   samples: Callable[[], list[Any]] | None = None) -> Any:
    """Import ``file`` and call its task function ``name`` with ``task_args``.

    A task function that takes a ``dataset`` argument (and is not given one) receives the run's
    split as inspect Samples, so a custom task can reuse the run's data.
    """
    from inspect_ai import Task

    if not file.is_file():
        raise StageError(f"task file {file} does not exist.")
    module_name = f"ck_user_task_{abs(hash(str(file)))}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py path always has a loader
        raise StageError(f"cannot import task file {file}.")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(file.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(file.parent))
    fn = getattr(module, name, None)
    if fn is None or not callable(fn):
        raise StageError(f"task file {file} has no task function `{name}`.")
    args = dict(task_args)
    params = pyinspect.signature(fn).parameters
    if "dataset" in params and "dataset" not in args and samples is not None:
        args["dataset"] = samples()
    unknown = [k for k in args if k not in params and not any(
        p.kind is pyinspect.Parameter.VAR_KEYWORD for p in params.values())]
    if unknown:
        raise StageError(f"task `{name}` in {file} takes no argument(s) {unknown} (from task_args); "
                         f"its arguments: {list(params)}.")
    task = fn(**args)
    if not isinstance(task, Task):
        raise StageError(f"`{name}` in {file} returned {type(task).__name__}, not an inspect Task "
                         "(decorate it with @task and return Task(...)).")
    if "dataset" in args and "dataset" not in task_args:
        _shorten_dataset_arg(task, len(args["dataset"]))
    return task


def _shorten_dataset_arg(task: Any, n: int) -> None:
    """Record the injected dataset in the log's task_args as a note, not as every sample."""
    note = f"<the run's dataset split: {n} samples>"
    try:
        # Private: inspect-ai has no public API to rewrite a task's logged args (0.3.285); pinned tightly.
        from inspect_ai._eval.task.constants import TASK_ALL_PARAMS_ATTR
        from inspect_ai._util.registry import registry_params, set_registry_params

        set_registry_params(task, {**registry_params(task), "dataset": note})
        if isinstance(getattr(task, TASK_ALL_PARAMS_ATTR, None), dict):
            setattr(task, TASK_ALL_PARAMS_ATTR, {**getattr(task, TASK_ALL_PARAMS_ATTR), "dataset": note})
    except Exception:  # inspect internals moved: the log then lists the samples in task_args
        pass
