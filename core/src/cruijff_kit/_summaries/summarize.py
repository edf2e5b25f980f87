"""``ck summarize``: one table of every run x target x task metric, plus plots.

Reads only the artifact contract (run ``spec.yaml``, ``status.json``, ``train/metrics.jsonl``,
``eval/results.json``), so it works for any trainer or evaluator plugin.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cruijff_kit import status
from cruijff_kit._base.fileio import atomic_write_text
from cruijff_kit._base.layout import ExperimentLayout, RunLayout
from cruijff_kit._engine.damage import read_metrics, read_results
from cruijff_kit._engine.report import fmt, markdown_table
from cruijff_kit._engine.runner import run_folders
from cruijff_kit._engine.stage import load_run
from cruijff_kit._summaries.metrics import LOWER_IS_BETTER, SKIP_KEYS, flatten_metrics, lower_is_better  # noqa: F401
from cruijff_kit.status import DamagedState


@dataclass
class TrainSummary:
    """Training columns of one run."""

    final_train_loss: float | None = None
    best_val_loss: float | None = None
    final_val_loss: float | None = None
    steps: int | None = None
    duration_s: float | None = None
    tokens_per_second: float | None = None
    peak_memory_mb: float | None = None
    curve: list[dict[str, Any]] = field(default_factory=list)


def train_summary(layout: RunLayout, stage_entry: dict[str, Any]) -> TrainSummary:
    """Read ``train/metrics.jsonl`` and the train stage's timestamps (a damaged file raises
    :class:`~cruijff_kit.status.DamagedState`)."""
    rows = read_metrics(layout)
    s = TrainSummary(curve=rows)
    train = [r for r in rows if r.get("train_loss") is not None]
    val = [r for r in rows if r.get("val_loss") is not None]
    if train:
        s.final_train_loss = float(train[-1]["train_loss"])
        s.steps = int(max(r.get("step", 0) for r in rows))
    if val:
        s.final_val_loss = float(val[-1]["val_loss"])
        s.best_val_loss = float(min(r["val_loss"] for r in val))
    tps = [r["tokens_per_second"] for r in rows if r.get("tokens_per_second")]
    if tps:
        s.tokens_per_second = float(sum(tps) / len(tps))
    mem = [r["peak_memory_mb"] for r in rows if r.get("peak_memory_mb")]
    if mem:
        s.peak_memory_mb = float(max(mem))
    start, end = stage_entry.get("started"), stage_entry.get("ended")
    if start and end:
        import datetime as dt

        fmt_ = "%Y-%m-%dT%H:%M:%SZ"
        try:
            s.duration_s = (dt.datetime.strptime(end, fmt_) - dt.datetime.strptime(start, fmt_)).total_seconds()
        except (TypeError, ValueError):
            s.duration_s = None  # a timestamp not written by cruijff-kit: no duration rather than a wrong one
    return s


@dataclass
class Summary:
    """The experiment's table (one row per run x eval stage) and what plots need."""

    experiment: str
    swept: list[str]
    rows: list[dict[str, Any]]
    metrics: list[str]
    curves: dict[str, list[dict[str, Any]]]
    best: dict[str, float]
    #: (run, task, target, scorer) -> {"calibration": bins, "roc": points} for risk scorers
    risk: dict[tuple[str, str, str, str], dict[str, Any]] = field(default_factory=dict)
    #: one message per damaged state file (naming it and the recovery); its values are missing
    damaged: list[str] = field(default_factory=list)

    def columns(self) -> list[str]:
        train_cols = ["final_train_loss", "best_val_loss", "final_val_loss", "steps", "duration_s",
                      "tokens_per_second", "peak_memory_mb"]
        return ["run", "type", *self.swept, "task", "target", "state", *self.metrics, *train_cols]


def collect(exp: ExperimentLayout) -> Summary:
    """Gather every run's sweep values, stage states, training and eval metrics."""
    rows: list[dict[str, Any]] = []
    swept: list[str] = []
    metrics: list[str] = []
    curves: dict[str, list[dict[str, Any]]] = {}
    risk: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    damaged: list[str] = []
    for layout in run_folders(exp):
        try:
            spec = load_run(layout.root).spec
        except DamagedState as exc:  # nothing of this run can be placed in the table: said, not guessed
            damaged.append(f"run {layout.name} not summarized: {exc}")
            continue
        meta = spec.get("run", {})
        sweep = meta.get("sweep", {}) or {}
        for k in sweep:
            if k not in swept:
                swept.append(k)
        stages, states_lost = _read_part(damaged, {"stages": {}}, status.read, layout.root)
        stages = stages["stages"]
        ts, _ = _read_part(damaged, TrainSummary(), train_summary, layout, stages.get("train", {})) \
            if spec.get("train") else (TrainSummary(), False)
        if ts.curve:
            curves[layout.name] = ts.curve
        results, results_lost = _read_part(damaged, {}, read_results, layout)
        eval_stages = [s for s in meta.get("stages", []) if s.startswith("eval.")]
        if not eval_stages:
            eval_stages = ["(train only)"]
        for st in eval_stages:
            task, target = (st.split(".", 2)[1:] if st.startswith("eval.") else ("", ""))
            state = stages.get(st, {}).get("state", status.PENDING) if task else stages.get("train", {}).get("state")
            if states_lost or (results_lost and task):
                state = status.DAMAGED
            elif task and state == status.DONE and target not in results.get(task, {}):
                state = "result missing"
                damaged.append(f"{layout.results}: no result for the finished stage {st} of run {layout.name}. "
                               f"`ck run SPEC` evaluates it again.")
            row: dict[str, Any] = {"run": layout.name, "type": meta.get("type", ""), **sweep, "task": task,
                                   "target": target, "state": state}
            entry = results.get(task, {}).get(target, {}) if task else {}
            values = flatten_metrics(entry)
            for scorer, bins in (entry.get("calibration") or {}).items():
                risk[(layout.name, task, target, scorer)] = {"calibration": bins,
                                                             "roc": (entry.get("roc") or {}).get(scorer, [])}
            for m, v in values.items():
                if m not in metrics:
                    metrics.append(m)
                row[m] = v
            row.update({k: v for k, v in ts.__dict__.items() if k != "curve"})
            rows.append(row)
    best: dict[str, float] = {}
    for m in metrics:
        for task in {r["task"] for r in rows}:
            vals = [r[m] for r in rows if r["task"] == task and isinstance(r.get(m), float)]
            if vals:
                best[f"{task}:{m}"] = min(vals) if lower_is_better(m) else max(vals)
    return Summary(exp.root.name, swept, rows, metrics, curves, best, risk, damaged)


def _read_part(damaged: list[str], default: Any, read: Callable[..., Any], *args: Any) -> tuple[Any, bool]:
    """``(read(*args), False)``, or ``(default, True)`` after noting a damaged file's message in ``damaged``."""
    try:
        return read(*args), False
    except DamagedState as exc:
        damaged.append(str(exc))
        return default, True


def _cell(summary: Summary, row: dict[str, Any], col: str, mark: bool) -> Any:
    value = row.get(col)
    if value is None:
        return "" if col not in summary.metrics else "—"
    if mark and col in summary.metrics and summary.best.get(f"{row['task']}:{col}") == value:
        return f"**{fmt(value)}**"
    return value


def to_markdown(summary: Summary) -> str:
    """``summary.md``: the table with the best value per metric (and task) in bold."""
    cols = [c for c in summary.columns() if any(r.get(c) not in (None, "") for r in summary.rows)]
    body = [[_cell(summary, r, c, True) for c in cols] for r in summary.rows]
    missing = [r for r in summary.rows if r.get("state") != status.DONE]
    lines = [f"# Summary: {summary.experiment}", "", markdown_table(cols, body), ""]
    if missing:
        lines += [f"{len(missing)} stage(s) not done: " + ", ".join(
            f"{r['run']} {r['task']}/{r['target']} ({r['state']})" for r in missing), ""]
    if summary.damaged:
        lines += ["Missing from this summary (damaged state files):", "",
                  *(f"- {line}" for line in summary.damaged), ""]
    lines.append("Bold: best value of each metric per task (lowest for losses and errors).")
    return "\n".join(lines) + "\n"


def to_csv(summary: Summary) -> str:
    """``summary.csv``: every column, plain values."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=summary.columns(), extrasaction="ignore")
    writer.writeheader()
    for r in summary.rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in summary.columns()})
    return buf.getvalue()


def _summary_file(path: Path) -> bool:
    """True when ``path`` starts as ``ck summarize`` writes it (``# Summary: `` or the CSV's ``run,`` header)."""
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
    except (OSError, UnicodeDecodeError):
        return False
    return first.startswith("# Summary: " if path.suffix == ".md" else "run,")


def _plots_folder(path: Path) -> bool:
    """True when ``path`` holds only ``.png`` files (the plots ``ck summarize`` writes)."""
    return path.is_dir() and all(p.suffix == ".png" and p.is_file() for p in path.iterdir())


def write_summary(exp: ExperimentLayout, *, plots: bool = True, overwrite: bool = False
                  ) -> tuple[Summary, list[Path]]:
    """Write summary.md, summary.csv and the plots; return the summary and the files written.

    A summary file or plots folder ``ck summarize`` did not write is refused (written over with ``overwrite``)."""
    from cruijff_kit._base.ownership import check_writable

    files = [exp.root / "summary.md", exp.root / "summary.csv"]
    for path in files:
        check_writable(path, command="ck summarize", overwrite=overwrite, ours=_summary_file)
    if plots:
        check_writable(exp.plots_dir, command="ck summarize", overwrite=overwrite, ours=_plots_folder)
    summary = collect(exp)
    atomic_write_text(files[0], to_markdown(summary))
    atomic_write_text(files[1], to_csv(summary))
    if plots:
        from cruijff_kit._summaries.plots import write_plots

        files += write_plots(summary, exp.plots_dir)
    return summary, files
