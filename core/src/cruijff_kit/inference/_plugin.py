"""Inference as a default plugin: ``ck embed`` and ``ck score-options``. Loads torch only when they run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cruijff_kit._api.hookspecs import hookimpl
from cruijff_kit._base.fileio import atomic_write_text

_LOAD_OPTIONS = [
    click.option("--adapter", type=click.Path(exists=True, file_okay=False), help="PEFT adapter on top of MODEL."),
    click.option("--epoch", type=int, help="With a run folder: this epoch's adapter (default: the last)."),
    click.option("--device", default="auto", show_default=True),
    click.option("--dtype", default="auto", show_default=True),
    click.option("--quantization", type=click.Choice(["auto", "nf4", "none"]), default="auto", show_default=True,
                 help="Base model: auto = 4-bit NF4 under a QLoRA adapter (as trained), else full precision."),
    click.option("--batch-size", default=8, show_default=True),
    click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True),
    click.option("--field", default="input", show_default=True, help="Text field of .json/.jsonl rows."),
    click.option("--id-field", default="id", show_default=True, help="Id field of .json/.jsonl rows."),
]


def _load_options(fn: Any) -> Any:
    """The options that say which model to load and how (shared by both commands)."""
    for option in reversed(_LOAD_OPTIONS):
        fn = option(fn)
    return fn


@click.command()
@click.argument("model")
@click.argument("texts", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@_load_options
@click.option("--layer", "layers", multiple=True, type=int, help="Hidden state (0 = embeddings, -1 = last; repeat).")
@click.option("--pooling", type=click.Choice(["mean", "last"]), default="mean", show_default=True)
@click.option("--chat", is_flag=True, help="Render each text as a user turn with the chat template.")
@click.option("--overwrite", is_flag=True, help="Write over an OUT file that ck embed did not write.")
def embed(model: str, texts: str, out: str, adapter: str | None, epoch: int | None, device: str, dtype: str,
          quantization: str, batch_size: int, seed: int, field: str, id_field: str, layers: tuple[int, ...], pooling: str,
          chat: bool, overwrite: bool) -> None:
    """Hidden-state embeddings of TEXTS (.txt/.jsonl/.json) from MODEL (run folder, adapter or base) to OUT (parquet)."""
    from cruijff_kit.inference import load
    from cruijff_kit.inference._io import check_output, read_texts

    check_output(out, "ck embed", overwrite)
    ids, items = read_texts(texts, field, id_field)
    m = load(model, adapter, epoch=epoch, device=device, dtype=dtype, quantization=quantization, seed=seed,
             batch_size=batch_size)
    path = m.embed_to_parquet(items, out, ids=ids, layers=layers or (-1,), pooling=pooling, chat=chat)
    click.echo(f"Wrote {len(items)} embeddings ({', '.join(f'layer {x}' for x in layers or (-1,))}) to {path}")


@click.command("score-options")
@click.argument("model")
@click.argument("prompts", type=click.Path(exists=True, dir_okay=False))
@click.option("--option", "options", multiple=True, required=True, help="An answer option (repeat).")
@_load_options
@click.option("--out", type=click.Path(dir_okay=False), help="Write one JSON line per prompt here.")
@click.option("--ignore-case", is_flag=True, help="Also sum differently cased variants.")
@click.option("--system", help="System message before each prompt.")
@click.option("--raw", is_flag=True, help="Use prompts as is, without the chat template.")
@click.option("--overwrite", is_flag=True, help="Write over an --out file that ck score-options did not write.")
def score_options(model: str, prompts: str, options: tuple[str, ...], adapter: str | None, epoch: int | None,
                  device: str, dtype: str, quantization: str, batch_size: int, seed: int, field: str,
                  id_field: str, out: str | None, ignore_case: bool, system: str | None, raw: bool, overwrite: bool) -> None:
    """Next-token probabilities of each --option after each prompt of PROMPTS, from MODEL."""
    from cruijff_kit.inference import load
    from cruijff_kit.inference._io import check_output, read_texts

    if out:
        check_output(out, "ck score-options", overwrite)
    ids, items = read_texts(prompts, field, id_field)
    m = load(model, adapter, epoch=epoch, device=device, dtype=dtype, quantization=quantization, seed=seed,
             batch_size=batch_size)
    kw = {"ignore_case": ignore_case, "chat": not raw, "system": system}
    probs = m.option_probabilities(items, list(options), **kw)
    mass = m.option_mass(items, list(options), **kw)
    lines = [json.dumps({"id": i, "probabilities": p, "mass": sum(ms.values()), "predicted": max(p, key=p.get)})
             for i, p, ms in zip(ids, probs, mass, strict=True)]
    if out:
        atomic_write_text(Path(out), "\n".join(lines) + "\n")
        click.echo(f"Wrote {len(lines)} rows to {out}")
    else:
        click.echo("\n".join(lines))


@hookimpl(tryfirst=True)
def register_commands(cli: click.Group) -> None:
    """Add ``ck embed`` and ``ck score-options``."""
    cli.add_command(embed)
    cli.add_command(score_options)
