"""``ck summarize``: one table of every run x target x task metric, plus plots.

Reads only the artifact contract (run ``spec.yaml``, ``status.json``, ``train/metrics.jsonl``,
``eval/results.json``), so it works for any trainer or evaluator plugin.
"""

from __future__ import annotations

import csv
import io
import math
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
from cruijff_kit._engine.shared import resolve_entry, resolve_results
from cruijff_kit._engine.stage import load_run
from cruijff_kit._summaries.metrics import LOWER_IS_BETTER, SKIP_KEYS, flatten_metrics, lower_is_better  # noqa: F401
from cruijff_kit.status import DamagedState

#: Columns of one eval target: the losses of the epoch the target is (``epoch_<N>`` rows only).
TARGET_TRAIN_COLUMNS = ("val_loss", "train_loss")
#: Columns of the whole training of a run: the same on every ``epoch_<N>`` row of the run.
RUN_TRAIN_COLUMNS = ("best_val_loss", "best_epoch", "final_train_loss", "final_val_loss", "steps", "duration_s",
                     "tokens_per_second", "peak_memory_mb")
#: Columns that name a row of the eval table and of the training table (repeated when a table is split).
EVAL_KEYS = ("run", "task", "target")
TRAIN_KEYS = ("run",)


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        return None
    return float(value)


def _whole(value: Any) -> int | float | None:
    """An epoch field as an int when it is a whole number, the float otherwise, None when not a number."""
    num = _number(value)
    return int(num) if num is not None and num.is_integer() else num


@dataclass
class TrainSummary:
    """Training columns of one run: run-level values and the rows of ``train/metrics.jsonl``."""

    final_train_loss: float | None = None
    best_val_loss: float | None = None
    best_epoch: int | float | None = None
    final_val_loss: float | None = None
    steps: int | None = None
    duration_s: float | None = None
    tokens_per_second: float | None = None
    peak_memory_mb: float | None = None
    curve: list[dict[str, Any]] = field(default_factory=list)

    def run_columns(self) -> dict[str, Any]:
        """The :data:`RUN_TRAIN_COLUMNS` of this run."""
        return {c: getattr(self, c) for c in RUN_TRAIN_COLUMNS}

    def epoch_losses(self, epoch: int) -> dict[str, float | None]:
        """``val_loss`` and ``train_loss`` of 0-based ``epoch``: each from the last row of
        ``metrics.jsonl`` that has it and whose ``epoch`` field is ``epoch``; None when no row is.

        The trainers write ``epoch`` as the 0-based epoch a step belongs to, and log the validation
        at the end of an epoch with that epoch, so the last validation row of epoch N is the one
        logged at its end. Another epoch's value is never used in its place."""
        out: dict[str, float | None] = {"val_loss": None, "train_loss": None}
        for row in self.curve:
            if _whole(row.get("epoch")) != epoch:
                continue
            for key in out:
                value = _number(row.get(key))
                if value is not None:
                    out[key] = value
        return out


def train_summary(layout: RunLayout, stage_entry: dict[str, Any]) -> TrainSummary:
    """Read ``train/metrics.jsonl`` and the train stage's timestamps (a damaged file raises
    :class:`~cruijff_kit.status.DamagedState`)."""
    rows = read_metrics(layout)
    s = TrainSummary(curve=rows)
    train = [(r, v) for r in rows if (v := _number(r.get("train_loss"))) is not None]
    val = [(r, v) for r in rows if (v := _number(r.get("val_loss"))) is not None]
    if train:
        s.final_train_loss = train[-1][1]
        steps = [n for r in rows if (n := _number(r.get("step"))) is not None]
        s.steps = int(max(steps)) if steps else None
    if val:
        s.final_val_loss = val[-1][1]
        best_row, s.best_val_loss = min(val, key=lambda rv: rv[1])  # the first of equal values
        s.best_epoch = _whole(best_row.get("epoch"))
    tps = [v for r in rows if (v := _number(r.get("tokens_per_second")))]
    if tps:
        s.tokens_per_second = float(sum(tps) / len(tps))
    mem = [v for r in rows if (v := _number(r.get("peak_memory_mb")))]
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


def target_epoch(target: str) -> int | None:
    """``epoch_<N>`` -> N; None for ``base``, ``adapter`` and the empty target of a run without eval."""
    prefix, _, number = target.partition("_")
    return int(number) if prefix == "epoch" and number.isdigit() else None


def training_cells(target: str, train: TrainSummary | None) -> dict[str, Any]:
    """The training columns of a row of ``target``: for ``epoch_<N>`` that epoch's losses and the
    run-level columns; for a run without eval (target ``""``) the run-level columns; for ``base``
    and ``adapter`` (no training of this run is in them) nothing."""
    if train is None:
        return {}
    epoch = target_epoch(target)
    if epoch is not None:
        return {**train.epoch_losses(epoch), **train.run_columns()}
    if target == "":
        return train.run_columns()
    return {}


def build_row(*, run: str, run_type: str, sweep: dict[str, Any], task: str, target: str, state: str | None,
              values: dict[str, float], train: TrainSummary | None, shared: str | None = None) -> dict[str, Any]:
    """One row of the table: a run x eval task x target (task and target empty for a run without eval).
    ``shared``: the ``shared/<name>`` folder whose result the row shows (a stage several runs share).

    Every column of a row is set here."""
    row: dict[str, Any] = {"run": run, "type": run_type, **sweep, "task": task, "target": target, "state": state,
                           "shared": shared}
    row.update(values)
    row.update(training_cells(target, train))
    return row


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
        """Every column, in order: as ``summary.csv`` and ``ck summarize --json`` have them."""
        cols = ["run", "type", *self.swept, "task", "target", "state", "shared", *self.metrics, *TARGET_TRAIN_COLUMNS,
                *RUN_TRAIN_COLUMNS]
        return list(dict.fromkeys(cols))

    def eval_columns(self) -> list[str]:
        """The columns of the eval table of ``summary.md`` (one row per run x task x target)."""
        run_level = set(RUN_TRAIN_COLUMNS) - set(self.metrics)
        return [c for c in self.columns() if c not in run_level]

    def train_rows(self) -> list[dict[str, Any]]:
        """One row per run with training values: run, type, sweep values and the run-level columns."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.rows:
            if r["run"] in out or not any(r.get(c) is not None for c in RUN_TRAIN_COLUMNS):
                continue
            out[r["run"]] = {k: r.get(k) for k in ("run", "type", *self.swept, *RUN_TRAIN_COLUMNS)}
        return list(out.values())


def collect(exp: ExperimentLayout) -> Summary:
    """Gather every run's sweep values, stage states, training and eval metrics."""
    rows: list[dict[str, Any]] = []
    swept: list[str] = []
    metrics: list[str] = []
    curves: dict[str, list[dict[str, Any]]] = {}
    risk: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    damaged: list[str] = []
    # each shared folder's status.json and results.json, read once for all the runs that point to it
    shared_states: dict[Path, dict[str, Any]] = {}
    shared_results: dict[Path, dict[str, Any]] = {}
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
        ts: TrainSummary | None = None
        if spec.get("train"):
            ts, _ = _read_part(damaged, TrainSummary(), train_summary, layout, stages.get("train", {}))
        if ts is not None and ts.curve:
            curves[layout.name] = ts.curve
        results, results_lost = _read_part(damaged, {}, read_results, layout)
        eval_stages = [s for s in meta.get("stages", []) if s.startswith("eval.")]
        if not eval_stages or (ts is not None and not any(target_epoch(s.rsplit(".", 1)[-1]) is not None
                                                          for s in eval_stages)):
            eval_stages.append("(train only)")  # no epoch_N row holds this run's training: a row of its own
        for st in eval_stages:
            task, target = (st.split(".", 2)[1:] if st.startswith("eval.") else ("", ""))
            state = stages.get(st, {}).get("state", status.PENDING) if task else stages.get("train", {}).get("state")
            entry, where, shared, lost = {}, layout, None, states_lost
            if task and not states_lost:  # a shared stage: its state and result live in its shared folder
                try:
                    found = resolve_entry(layout.root, st, stages.get(st, {}), shared_states)
                    state, where, shared = found.entry.get("state", status.PENDING), found.layout, found.shared
                    if not results_lost:
                        entry, _ = resolve_results(layout, results, task, target, shared_results)
                except DamagedState as exc:
                    damaged.append(str(exc))
                    lost = True
            if lost or (results_lost and task):
                state = status.DAMAGED
            elif task and state == status.DONE and not entry:
                state = "result missing"
                damaged.append(f"{where.results}: no result for the finished stage {st} of run {layout.name}"
                               f"{f' (shared: {shared})' if shared else ''}. `ck run SPEC` evaluates it again.")
            values = flatten_metrics(entry)
            for scorer, bins in (entry.get("calibration") or {}).items():
                risk[(layout.name, task, target, scorer)] = {"calibration": bins, "shared": shared,
                                                             "roc": (entry.get("roc") or {}).get(scorer, [])}
            metrics += [m for m in values if m not in metrics]
            rows.append(build_row(run=layout.name, run_type=meta.get("type", ""), sweep=sweep, task=task,
                                  target=target, state=state, values=values, train=ts, shared=shared))
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


def _shown_width(cell: Any) -> int:
    """Characters a cell takes on the terminal (bold markers are not shown)."""
    text = fmt(cell)
    return len(text) - 4 if text.startswith("**") and text.endswith("**") and len(text) > 4 else len(text)


def split_columns(cols: list[str], body: list[list[Any]], keys: tuple[str, ...], width: int | None
                  ) -> list[list[int]]:
    """Indexes of ``cols`` per table, so that each table fits ``width`` characters on a terminal.

    Every table starts with the ``keys`` columns (which name a row); the other columns follow in
    order, as many as fit. ``width`` None: one table with every column. A column is never cut."""
    if width is None:
        return [list(range(len(cols)))]
    # rich draws a markdown table with one space at each edge and two between columns
    need = [max([len(c), *(_shown_width(row[i]) for row in body)]) + 2 for i, c in enumerate(cols)]
    key_idx = [i for i, c in enumerate(cols) if c in keys]
    groups: list[list[int]] = []
    current = list(key_idx)
    used = 2 + sum(need[i] for i in current)
    for i in range(len(cols)):
        if i in key_idx:
            continue
        if used + need[i] > width and len(current) > len(key_idx):
            groups.append(current)
            current, used = list(key_idx), 2 + sum(need[k] for k in key_idx)
        current.append(i)
        used += need[i]
    groups.append(current)
    return groups


def _tables(cols: list[str], body: list[list[Any]], keys: tuple[str, ...], width: int | None) -> list[str]:
    """Markdown tables of ``cols`` x ``body``: one, or several that fit ``width`` (see :func:`split_columns`)."""
    out = []
    for group in split_columns(cols, body, keys, width):
        out += [markdown_table([cols[i] for i in group], [[row[i] for i in group] for row in body]), ""]
    return out


def _filled(columns: list[str], rows: list[dict[str, Any]]) -> list[str]:
    """The columns that have a value in at least one row."""
    return [c for c in columns if any(r.get(c) not in (None, "") for r in rows)]


def to_markdown(summary: Summary, width: int | None = None) -> str:
    """``summary.md``: the eval table (one row per run x task x target, the best value per metric and
    task in bold), then the training table (one row per run, for the run-level columns).

    With ``width`` (a terminal's), a table wider than that is split into tables that fit, each
    repeating the columns that name a row, so that no column name or value is cut."""
    cols = _filled(summary.eval_columns(), summary.rows)
    body = [[_cell(summary, r, c, True) for c in cols] for r in summary.rows]
    lines = [f"# Summary: {summary.experiment}", "", "## Evaluations (one row per run x task x target)", "",
             *_tables(cols, body, EVAL_KEYS, width)]
    train_rows = summary.train_rows()
    if train_rows:
        tcols = _filled(["run", "type", *summary.swept, *RUN_TRAIN_COLUMNS], train_rows)
        tbody = [[r.get(c) if r.get(c) is not None else "" for c in tcols] for r in train_rows]
        lines += ["## Training (one row per run)", "", *_tables(tcols, tbody, TRAIN_KEYS, width)]
    missing = [r for r in summary.rows if r.get("state") != status.DONE]
    if missing:
        lines += [f"{len(missing)} stage(s) not done: " + ", ".join(
            f"{r['run']} {r['task'] + '/' + r['target'] if r['task'] else 'train'} ({r['state']})"
            for r in missing), ""]
    if summary.damaged:
        lines += ["Missing from this summary (damaged state files):", "",
                  *(f"- {line}" for line in summary.damaged), ""]
    lines.append("Bold: best value of each metric per task (lowest for losses, errors and token_amount). "
                 "val_loss, train_loss: the losses logged at the end of the epoch an epoch_N row evaluates "
                 "(none for base and adapter rows). The training table holds each run's values once: "
                 "best_val_loss and the best_epoch it was logged in, the final losses, steps, duration_s, "
                 "tokens_per_second, peak_memory_mb."
                 + (" shared: a stage several runs share (the same evaluation of the same model), computed once "
                    "in that folder of the experiment and shown on each run's row." if any(
                        r.get("shared") for r in summary.rows) else ""))
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
