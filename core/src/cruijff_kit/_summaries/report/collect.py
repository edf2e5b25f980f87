"""What ``report.html`` shows, gathered from the artifact contract into one JSON-ready mapping.

The table, best values, shared stages, loss curves and calibration bins are those of ``ck summarize``
(:func:`cruijff_kit._summaries.summarize.collect`); this module adds what only the page shows: the
spec, confusion matrices, stage states with the tail of their error logs, the environment manifests,
the eval and stage logs, and the reward components of a multi-turn simulation.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

from cruijff_kit import status
from cruijff_kit._base.layout import ExperimentLayout, RunLayout, folders_in
from cruijff_kit._base.secrets import scrub
from cruijff_kit._engine.damage import read_results
from cruijff_kit._engine.shared import pointer_of, resolve_results
from cruijff_kit._summaries.metrics import lower_is_better
from cruijff_kit._summaries.summarize import Summary, collect
from cruijff_kit.status import DamagedState

#: Points kept per curve (a run's train or validation loss, a ROC curve): every k-th one and the last.
MAX_CURVE_POINTS = 400
#: Significant digits of the numbers of curves, calibration bins and ROC points (the table keeps all).
DIGITS = 5
#: Lines of a failed stage's error log shown on the page.
ERROR_TAIL_LINES = 30
#: Files of an eval target's folder linked as its logs.
EVAL_LOG_SUFFIXES = (".eval", ".json")


def _finite(value: Any) -> bool:
    """True for an int or float (not a bool) that is finite."""
    return type(value) in (int, float) and math.isfinite(value)


def _num(value: Any) -> float | None:
    """A finite number rounded to :data:`DIGITS` significant digits, else None."""
    return float(f"{value:.{DIGITS}g}") if _finite(value) else None


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to the experiment folder (the page lies there), as a URL path."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_uri()


def thin(points: list[Any], limit: int = MAX_CURVE_POINTS) -> list[Any]:
    """At most ``limit`` of ``points``: every k-th one and always the last one."""
    if len(points) <= limit:
        return points
    step = math.ceil(len(points) / (limit - 1))
    return [*points[::step][: limit - 1], points[-1]]


def _columns(pairs: list[tuple[Any, Any]], x: str, y: str) -> dict[str, list[float]]:
    """Thinned ``(x, y)`` pairs as two lists, rounded to :data:`DIGITS` digits (compact JSON)."""
    kept = thin(pairs)
    return {x: [float(f"{a:.{DIGITS}g}") for a, _ in kept], y: [float(f"{b:.{DIGITS}g}") for _, b in kept]}


def curves(summary: Summary) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Per run: ``train`` and ``val`` as ``{"step": [...], "loss": [...]}`` (thinned and rounded)."""
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for run, rows in sorted(summary.curves.items()):
        series = {}
        for key, name in (("train_loss", "train"), ("val_loss", "val")):
            pairs = [(s, v) for r in rows if _finite(s := r.get("step")) and _finite(v := r.get(key))]
            series[name] = _columns(pairs, "step", "loss")
        if series["train"]["step"] or series["val"]["step"]:
            out[run] = series
    return out


def risk(summary: Summary) -> list[dict[str, Any]]:
    """Per run x task x target x risk scorer: the reliability-diagram bins that hold samples (mean
    predicted risk ``p``, observed frequency ``o``, count ``n``) and the ROC curve (``fpr``, ``tpr``)."""
    out = []
    for (run, task, target, scorer), d in sorted(summary.risk.items()):
        bins = [b for b in d.get("calibration") or [] if isinstance(b, dict) and b.get("count")
                and _finite(b.get("mean_predicted")) and _finite(b.get("observed"))]
        roc = [(p[0], p[1]) for p in d.get("roc") or [] if isinstance(p, list | tuple) and len(p) == 2
               and _finite(p[0]) and _finite(p[1])]
        out.append({"run": run, "task": task, "target": target, "scorer": scorer, "shared": d.get("shared"),
                    "bins": {"p": [_num(b["mean_predicted"]) for b in bins], "o": [_num(b["observed"]) for b in bins],
                             "n": [b["count"] for b in bins]},
                    "roc": _columns(roc, "fpr", "tpr")})
    return out


def _where(exp: ExperimentLayout, row: dict[str, Any]) -> RunLayout:
    """The folder that holds a row's evaluation: its shared folder or its run's."""
    return RunLayout(exp.root / row["shared"]) if row.get("shared") else exp.run(row["run"])


def eval_logs(exp: ExperimentLayout, row: dict[str, Any]) -> dict[str, Any] | None:
    """The logs of a row's evaluation: the files of its target folder and the ``inspect view`` command."""
    if not row.get("task"):
        return None
    folder = _where(exp, row).eval_dir(row["task"], row["target"])
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in EVAL_LOG_SUFFIXES)
    if not files:
        return None
    return {"files": [_rel(p, exp.root) for p in files],
            "view": f"inspect view --log-dir {shlex.quote(str(folder))}"}


def result_extras(exp: ExperimentLayout, summary: Summary, damaged: list[str]) -> list[dict[str, Any]]:
    """Confusion matrices of classification scorers, one entry per run x task x target x scorer
    (a shared evaluation once)."""
    out: list[dict[str, Any]] = []
    cache: dict[Path, dict[str, Any]] = {}
    seen: set[tuple[str, str, str, str]] = set()
    results_of: dict[str, dict[str, Any]] = {}
    for row in summary.rows:
        if not row.get("task") or row.get("state") != status.DONE:
            continue
        layout = exp.run(row["run"])
        try:
            if row["run"] not in results_of:
                results_of[row["run"]] = read_results(layout)
            entry, ptr = resolve_results(layout, results_of[row["run"]], row["task"], row["target"], cache)
        except DamagedState as exc:  # ck summarize already lists it; said once here too
            damaged.append(str(exc))
            results_of[row["run"]] = {}
            continue
        for scorer, cm in (entry.get("confusion_matrix") or {}).items():
            key = (ptr or row["run"], row["task"], row["target"], scorer)
            if key in seen or not isinstance(cm, dict):
                continue
            seen.add(key)
            out.append({"run": row["run"], "task": row["task"], "target": row["target"], "scorer": scorer,
                        "shared": ptr, "labels": [str(x) for x in cm.get("labels") or []],
                        "matrix": cm.get("matrix") or []})
    return out


def _stage_entry(exp: ExperimentLayout, layout: RunLayout, folder: str, stage: str,
                 entry: dict[str, Any]) -> dict[str, Any]:
    """One stage of the page's stage table (a pointer to a shared folder is shown as such)."""
    ptr = pointer_of(entry)
    out: dict[str, Any] = {"folder": folder, "run": layout.name, "stage": stage, "shared": ptr}
    if ptr is not None:
        out["state"] = "shared"
        return out
    out.update({k: entry.get(k) for k in ("state", "started", "ended", "exit_code", "attempts", "job_id")})
    out["logs"] = [_rel(p, exp.root) for p in (layout.log(stage, "out"), layout.log(stage, "err")) if p.is_file()]
    if entry.get("state") in (status.FAILED, status.INTERRUPTED, status.CANCELLED):
        out["error"] = entry.get("error")
        out["error_tail"] = entry.get("error_tail")
        out["log_tail"] = status.tail(layout.log(stage, "err"), ERROR_TAIL_LINES)
    return out


def stages(exp: ExperimentLayout, damaged: list[str]) -> list[dict[str, Any]]:
    """Every stage of every run folder and shared folder, with its state, times and logs."""
    out: list[dict[str, Any]] = []
    for parent, kind in ((exp.runs_dir, "runs"), (exp.shared_dir, "shared")):
        for layout in folders_in(parent):
            folder = f"{kind}/{layout.name}"
            try:
                entries = status.read(layout.root).get("stages", {})
            except DamagedState as exc:
                damaged.append(str(exc))
                out.append({"folder": folder, "run": layout.name, "stage": "(all)", "state": status.DAMAGED,
                            "error": str(exc)})
                continue
            out += [_stage_entry(exp, layout, folder, name, e) for name, e in entries.items()]
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def environment(exp: ExperimentLayout) -> dict[str, Any]:
    """The environment manifests (``env.json``) of the runs: the first one in full (its last stage's
    host, python, platform, hardware) and every package or setting whose value differs between runs."""
    envs: dict[str, dict[str, Any]] = {}
    for layout in [*folders_in(exp.runs_dir), *folders_in(exp.shared_dir)]:
        env = _read_json(layout.env)
        if env is not None:
            envs[layout.name] = env
    if not envs:
        return {}
    first_run, first = next(iter(envs.items()))
    stage_infos = [s for s in (first.get("stages") or {}).values() if isinstance(s, dict)]
    last = stage_infos[-1] if stage_infos else {}
    manifest = {"from": first_run, "seed": first.get("seed"), "git_commit": first.get("git_commit"),
                "packages": first.get("packages") or {},
                **{k: last.get(k) for k in ("host", "python", "platform", "hardware")}}
    values: dict[str, dict[str, list[str]]] = {}
    for run, env in envs.items():
        flat = {**{f"packages.{k}": v for k, v in (env.get("packages") or {}).items()},
                "git_commit": env.get("git_commit")}
        for info in (env.get("stages") or {}).values():
            if isinstance(info, dict):
                flat.update({k: info.get(k) for k in ("python", "platform")})
        for key, value in flat.items():
            values.setdefault(key, {}).setdefault(json.dumps(value, default=str), []).append(run)
    differs = {k: [{"value": json.loads(v), "runs": runs} for v, runs in by_value.items()]
               for k, by_value in values.items() if len(by_value) > 1}
    return scrub({"manifest": manifest, "differs": differs, "runs": len(envs)})


def rewards(exp: ExperimentLayout) -> dict[str, Any] | None:
    """Mean reward components of a multi-turn simulation (``simulate/conversations.jsonl`` in the
    experiment folder) per turn: over the chosen candidates and over all candidates. None without one."""
    path = exp.root / "simulate" / "conversations.jsonl"
    if not path.is_file():
        return None
    chosen: dict[int, dict[str, list[float]]] = {}
    every: dict[int, dict[str, list[float]]] = {}
    conversations = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                conv = json.loads(line)
            except ValueError:
                continue  # a torn last line (an append cut short): skipped, as the simulator's readers do
            if not isinstance(conv, dict):
                continue
            conversations += 1
            for turn in conv.get("turns") or []:
                if not isinstance(turn, dict):
                    continue
                tid = turn.get("turn_id", 0)
                for i, cand in enumerate(turn.get("candidates") or []):
                    if not isinstance(cand, dict):
                        continue
                    parts = {k: v for k, v in (cand.get("rewards") or {}).items() if _num(v) is not None}
                    if _num(cand.get("score")) is not None:
                        parts["score"] = cand["score"]
                    for target in ([every, chosen] if i == turn.get("chosen") else [every]):
                        for k, v in parts.items():
                            target.setdefault(tid, {}).setdefault(k, []).append(float(v))

    def means(by_turn: dict[int, dict[str, list[float]]]) -> list[dict[str, Any]]:
        return [{"turn": t, "n": max(len(v) for v in comps.values()),
                 "means": {k: _num(sum(v) / len(v)) for k, v in comps.items()}}
                for t, comps in sorted(by_turn.items())]

    components = sorted({k for comps in every.values() for k in comps})
    return {"file": _rel(path, exp.root), "conversations": conversations, "components": components,
            "chosen": means(chosen), "all": means(every)}


def _journal_rows(path: Path) -> list[dict[str, Any]]:
    """The conversations of a multi-turn evaluation's ``conversations.jsonl``: the last row of each
    ``conv_id`` among the rows of the newest settings (the ``fingerprint`` of the last row, when rows
    carry one); a torn or foreign line is skipped."""
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("scores"), dict):
                rows.append(row)
    if rows and "fingerprint" in rows[-1]:
        rows = [r for r in rows if r.get("fingerprint") == rows[-1]["fingerprint"]]
    return list({str(r.get("conv_id", i)): r for i, r in enumerate(rows)}.values())


def eval_rewards(exp: ExperimentLayout, summary: Summary) -> list[dict[str, Any]]:
    """The reward components of each multi-turn evaluation (a target folder holding the
    ``conversations.jsonl`` the evaluation appends each scored conversation to): per run x task x
    target (a shared evaluation once), the mean of each score over the conversations and the mean
    number of turns."""
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str, str]] = set()
    for row in summary.rows:
        if not row.get("task"):
            continue
        key = (row.get("shared") or row["run"], row["task"], row["target"])
        path = _where(exp, row).eval_dir(row["task"], row["target"]) / "conversations.jsonl"
        if key in seen or not path.is_file():
            continue
        seen.add(key)
        convs = _journal_rows(path)
        if not convs:
            continue
        sums: dict[str, list[float]] = {}
        for conv in convs:
            for name, value in conv["scores"].items():
                if _num(value) is not None:
                    sums.setdefault(name, []).append(float(value))
        turns = [float(c["num_turns"]) for c in convs if _num(c.get("num_turns")) is not None]
        out.append({"run": row["run"], "task": row["task"], "target": row["target"], "shared": row.get("shared"),
                    "conversations": len(convs), "file": _rel(path, exp.root),
                    "num_turns": _num(sum(turns) / len(turns)) if turns else None,
                    "means": {k: _num(sum(v) / len(v)) for k, v in sums.items()}})
    return out


def _value_order(value: Any) -> tuple[int, Any]:
    """Numbers in order, then other values by their text, then None (a run the parameter was not set in)."""
    if value is None:
        return (2, "")
    if type(value) in (int, float):
        return (0, value)
    return (1, json.dumps(value, sort_keys=True, default=str))


def sweep_values(summary: Summary) -> dict[str, list[Any]]:
    """Each swept parameter and the values it took, sorted."""
    out: dict[str, list[Any]] = {}
    for p in summary.swept:
        seen: list[Any] = []
        for r in summary.rows:
            if r.get(p) not in seen:
                seen.append(r.get(p))
        out[p] = sorted(seen, key=_value_order)
    return out


def report_data(exp: ExperimentLayout) -> dict[str, Any]:
    """Everything ``report.html`` shows, as one JSON-ready mapping."""
    summary = collect(exp)
    damaged = list(summary.damaged)
    cols = [c for c in summary.columns() if any(r.get(c) not in (None, "") for r in summary.rows)]
    rows = []
    for r in summary.rows:
        row = {c: r.get(c) for c in cols}
        logs = eval_logs(exp, r)
        if logs:
            row["_logs"] = logs
        rows.append(row)
    spec_text = exp.spec.read_text(encoding="utf-8", errors="replace") if exp.spec.is_file() else ""
    data = {
        "experiment": summary.experiment,
        "root": str(exp.root),
        "generated": status.now(),
        "spec": scrub(spec_text),
        "plan": _rel(exp.plan, exp.root) if exp.plan.is_file() else None,
        "sweep": sweep_values(summary),
        "columns": cols,
        "metrics": [m for m in summary.metrics if m in cols],
        "lower": [m for m in summary.metrics if lower_is_better(m)],
        "best": summary.best,
        "rows": rows,
        "curves": curves(summary),
        "risk": risk(summary),
        "confusion": result_extras(exp, summary, damaged),
        "stages": stages(exp, damaged),
        "env": environment(exp),
        "rewards": rewards(exp),
        "eval_rewards": eval_rewards(exp, summary),
    }
    data["damaged"] = list(dict.fromkeys(damaged))
    return data
