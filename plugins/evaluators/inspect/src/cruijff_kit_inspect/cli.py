"""``ck eval MODEL [--adapter DIR] --task ... --dataset ...``: a one-off evaluation outside a sweep.

It writes a small run spec and runs its eval stages in this process through ``ck stage``'s code, so
the output is an ordinary run folder (``.eval`` logs, ``eval/results.json``, ``status.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


def known_providers() -> frozenset[str]:
    """The model providers inspect-ai knows (its model registry, read after importing
    ``inspect_ai.model``), plus this plugin's ``ck``: the prefixes that make MODEL an inspect model
    string rather than a hub id."""
    import inspect_ai.model  # noqa: F401 - registers inspect's built-in providers

    # Private: inspect-ai exports no public way to list its model providers: registry_find is not exported
    # (registry_info is, by inspect_ai.util; checked for 0.3.285). inspect-ai is pinned tightly.
    from inspect_ai._util.registry import registry_find
    from inspect_ai.util import registry_info

    names = {registry_info(api).name.split("/")[-1] for api in registry_find(lambda info: info.type == "modelapi")}
    return frozenset(names | {"ck"})


def _is_model_string(model: str) -> bool:
    return "/" in model and model.split("/", 1)[0] in known_providers() and not Path(model).exists()


def build_spec(model: str, *, adapter: str | None, task: str, dataset: str | None, dataset_plugin: str,
               dataset_options: dict[str, Any], split: str, scorers: tuple[str, ...], limit: int | None,
               include_base: bool, options: dict[str, Any], output: Path, seed: int,
               system: str | None, template: str | None) -> dict[str, Any]:
    """The run spec of a one-off evaluation (absolute paths; the eval-only or control run type)."""
    from cruijff_kit.engine import set_path

    local = Path(model).expanduser()
    model_string = _is_model_string(model)
    ev: dict[str, Any] = {"plugin": "inspect", "task": _abs_task(task), "split": split,
                          "include_base": include_base or adapter is None}
    if model_string:
        ev["model"] = model
        ev["checkpoints"] = "none"
    if scorers:
        ev["scorers"] = list(scorers)
    if limit is not None:
        ev["limit"] = limit
    for key, value in options.items():
        set_path(ev, key, value, origin="--set")
    ds: dict[str, Any] = {"plugin": dataset_plugin, **dataset_options}
    if dataset is not None:
        ds["path"] = str(Path(dataset).expanduser().resolve())
    spec: dict[str, Any] = {
        "experiment": "ck-eval",
        "output_dir": str(output.resolve()),
        "seed": seed,
        "model": {"path": str(local.resolve()) if local.exists() else model},
        "dataset": ds,
        "eval": [ev],
        "scheduler": {"plugin": "local"},
    }
    if adapter:
        spec["model"]["adapter"] = str(Path(adapter).expanduser().resolve())
    prompt = {k: v for k, v in (("system", system), ("template", template)) if v is not None}
    if prompt:
        spec["prompt"] = prompt
    return spec


def _abs_task(task: str) -> str:
    if "@" in task:
        file, _, name = task.rpartition("@")
        return f"{Path(file).expanduser().resolve()}@{name}"
    return task


@click.command("eval")
@click.argument("model")
@click.option("--adapter", type=click.Path(file_okay=False), help="PEFT adapter folder to evaluate on MODEL.")
@click.option("--task", required=True, help="exact-match, includes, choice, model-graded, or file.py@task.")
@click.option("--dataset", help="Dataset path (given to the dataset plugin as `path`).")
@click.option("--dataset-plugin", default="json-instruct", show_default=True, help="Dataset plugin.")
@click.option("--dataset-option", "dataset_opts", multiple=True, help="Dataset option key=value. Repeatable.")
@click.option("--split", default="test", show_default=True)
@click.option("--scorer", "scorers", multiple=True, help="Scorer name (repeatable); default: the task's.")
@click.option("--limit", type=int, help="Evaluate only the first N samples.")
@click.option("--include-base", is_flag=True, help="With --adapter, also evaluate MODEL without it.")
@click.option("--system", help="System prompt.")
@click.option("--template", help="User turn template with {input}.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=42, show_default=True)
@click.option("--set", "sets", multiple=True,
              help="Evaluator option dotted.path=value, e.g. generation.max_tokens=8. Repeatable.")
@click.option("--output", type=click.Path(file_okay=False), default="ck-eval", show_default=True,
              help="Folder for the run folders.")
def eval_command(model: str, adapter: str | None, task: str, dataset: str | None, dataset_plugin: str,
                 dataset_opts: tuple[str, ...], split: str, scorers: tuple[str, ...], limit: int | None,
                 include_base: bool, system: str | None, template: str | None, seed: int,
                 sets: tuple[str, ...], output: str) -> None:
    """Evaluate MODEL (a local folder, hub id, or inspect model string like openai/gpt-4o-mini), or
    MODEL plus --adapter, on one task; prints the metrics and where the logs are."""
    from cruijff_kit.engine import load_spec, make_plan, parse_overrides, run_stage, write_experiment
    from cruijff_kit.files import atomic_write_yaml, read_json

    out = Path(output)
    spec = build_spec(model, adapter=adapter, task=task, dataset=dataset, dataset_plugin=dataset_plugin,
                      dataset_options=parse_overrides(dataset_opts), split=split, scorers=scorers,
                      limit=limit, include_base=include_base, options=parse_overrides(sets), output=out,
                      seed=seed, system=system, template=template)
    out.mkdir(parents=True, exist_ok=True)
    spec_file = out / "ck-eval.yaml"
    atomic_write_yaml(spec_file, spec)
    plan = make_plan(load_spec(spec_file))
    write_experiment(plan)
    for run in plan.runs:
        for stage in run.stages:
            click.echo(f"evaluating {stage.target} ({stage.name}) ...", err=True)
            run_stage(run.layout.root, stage.name)
        results = read_json(run.layout.results, default={}) or {}
        for task_label, by_target in results.items():
            for target, entry in by_target.items():
                click.echo(f"{task_label} / {target}: {entry.get('samples')} samples, log {entry.get('log')}")
                for key, metric in entry.items():
                    if not (isinstance(metric, dict) and "value" in metric):
                        continue
                    value, se = metric["value"], metric.get("stderr")
                    shown = "-" if value is None else f"{value:.4f}"
                    click.echo(f"  {key:<40} {shown}" + (f" ± {se:.4f}" if se is not None else ""))
        click.echo(f"Run folder: {run.layout.root}")
