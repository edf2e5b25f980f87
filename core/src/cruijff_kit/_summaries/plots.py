"""PNG plots for ``ck summarize`` (matplotlib, imported only here)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cruijff_kit._base.errors import CkError
from cruijff_kit._summaries.metrics import lower_is_better

if TYPE_CHECKING:  # pragma: no cover - typing only
    from cruijff_kit._summaries.summarize import Summary


def _plt() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise CkError(
            "ck summarize draws its plots with matplotlib, which is not installed. Install the plots extra "
            'with `pip install "cruijff-kit[plots]"`, or pass `--no-plots` to write only summary.md and summary.csv.'
        ) from exc

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curves(summary: Summary, out: Path) -> Path | None:
    """Train (solid) and validation (dashed) loss against step, one colour per run."""
    if not summary.curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = itertools.cycle(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    for run, rows in sorted(summary.curves.items()):
        c = next(colors)
        tr = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
        va = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
        if tr:
            ax.plot(*zip(*tr, strict=True), color=c, label=f"{run} train")
        if va:
            ax.plot(*zip(*va, strict=True), color=c, linestyle="--", marker="o", label=f"{run} val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{summary.experiment}: loss curves")
    ax.legend(fontsize="small", loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "loss_curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def metric_vs_param(summary: Summary, out: Path) -> list[Path]:
    """Each eval metric against each swept parameter; one line per combination of the others."""
    plt = _plt()
    paths: list[Path] = []
    numeric_params = [p for p in summary.swept
                      if all(isinstance(r.get(p), int | float) for r in summary.rows if p in r)]
    for task in sorted({r["task"] for r in summary.rows if r["task"]}):
        rows = [r for r in summary.rows if r["task"] == task]
        for metric in summary.metrics:
            if not any(isinstance(r.get(metric), float) for r in rows):
                continue
            for param in numeric_params:
                others = [p for p in summary.swept if p != param]
                fig, ax = plt.subplots(figsize=(7, 4.5))
                tuned = [r for r in rows if r["target"] != "base" and isinstance(r.get(metric), float)]
                groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
                for r in tuned:
                    groups.setdefault(tuple((o, r.get(o)) for o in others) + (("target", r["target"]),), []).append(r)
                for key, grp in sorted(groups.items(), key=lambda kv: str(kv[0])):
                    pts = sorted((r[param], r[metric]) for r in grp if r.get(param) is not None)
                    if not pts:
                        continue
                    label = ", ".join(f"{k}={v}" for k, v in key) or metric
                    ax.plot(*zip(*pts, strict=True), marker="o", label=label)
                for label, value in base_lines(rows, metric):
                    ax.axhline(value, color="grey", linestyle=":", label=label)
                ax.set_xlabel(param)
                ax.set_ylabel(f"{metric} ({'lower' if lower_is_better(metric) else 'higher'} is better)")
                ax.set_title(f"{task}: {metric} vs {param}")
                ax.grid(alpha=0.3)
                ax.legend(fontsize="small")
                fig.tight_layout()
                safe = f"{task}_{metric}_vs_{param}".replace("/", "-").replace(" ", "_")
                path = out / f"{safe}.png"
                fig.savefig(path, dpi=120)
                plt.close(fig)
                paths.append(path)
    return paths


def base_lines(rows: list[dict[str, Any]], metric: str) -> list[tuple[str, float]]:
    """One (label, value) per distinct base-model evaluation among ``rows``: a shared one once (marked,
    with how many runs share it), each run's own by its run; never an average of different evaluations."""
    seen: dict[str, tuple[str, float, int]] = {}
    for r in rows:
        if r["target"] != "base" or not isinstance(r.get(metric), float):
            continue
        key = r.get("shared") or r["run"]
        label, value, n = seen.get(key, ("", r[metric], 0))
        seen[key] = (label, value, n + 1)
    if len(seen) == 1 and not next(iter(seen)).startswith("shared/"):
        return [("base model", next(iter(seen.values()))[1])]
    return [(f"base model (shared by {n} runs)" if key.startswith("shared/") else f"base model ({key})", value)
            for key, (_, value, n) in seen.items()]


def risk_plots(summary: Summary, out: Path) -> list[Path]:
    """For each task and risk scorer: a reliability diagram and a ROC curve, one line per run x target."""
    plt = _plt()
    paths: list[Path] = []
    groups: dict[tuple[str, str], list[tuple[str, str, dict[str, Any]]]] = {}
    for (run, task, target, scorer), data in sorted(summary.risk.items()):
        groups.setdefault((task, scorer), []).append((run, target, data))
    for (task, scorer), items in groups.items():
        fig, (rel, roc) = plt.subplots(1, 2, figsize=(11, 5))
        drawn: set[str] = set()
        for run, target, data in items:
            pts = [(b["mean_predicted"], b["observed"]) for b in data["calibration"] if b.get("count")]
            label = f"{run} {target}"
            if data.get("shared"):  # one evaluation several runs share: one line, marked
                if data["shared"] in drawn:
                    continue
                drawn.add(data["shared"])
                n = sum(1 for _, _, d in items if d.get("shared") == data["shared"])
                label = f"{target} (shared by {n} runs)"
            if pts:
                rel.plot(*zip(*pts, strict=True), marker="o", label=label)
            if data.get("roc"):
                roc.plot(*zip(*data["roc"], strict=True), label=label)
        for ax, title, xl, yl in ((rel, "reliability diagram", "mean predicted risk", "observed frequency"),
                                  (roc, "ROC curve", "false positive rate", "true positive rate")):
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="ideal" if ax is rel else "chance")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)
            ax.set_title(f"{task} / {scorer}: {title}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="x-small")
        fig.tight_layout()
        path = out / f"{task}_{scorer}_calibration_roc.png".replace("/", "-")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def write_plots(summary: Summary, out: Path) -> list[Path]:
    """Every plot that the summary has data for."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [p for p in [loss_curves(summary, out)] if p]
    paths += metric_vs_param(summary, out)
    paths += risk_plots(summary, out)
    return paths
