"""The engine's admin commands: ``ck plugins``, ``schema``, ``init``, ``archive``, ``export``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from cruijff_kit._cli.common import console


@click.command()
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


@click.command("archive")
@click.argument("experiment", type=click.Path(exists=True))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--keep-adapters", is_flag=True, help="Also copy adapter weights (other weights never).")
@click.option("--remove", is_flag=True, help="Remove the original after the copy was verified.")
def archive_cmd(experiment: str, dest: str, keep_adapters: bool, remove: bool) -> None:
    """Copy an experiment to DEST without bulky artifacts, verify it, optionally remove the original."""
    from cruijff_kit._base.sizes import human_bytes
    from cruijff_kit._engine.archive import archive
    from cruijff_kit._engine.runner import find_experiment

    exp = find_experiment(experiment)
    rep = archive(exp.root, Path(dest), keep_adapters=keep_adapters, remove=remove)
    click.echo(f"Copied {rep.copied} files ({human_bytes(rep.bytes_copied)}), left out {rep.skipped} "
               f"({human_bytes(rep.bytes_skipped)}); verified." + (" Removed the original." if rep.removed_original else ""))


@click.command()
@click.option("--markdown", is_flag=True, help="Print the spec reference page instead (docs/spec-reference.md).")
def schema(markdown: bool) -> None:
    """Print the JSON Schema (draft 2020-12) of a run spec, installed plugins' options included.

    Write it with `ck schema > ck-schema.json` and point an editor's YAML language server at it for
    completion and checking (see docs/spec-reference.md).
    """
    if markdown:
        from cruijff_kit._engine.reference import spec_reference

        click.echo(spec_reference(), nl=False)
        return
    from cruijff_kit._engine.schema import spec_json_schema

    click.echo(json.dumps(spec_json_schema(), indent=2))


@click.command()
@click.option("--scheduler", type=str, help="Scheduler to configure (slurm, runpod, ...).")
@click.option("--path", "path_", type=click.Path(dir_okay=False), help="Profile file to write.")
@click.option("--set", "sets", multiple=True, help="scheduler.key=value without asking (non-interactive).")
@click.option("--yes", is_flag=True, help="Do not ask; use --set values and defaults.")
@click.option("--overwrite", is_flag=True, help="Replace a file at the path that is not a profile.")
def init(scheduler: str | None, path_: str | None, sets: tuple[str, ...], yes: bool, overwrite: bool) -> None:
    """Write a user profile (per-user scheduler settings) by asking questions."""
    from cruijff_kit._base.ownership import check_writable
    from cruijff_kit._engine.profile import user_profile_path
    from cruijff_kit._engine.profile_init import run_init

    target = Path(path_) if path_ else user_profile_path()
    if not check_writable(target, command="ck init", overwrite=overwrite, ours=_is_profile):
        written = run_init(scheduler, target, sets, interactive=not yes)
    else:  # --overwrite of a file that is not a profile: set it aside until the new profile is written
        aside = target.with_name(f".{target.name}.replaced-{os.getpid()}")
        os.replace(target, aside)
        try:
            written = run_init(scheduler, target, sets, interactive=not yes)
        except BaseException:
            os.replace(aside, target)
            raise
        os.unlink(aside)
    click.echo(f"Wrote {written}")


def _is_profile(path: Path) -> bool:
    """True when ``path`` is a YAML mapping whose keys are scheduler names or ``models_cache`` (a profile)."""
    from cruijff_kit._api.registry import registry
    from cruijff_kit._base.errors import CkError
    from cruijff_kit._base.yamlfile import read_yaml

    if not path.is_file():
        return False
    try:
        data = read_yaml(path, what="profile")
    except CkError:
        return False
    return isinstance(data, dict) and set(data) <= {*registry().plugins["scheduler"], "models_cache"}


@click.command()
@click.argument("adapter", type=click.Path(file_okay=False, exists=True))
@click.argument("dest", type=click.Path())
@click.option("--base", help="Base model name to record (default: the name the spec gave, e.g. a hub id).")
@click.option("--overwrite", is_flag=True, help="Replace DEST even when it is not an earlier export.")
def export(adapter: str, dest: str, base: str | None, overwrite: bool) -> None:
    """Copy ADAPTER to DEST for sharing: adapter_config.json names the base by its hub id, not a local path."""
    from cruijff_kit.training._adapters import adapter_info, export_adapter

    out = export_adapter(Path(adapter), Path(dest), base_model=base, overwrite=overwrite)
    click.echo(f"Wrote {out} (base model: {base or adapter_info(Path(adapter)).get('base_model')})")


COMMANDS = (plugins, schema, init, archive_cmd, export)


def add_commands(cli: click.Group) -> None:
    """Add this area's commands to ``cli``."""
    for command in COMMANDS:
        cli.add_command(command)
