"""``plan.md`` and status tables (markdown text; the CLI prints them with rich)."""

from __future__ import annotations

from typing import Any

from cruijff_kit._base.sizes import human_bytes
from cruijff_kit._engine.planner import Plan
from cruijff_kit._engine.shared import used_by


def human_count(n: int | None) -> str:
    """1234567 -> '1.23M'."""
    if n is None:
        return "?"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def fmt(value: Any) -> str:
    """A table cell."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | dict):
        return str(value).replace("|", "\\|")
    return str(value)


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def plan_markdown(plan: Plan, max_rows: int | None = None) -> str:
    """The design matrix and per-run estimates (the first ``max_rows`` runs when given)."""
    swept = plan.swept_keys()
    extra: list[str] = []  # scheduler cells (e.g. pod and estimated cost), in first-seen order
    for run in plan.runs:
        extra += [k for k in run.plan_columns if k not in extra]
    cut = ["target tokens cut"] if plan.truncation else []
    headers = ["run", "type", *swept, "stages", "params", "trainable", "memory", "tokens/epoch", *cut, *extra]
    rows = []
    shown = plan.runs if max_rows is None else plan.runs[:max_rows]
    for run in shown:
        est = run.estimate
        rows.append([
            run.name, run.type, *[run.sweep_values.get(k, "") for k in swept], len(run.stages),
            human_count(est.parameters) if est else "-",
            human_count(est.trainable_parameters) if est else "-",
            human_bytes(est.memory_bytes) if est else "-",
            human_count(est.tokens_per_epoch) if est else "-",
            *([plan.truncation[run.name].short() if run.name in plan.truncation else "-"] if cut else []),
            *[run.plan_columns.get(k, "-") for k in extra],
        ])
    notes = sorted({n for run in plan.runs if run.estimate for n in run.estimate.notes})
    lines = [
        f"# Plan: {plan.experiment}",
        "",
        f"Spec: `{plan.loaded.file}`  ",
        f"Output: `{plan.layout.root}`  ",
        f"Runs: {len(plan.runs)}, stages: {len(plan.jobs())}"
        + (f" ({len(plan.pointers)} run stages served by {len(plan.shared)} shared)" if plan.shared else ""),
        "",
        markdown_table(headers, rows),
    ]
    if len(shown) < len(plan.runs):
        lines += ["", f"... and {len(plan.runs) - len(shown)} more runs: see `{plan.layout.plan}`."]
    if notes:
        lines += ["", "Notes:", *[f"- {n}" for n in notes]]
    cuts = [(run.name, plan.truncation[run.name].summary()) for run in shown if run.name in plan.truncation]
    if cuts:
        lines += ["", "Target tokens cut by train.max_seq_length (counted with each run's tokenizer):",
                  *[f"- {name}: {text}" for name, text in cuts]]
    lines += ["", "Stages per run: " + ", ".join(s.name for s in plan.runs[0].stages) if plan.runs else ""]
    if plan.shared:
        lines += ["", "Shared stages (identical in several runs: each runs once, in its folder under shared/):",
                  *[f"- {sh.stages[0].name} in `shared/{sh.name}`, for {len(used_by(sh.spec))} "
                    f"runs: {', '.join(used_by(sh.spec))}" for sh in plan.shared]]
    return "\n".join(lines) + "\n"
