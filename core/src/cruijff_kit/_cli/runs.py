"""The engine's run commands: ``ck validate``, ``plan``, ``run``, ``status``, ``logs``, ``cancel``, ``reset``,
``stage``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cruijff_kit._base.errors import CkError, ExitCode, SpecError
from cruijff_kit._cli.common import (
    ALLOW_LARGE_SWEEP_HELP,
    ALLOW_MANY_EPOCHS_HELP,
    SET_HELP,
    console,
    json_flag,
    json_output,
    load,
)


def confirmations(command: Any) -> Any:
    """The flags that confirm a plan past the sane limits (a huge sweep, very many epochs)."""
    command = click.option("--allow-many-epochs", is_flag=True, help=ALLOW_MANY_EPOCHS_HELP)(command)
    return click.option("--allow-large-sweep", is_flag=True, help=ALLOW_LARGE_SWEEP_HELP)(command)


def plan_document(plan: Any, *, estimates: bool = False) -> dict[str, Any]:
    """The keys ``ck validate --json`` and ``ck plan --json`` print about a plan (docs/cli.md)."""
    from dataclasses import asdict

    from cruijff_kit._engine.shared import used_by

    runs = []
    for run in plan.runs:
        row: dict[str, Any] = {"name": run.name, "type": run.type, "dir": str(run.layout.root),
                               "sweep": run.sweep_values, "stages": [s.name for s in run.stages],
                               "shared_stages": {s.name: f"shared/{plan.pointers[(run.name, s.name)]}"
                                                 for s in run.stages if (run.name, s.name) in plan.pointers}}
        if estimates:
            check = plan.truncation.get(run.name)
            row.update(estimate=asdict(run.estimate) if run.estimate is not None else None,
                       columns=run.plan_columns, truncation=check.summary() if check is not None else None)
        runs.append(row)
    return {"ok": True, "exit_code": int(ExitCode.OK), "spec": str(plan.loaded.file), "experiment": plan.experiment,
            "experiment_dir": str(plan.layout.root), "run_count": len(plan.runs),
            "stage_count": len(plan.jobs()), "swept": plan.swept_keys(), "runs": runs,
            "shared": [{"name": sh.name, "stage": sh.stages[0].name, "dir": str(sh.layout.root),
                        "used_by": used_by(sh.spec)} for sh in plan.shared],
            "notes": list(plan.notes)}


def show_notes(plan: Any) -> None:
    """The plan's notes (e.g. a hub model that is not downloaded yet) on stderr."""
    for note in plan.notes:
        click.echo(f"Note: {note}", err=True)


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, help=SET_HELP)
@confirmations
@json_flag
def validate(spec: str, sets: tuple[str, ...], allow_large_sweep: bool, allow_many_epochs: bool,
             as_json: bool) -> None:
    """Check SPEC: its keys, every plugin's options, the files it names, and plan-time checks."""
    from cruijff_kit._engine.planner import make_plan

    with json_output(as_json) as emit:
        plan = make_plan(load(spec, sets), allow_large_sweep=allow_large_sweep, allow_many_epochs=allow_many_epochs)
        emit(plan_document(plan))
    if not as_json:
        show_notes(plan)
        if _simulate_only(plan):
            click.echo(f"{spec}: valid. No runs: the spec holds only a `simulate:` section (`ck simulate {spec}`).")
            return
        click.echo(f"{spec}: valid. {len(plan.runs)} run(s), {sum(len(r.stages) for r in plan.runs)} stage(s).")


def _simulate_only(plan: Any) -> bool:
    """A spec with a ``simulate:`` section and no dataset: ``ck simulate`` runs it, there are no runs."""
    return plan.loaded.model.dataset is None


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, help=SET_HELP)
@click.option("--no-write", is_flag=True, help="Print the plan without writing plan.md.")
@confirmations
@json_flag
def plan(spec: str, sets: tuple[str, ...], no_write: bool, allow_large_sweep: bool, allow_many_epochs: bool,
         as_json: bool) -> None:
    """Expand the sweep into runs, estimate each, write and print plan.md."""
    from rich.markdown import Markdown

    from cruijff_kit._base.fileio import atomic_write_text
    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.report import plan_markdown

    with json_output(as_json) as emit:
        p = make_plan(load(spec, sets), estimate=True, allow_large_sweep=allow_large_sweep,
                      allow_many_epochs=allow_many_epochs)
        text = plan_markdown(p)
        no_write = no_write or _simulate_only(p)
        if not no_write:
            atomic_write_text(p.layout.plan, text)
        emit({**plan_document(p, estimates=True), "plan_file": None if no_write else str(p.layout.plan)})
    if as_json:
        return
    show_notes(p)
    if _simulate_only(p):
        click.echo(f"No runs: the spec holds only a `simulate:` section (`ck simulate {spec}`).")
        return
    # a terminal table of a thousand rows helps nobody: the file has them all
    console().print(Markdown(text if len(p.runs) <= 50 or no_write else plan_markdown(p, max_rows=20)))
    if not no_write:
        click.echo(f"Wrote {p.layout.plan}")


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, help=SET_HELP)
@click.option("--scheduler", help="Use this scheduler plugin instead of the spec's (local, slurm, runpod...).")
@click.option("--force", is_flag=True, help="Redo stages that already finished.")
@click.option("--dry-run", is_flag=True, help="Write run folders (and job scripts) without starting anything.")
@click.option("--retry-failed", is_flag=True, default=None,
              help="Submit failed (and timed-out) stages again; cluster schedulers only do so when asked.")
@confirmations
@json_flag
def run(spec: str, sets: tuple[str, ...], scheduler: str | None, force: bool, dry_run: bool,
        retry_failed: bool | None, allow_large_sweep: bool, allow_many_epochs: bool, as_json: bool) -> None:
    """Run every stage of SPEC's runs; finished stages are skipped, interrupted ones resume."""
    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.runner import run_plan

    with json_output(as_json) as emit:
        p = make_plan(load(spec, sets, scheduler), allow_large_sweep=allow_large_sweep,
                      allow_many_epochs=allow_many_epochs)
        if _simulate_only(p):
            raise SpecError("the spec has no runs: it holds only a `simulate:` section.", file=str(p.loaded.file),
                            path="dataset", hint=f"Run it with `ck simulate {spec}`; add `dataset:` (and `train:` "
                                                 "or `eval:`) for runs.")
        sel = run_plan(p, force=force, dry_run=dry_run, retry_failed=retry_failed or None)
        blocking = bool(p.runs) and p.runs[0].scheduler().blocking
        bad = _unfinished_rows(p.layout) if blocking and not dry_run else []
        code = ExitCode.STAGE_FAILED if bad else ExitCode.OK
        emit({"ok": code == ExitCode.OK, "exit_code": int(code), "experiment": p.experiment,
              "experiment_dir": str(p.layout.root), "run_count": len(p.runs), "dry_run": dry_run,
              "submitted": [{"run": j.run_name, "stage": j.stage} for j in sel.jobs],
              "already_done": sel.skipped_done, "still_running": sel.skipped_active,
              "failed_not_retried": sel.skipped_failed, "waiting": sel.skipped_waiting, "held_by": sel.held_by,
              "unfinished": [{k: r.get(k) for k in ("run", "stage", "state", "error")} for r in bad]})
    if not as_json:
        _say_run(p, sel, dry_run, bad)
    if bad:
        sys.exit(code)


def _say_run(p: Any, sel: Any, dry_run: bool, bad: list[dict[str, Any]]) -> None:
    """What ``ck run`` did, as lines (stdout) and the stages that failed (stderr)."""
    msg = (f"{p.experiment}: {len(p.runs)} run(s); {len(sel.jobs)} stage(s) "
           f"{'planned (dry run)' if dry_run else 'submitted'}, {sel.skipped_done} already done, "
           f"{sel.skipped_active} still running.")
    click.echo(msg)
    if sel.skipped_failed:
        click.echo(f"{sel.skipped_failed} failed stage(s) not submitted again: see `ck status`, then "
                   "`ck run --retry-failed` to retry them.")
    if sel.skipped_waiting:
        click.echo(f"{sel.skipped_waiting} stage(s) wait for stages still running from an earlier `ck run`; "
                   "run the same command again when those are done.")
    if sel.held_by:
        click.echo(f"Another `ck run` ({'; '.join(sel.held_by)}) is running this experiment; the stages it "
                   "holds were left to it.")
    click.echo(f"Output: {p.layout.root}")
    for row in bad:
        click.echo(f"{row['state'].upper()} {row['run']} {row['stage']}: {row.get('error') or ''}", err=True)
    if bad:
        click.echo("Fix the cause and run the same command again: finished stages are kept.", err=True)


def _unfinished_rows(layout: Any) -> list[dict[str, Any]]:
    from cruijff_kit._engine.runner import experiment_status

    return [r for r in experiment_status(layout, refresh=False) if r.get("state") in ("failed", "interrupted")]


@click.command()
@click.argument("target", default=".", type=click.Path())
@click.option("--json", "as_json", is_flag=True,
              help="Print the rows (one per run x stage) as one JSON list on stdout; keys in docs/cli.md.")
def status(target: str, as_json: bool) -> None:
    """Runs x stages with their states. TARGET: a spec file or an experiment folder.

    Exits 1 when a stage failed (its row says why), else 0."""
    from cruijff_kit._engine.runner import experiment_status, find_experiment

    with json_output(as_json) as emit:
        exp = find_experiment(target)
        rows = experiment_status(exp)
        warnings = _damage_warnings(exp, rows)
        emit(rows)
    if not as_json:
        _show_status(exp, rows, target)
    for line in warnings:
        click.echo(line, err=True)
    if any(r.get("state") == "failed" for r in rows):
        sys.exit(ExitCode.STAGE_FAILED)


def _show_status(exp: Any, rows: list[dict[str, Any]], target: str) -> None:
    """The table of runs x stages, the stages still billed, and each failure with its log tail."""
    from rich.markup import escape
    from rich.table import Table

    stages = []
    for r in rows:
        if r["stage"] not in stages and r["stage"] is not None:
            stages.append(r["stage"])
    table = Table(title=f"{exp.root.name} ({exp.root})")
    table.add_column("run")
    for s in stages:
        table.add_column(s)
    colors = {"done": "green", "failed": "red", "running": "yellow", "interrupted": "magenta",
              "cancelled": "dim", "submitted": "cyan", "damaged": "bold red"}
    by_run: dict[str, dict[str, str]] = {}
    for r in rows:
        cells = by_run.setdefault(r["run"], {})
        for s in stages if r["stage"] is None else [r["stage"]]:  # None: a run whose stages are unknown
            cells[s] = r.get("state", "pending") + (" (shared)" if r.get("shared") else "")
    for run_name, states in by_run.items():
        cells = [f"[{colors.get(states.get(s, '').split(' ')[0], 'white')}]{states.get(s, '-')}[/]" for s in stages]
        table.add_row(run_name, *cells)
    out = console()
    out.print(table)
    shared = {r["shared"]: r["stage"] for r in rows if r.get("shared")}
    if shared:
        out.print("(shared): the same stage of several runs, run once in " + ", ".join(
            f"{exp.root / folder} ({stage})" for folder, stage in shared.items()))
    live = list(dict.fromkeys(r["live"] for r in rows if r.get("live")))
    if live:
        out.print(f"[bold yellow]Still running and billed ({len(live)}); `ck cancel {target}` stops them:[/]")
        for line in live:
            out.print(f"  [yellow]{escape(line)}[/]")
    told: set[str] = set()
    for r in rows:
        if r.get("state") == "failed":
            if r.get("shared") in told:
                continue  # a shared stage's failure is said once
            if r.get("shared"):
                told.add(r["shared"])
                users = [x["run"] for x in rows if x.get("shared") == r["shared"]]
                out.print(f"[red]{r['shared']} {r['stage']}[/] (shared by {', '.join(users)}): {r.get('error', '')}")
            else:
                out.print(f"[red]{r['run']} {r['stage']}[/]: {r.get('error', '')}")
            if r.get("error_tail"):
                out.print(r["error_tail"], markup=False)


def _damage_warnings(exp: Any, rows: list[dict[str, Any]]) -> list[str]:
    """``Warning:`` lines for damaged state files: one per file, then how many runs they hide. ``ck status``
    still lists every run and a damaged one does not change its exit code (a listing: the rows say
    ``damaged``); only a failed stage makes it exit 1."""
    from cruijff_kit._engine.runner import experiment_damage

    lines = [f"Warning: {line}" for line in experiment_damage(exp)]
    damaged = {r["damaged"]: r for r in rows if r.get("state") == "damaged"}
    lines += [f"Warning: run {r['run']}: {r['error']}" for r in damaged.values()]
    runs = {r["run"] for r in damaged.values()}
    if runs:
        lines.append(f"Warning: {len(runs)} run(s) damaged, shown as `damaged`; the other runs are listed as usual.")
    return lines


@click.command()
@click.argument("target", type=click.Path(exists=True))
@click.argument("names", nargs=-1, shell_complete=lambda ctx, param, incomplete: _complete_logs(ctx, incomplete))
@click.option("-n", "--lines", default=40, show_default=True, help="How many lines of each log.")
def logs(target: str, names: tuple[str, ...], lines: int) -> None:
    """Show the logs of a run's stages: `ck logs RUN_DIR [STAGE]` or `ck logs SPEC|EXPERIMENT RUN [STAGE]`.

    All stages of the run when STAGE is omitted."""
    from cruijff_kit.status import tail

    layout, stage = _logs_target(target, names)
    for line in _run_damage(layout):  # the logs are still shown
        click.echo(f"Warning: {line}", err=True)
    where = {n: layout for n in _logged_stages(layout)}
    where.update(_shared_logs(layout))  # a shared stage's logs are in its shared folder
    if not where:
        raise CkError(f"{layout.root} has no logs/ folder yet: nothing of this run has started.")
    shown = sorted(where)
    if stage:
        if stage not in shown:
            from cruijff_kit._base.errors import did_you_mean

            raise CkError(f"No logs for stage `{stage}` in {layout.root}. {did_you_mean(stage, shown)}")
        shown = [stage]
    for name in shown:
        for stream in ("out", "err"):
            text = tail(where[name].log(name, stream), lines)
            if text:
                click.echo(f"==> {where[name].log(name, stream)} <==")
                click.echo(text)


def _complete_logs(ctx: click.Context, incomplete: str) -> list[str]:
    """Shell completion of ``ck logs``: run names after a spec or experiment, then stage names."""
    target, given = ctx.params.get("target"), tuple(ctx.params.get("names") or ())
    if not target:
        return []
    try:
        from cruijff_kit._base.layout import RunLayout

        path = Path(target).resolve()
        if path.is_dir() and ((path / "status.json").exists() or (path / "logs").is_dir()):
            layout = RunLayout(path)
        elif not given:
            from cruijff_kit._engine.runner import find_experiment

            runs_dir = find_experiment(target).runs_dir
            return sorted(p.name for p in runs_dir.iterdir() if p.is_dir() and p.name.startswith(incomplete))
        else:
            layout, _ = _logs_target(target, given[:1])
        return [n for n in _logged_stages(layout) if n.startswith(incomplete)]
    except (CkError, OSError):  # completion never prints an error into the user's shell
        return []


def _logs_target(target: str, names: tuple[str, ...]) -> tuple[Any, str | None]:
    """(the run's layout, the stage or None) from ``ck logs`` arguments."""
    from cruijff_kit._base.errors import did_you_mean
    from cruijff_kit._base.layout import RunLayout
    from cruijff_kit._engine.runner import find_experiment

    path = Path(target).resolve()
    is_run = path.is_dir() and ((path / "status.json").exists() or (path / "logs").is_dir())
    if is_run:
        if len(names) > 1:
            raise CkError(f"`ck logs RUN_DIR [STAGE]` takes one stage; got {' '.join(names)}.")
        return RunLayout(path), (names[0] if names else None)
    exp = find_experiment(target)
    runs = sorted(p.name for p in exp.runs_dir.iterdir() if p.is_dir()) if exp.runs_dir.is_dir() else []
    if not names or len(names) > 2:
        listed = ", ".join(runs[:20]) + (f" and {len(runs) - 20} more" if len(runs) > 20 else "") or "none yet"
        raise CkError(f"`ck logs {target}` needs a run name (and optionally a stage): `ck logs {target} RUN "
                      f"[STAGE]`. Runs of {exp.root.name}: {listed}.")
    if names[0] not in runs:
        raise CkError(f"No run `{names[0]}` in {exp.runs_dir}. {did_you_mean(names[0], runs)}".rstrip())
    return RunLayout(exp.runs_dir / names[0]), (names[1] if len(names) > 1 else None)


def _logged_stages(layout: Any) -> list[str]:
    """The stages with a log file in a run folder's ``logs/``."""
    if not layout.logs_dir.is_dir():
        return []
    return sorted({p.name.rsplit(".", 1)[0] for p in layout.logs_dir.iterdir() if p.suffix in (".out", ".err")})


def _shared_logs(layout: Any) -> dict[str, Any]:
    """Stage -> the shared folder holding its logs, for the run's shared stages that have logs."""
    from cruijff_kit import status as run_status
    from cruijff_kit._engine.shared import pointer_of, shared_layout

    try:
        entries = run_status.read(layout.root)["stages"]
    except run_status.DamagedState:
        return {}
    out = {}
    for name, entry in entries.items():
        ptr = pointer_of(entry)
        if ptr is not None:
            try:
                shared = shared_layout(layout.root, ptr, layout.status)
            except run_status.DamagedState:
                continue
            if name in _logged_stages(shared):
                out[name] = shared
    return out


def _run_damage(layout: Any) -> list[str]:
    """The messages about a run's damaged state files (its ``spec.yaml``, ``status.json``)."""
    from cruijff_kit import status as run_status
    from cruijff_kit._engine.stage import load_run

    lines = []
    for read in (load_run, run_status.read):
        try:
            read(layout.root)
        except run_status.DamagedState as exc:
            lines.append(str(exc))
        except CkError:
            pass  # not a run folder: the logs say so
    return lines


@click.command()
@click.argument("target", type=click.Path())
@click.argument("stage")
@click.option("--run", "run_name", help="The run, when TARGET is a spec or an experiment folder with several runs.")
def reset(target: str, stage: str, run_name: str | None) -> None:
    """Set one STAGE of a run back to pending, so that the next `ck run` does it again.

    TARGET: a run folder, or a spec file or experiment folder with --run NAME. The stage's outputs
    (train/ or eval/<task>/<target>/ and its entry in results.json) are moved aside to
    `<name>.reset-<time>`, never deleted; resetting `train` also resets the evaluations of its epochs.
    A damaged status.json is moved aside and rebuilt with every stage pending. Refused while the stage
    still runs in a live process or job (`ck cancel` stops it).
    """
    from cruijff_kit._engine.reset import reset_stage, resolve_run_dir
    from cruijff_kit._engine.stage import load_run

    for line in reset_stage(load_run(resolve_run_dir(target, run_name)), stage):
        click.echo(line)
    click.echo("Run `ck run SPEC` to do it again.")


@click.command()
@click.argument("target", type=click.Path())
def cancel(target: str) -> None:
    """Cancel every active stage of an experiment (spec file or experiment folder)."""
    from cruijff_kit._engine.runner import cancel_experiment, find_experiment

    n = cancel_experiment(find_experiment(target))
    click.echo(f"Cancelled {n} stage(s).")


@click.command(hidden=False)
@click.argument("run_dir", type=click.Path())
@click.argument("stages", nargs=-1, required=True)
def stage(run_dir: str, stages: tuple[str, ...]) -> None:
    """Execute STAGE of the run in RUN_DIR (what every scheduler runs).

    Several STAGES run one after another in this one process (the local scheduler does so for the
    evaluations of a run's targets: the libraries load once); each keeps its own claim, state,
    results and logs, and a failed one does not stop the next. Exits 0 only when all are done."""
    from cruijff_kit._engine.stage import Interrupted, filter_output, run_stage, run_stages

    filter_output()  # secret values never reach the stage's logs, whoever prints them
    try:
        if len(stages) == 1:
            run_stage(run_dir, stages[0])
            return
        states = run_stages(run_dir, list(stages))
    except Interrupted as exc:
        click.echo(f"Stage {' '.join(stages)} interrupted ({exc}); `ck run` resumes it.", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    bad = {name: state for name, state in states.items() if state != "done"}
    if bad:
        click.echo("Not done: " + ", ".join(f"{n} ({s})" for n, s in bad.items()) + "; `ck status` says why.",
                   err=True)
        sys.exit(ExitCode.STAGE_FAILED if any(s != "claimed" for s in bad.values()) else ExitCode.CLAIMED)


COMMANDS = (validate, plan, run, status, logs, cancel, reset, stage)


def add_commands(cli: click.Group) -> None:
    """Add this area's commands to ``cli``."""
    for command in COMMANDS:
        cli.add_command(command)
