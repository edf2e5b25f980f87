"""Plan-time check: would ``train.max_seq_length`` cut target (assistant) turns away?

Rows are rendered with the run's tokenizer and chat template (``train.chat_template`` when set) and
counted in tokens. Truncation keeps the start of a row, so any row longer than the limit loses the
end of its last assistant turn, which is exactly what the model is trained on. Skipped when the model
is not a local folder (a hub id), its tokenizer has no chat template, or transformers is not installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _template(run: Any) -> str | None:
    value = (run.spec.get("train") or {}).get("chat_template")
    if value and "\n" not in value.strip() and value.strip().endswith((".jinja", ".j2")):
        p = Path(value.strip()).expanduser()
        p = p if p.is_absolute() else Path(run.base_dir) / p
        return p.read_text(encoding="utf-8") if p.is_file() else None
    return value


def row_lengths(tokenizer: Any, rows: list[dict[str, Any]], *, pairs: bool) -> list[int]:
    """Tokens per row once rendered (pairs: the longer of prompt+chosen and prompt+rejected)."""
    def count(messages: list[dict[str, str]]) -> int:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    if pairs:
        return [max(count([*r["prompt"], *r["chosen"]]), count([*r["prompt"], *r["rejected"]])) for r in rows]
    return [count(r["messages"]) for r in rows]


def truncation_problem(run: Any, rows: list[dict[str, Any]], *, pairs: bool) -> str | None:
    """A sentence naming how many rows would lose target tokens, or None when none would."""
    if not rows:
        return None
    local = run.spec["model"].get("local_path")
    train = run.spec.get("train") or {}
    limit = train.get("max_seq_length")
    if not local or not limit:
        return None
    try:
        from transformers import AutoTokenizer
    except ImportError:  # no trainer installed here: nothing to check against
        return None

    tok = AutoTokenizer.from_pretrained(local)
    template = _template(run)
    if template:
        tok.chat_template = template
    if not tok.chat_template:
        return None
    lengths = row_lengths(tok, rows, pairs=pairs)
    cut = [n for n in lengths if n > limit]
    if not cut:
        return None
    what = "preference pairs" if pairs else "conversations"
    return (f"{len(cut)} of {len(rows)} training {what} (train and validation splits) are longer than "
            f"train.max_seq_length = {limit} tokens once rendered with the chat template (the longest has "
            f"{max(lengths)}): truncation would cut their last assistant turns, the training targets, away. "
            f"Raise train.max_seq_length to at least {max(lengths)}, or simulate fewer turns "
            "(simulate.max_turns).")
