"""``ck new experiment``: a few questions (model, data, trainer, scheduler, what to sweep) -> a spec.

The spec uses only documented sections, names plugins that are installed, and makes the data path
relative to the spec's folder, so ``ck validate`` accepts it as written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cruijff_kit._base.errors import SpecError, clip
from cruijff_kit._scaffold.names import write_new


@dataclass
class ExperimentAnswers:
    """What ``ck new experiment`` asks."""

    name: str = "my-experiment"
    model: str = ""
    data: str = ""
    trainer: str = "trl"
    scheduler: str = "local"
    evaluator: str = "inspect"
    sweeps: dict[str, list[Any]] = field(default_factory=dict)


def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """``train.learning_rate=1e-4,3e-4`` -> (key, [1e-4, 3e-4]) with YAML-typed values."""
    import yaml

    from cruijff_kit._base.parsing import parse_yaml_text, yaml_problem

    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise SpecError(f"sweep {clip(text, 80)!r} is not KEY=V1,V2.", file="ck new experiment",
                        hint="Example: --sweep train.learning_rate=1e-4,3e-4")
    def value(text: str) -> Any:
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        try:
            return parse_yaml_text(text, file="ck new experiment")
        except yaml.YAMLError as exc:
            raise SpecError(f"sweep value {clip(text, 80)!r} is not YAML{yaml_problem(exc)}.", file="ck new experiment",
                            hint="Example: --sweep train.learning_rate=1e-4,3e-4") from None

    return key.strip(), [value(v.strip()) for v in values.split(",") if v.strip()]


def experiment_answers(*, name: str | None = None, model: str | None = None, data: str | None = None,
                       trainer: str | None = None, scheduler: str | None = None, evaluator: str | None = None,
                       sweeps: list[str] | None = None, ask: bool = True) -> ExperimentAnswers:
    """Fill the answers from the options, asking (when ``ask``) for those not given."""
    import click

    d = ExperimentAnswers()

    def get(value: str | None, prompt: str, default: str) -> str:
        if value is not None:
            return value
        return str(click.prompt(prompt, default=default)) if ask else default

    out = ExperimentAnswers(
        name=get(name, "Experiment name", d.name),
        model=get(model, "Model (local folder or hub id org/name)", d.model or "HuggingFaceTB/SmolLM2-135M-Instruct"),
        data=get(data, "Data (json-instruct file or json-chat folder)", "data.json"),
        trainer=get(trainer, "Trainer plugin (or none for an eval-only control run)", d.trainer),
        scheduler=get(scheduler, "Scheduler plugin", d.scheduler),
        evaluator=get(evaluator, "Evaluator plugin (or none)", d.evaluator),
    )
    texts = list(sweeps or [])
    if not texts and ask:
        answer = click.prompt("What to sweep (KEY=V1,V2; empty for nothing)", default="", show_default=False)
        texts = [answer] if answer.strip() else []
    out.sweeps = dict(parse_sweep(t) for t in texts)
    return out


def experiment_spec(answers: ExperimentAnswers, spec_dir: Path) -> dict[str, Any]:
    """The spec as a dict; paths relative to ``spec_dir`` when they exist."""

    def rel(value: str) -> str:
        p = Path(value).expanduser()
        if p.exists():
            try:
                return os.path.relpath(p.resolve(), spec_dir.resolve())
            except ValueError:  # another drive
                return str(p.resolve())
        return value

    data = Path(answers.data).expanduser()
    dataset = "json-chat" if data.is_dir() else "json-instruct"
    spec: dict[str, Any] = {"experiment": answers.name, "model": {"path": rel(answers.model)},
                            "dataset": {"plugin": dataset, "path": rel(answers.data)}}
    if answers.trainer and answers.trainer != "none":
        spec["train"] = {"plugin": answers.trainer, "epochs": 1, "learning_rate": 1.0e-4, "lora": {"rank": 8}}
    if answers.evaluator and answers.evaluator != "none":
        spec["eval"] = [{"plugin": answers.evaluator, "task": "exact-match",
                         "checkpoints": "last" if "train" in spec else "none"}]
    spec["scheduler"] = {"plugin": answers.scheduler}
    if answers.sweeps:
        spec["sweep"] = answers.sweeps
    return spec


def new_experiment(out: Path, answers: ExperimentAnswers) -> Path:
    """Write the spec to ``out`` (refusing to overwrite) and return its path."""
    import yaml

    out = Path(out)
    if os.path.lexists(out):
        raise SpecError("exists already.", file=str(out), hint="Choose another --out or remove the file.")
    spec = experiment_spec(answers, out.parent)
    header = "# Written by `ck new experiment`. Check it with `ck validate`; see docs/spec-reference.md.\n"
    write_new(out, header + yaml.safe_dump(spec, sort_keys=False))
    return out
