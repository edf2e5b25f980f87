"""The vLLM servers one process keeps between the targets it evaluates one after another (``group_evals``).

inspect's vllm provider keeps one server per base model for the whole process and starts it with the
server args of the first target that generates; a later target of the same base is served by it
whatever its own args. A server started for the ``base`` target has no LoRA (``--enable-lora`` and
runtime adapter loading are switched on only when an adapter target of that base exists when it
starts), so loading the next target's adapter fails; a later target's ``dtype``, ``device``,
``max_lora_rank``, ``tokenizer`` or ``chat_template`` would be ignored without a word.

:func:`release_servers`, called before each eval, closes every vLLM server this process started whose
launch settings differ from the next target's (the provider then starts a new one with that target's
args); one with the same settings is kept, so the epochs of one run (same rank, same tokenizer files)
share a server. A target that is not served by vLLM closes them all, freeing the GPU memory vLLM holds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

#: Files of a tokenizer folder a vLLM server reads (the adapter's own files beside them do not count).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json")

_launched: dict[str, str] = {}
"""Base model -> launch settings of the vLLM server the last eval of that base in this process used."""


def _tokenizer_digest(folder: str) -> str:
    """The content of a tokenizer folder's tokenizer files (each epoch of a run saves the same tokenizer)."""
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = Path(folder) / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def launch_key(model: str, model_args: dict[str, Any], base_url: str | None = None) -> tuple[str, str] | None:
    """(base model, launch settings) of the vLLM server that evaluates ``model``; None when vLLM does not serve it.

    The settings are whether LoRA is on (``vllm/<base>:<adapter>``), the base URL (a server started
    elsewhere) and the server args, the ``tokenizer`` folder by its tokenizer files' content and a
    ``chat_template`` file by its content.
    """
    if not model.startswith("vllm/"):
        return None
    base, _, adapter = model.removeprefix("vllm/").partition(":")  # the provider splits on the first colon too
    args = dict(model_args)
    if args.get("tokenizer"):
        args["tokenizer"] = _tokenizer_digest(str(args["tokenizer"]))
    template = args.get("chat_template")
    if template and Path(str(template)).is_file():  # each target writes the same template to its own folder
        args["chat_template"] = hashlib.sha256(Path(str(template)).read_bytes()).hexdigest()
    settings = {"lora": bool(adapter), "base_url": base_url, "args": args}
    return base, json.dumps(settings, sort_keys=True, default=str)


def release_servers(model: str, model_args: dict[str, Any], base_url: str | None = None) -> list[str]:
    """Before evaluating ``model``: close each vLLM server this process started with other launch settings.

    Returns the base models whose servers were closed. A vLLM target is then served by a server started
    with its own args (by the provider, at its first generation); one of the same settings is reused.
    """
    from inspect_ai.model import get_model

    key = launch_key(model, model_args, base_url)
    closed: list[str] = []
    for base, settings in list(_launched.items()):
        if key == (base, settings):
            continue
        # any provider instance of a base shares its server; close() ends the process the provider started
        get_model(f"vllm/{base}", memoize=False).api.close()
        del _launched[base]
        closed.append(base)
    if key is not None:
        _launched[key[0]] = key[1]
    return closed


def launched() -> dict[str, str]:
    """Base model -> launch settings of the vLLM servers this process keeps (a copy)."""
    return dict(_launched)
