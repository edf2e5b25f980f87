"""Which tokens of a conversation SFT trains on, tokenized exactly as ``SFTTrainer`` tokenizes it.

:func:`sft_masker` is the ``trl`` trainer's :meth:`~cruijff_kit.Trainer.target_masker`: the core counts
with it the target tokens ``train.max_seq_length`` cuts (``cruijff_kit.training.count_truncation``).
It follows TRL's dataset preparation for the three loss modes of :func:`cruijff_kit_trl.sft.loss_mode`:

- ``assistant``: the chat template (TRL's training template when it lacks ``{% generation %}``
  markers) with ``return_assistant_tokens_mask``; targets are the assistant tokens;
- ``completion``: prompt (every turn before the last, with the generation prompt) and prompt +
  completion tokenized apart; targets are the tokens after their common prefix;
- ``all``: the whole conversation; every token is a target.

TRL keeps the first ``max_length`` tokens of each row (and packing keeps them too), which is the cut
the core counts. Imports transformers and trl when called.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from cruijff_kit import DataError
from cruijff_kit_trl.config import TrlConfig

Messages = list[dict[str, Any]]
#: ``{% generation %}`` in any whitespace-trim spelling (as ``trl.chat_template_utils.has_generation_markers``).
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


def has_generation_markers(chat_template: str | dict[str, str] | None) -> bool:
    """True when the template marks the assistant's part (TRL's test, without importing trl)."""
    if isinstance(chat_template, dict):
        chat_template = chat_template.get("default")
    return bool(chat_template) and _GENERATION.search(str(chat_template)) is not None


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def masker_for(tokenizer: Any, mode: str) -> Callable[[Messages], list[bool]]:
    """The target flags of one conversation for ``tokenizer`` (as loaded for training) in loss ``mode``."""

    def ids(messages: Messages, **kwargs: Any) -> dict[str, Any]:
        return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, tools=None, **kwargs)

    if mode == "assistant":
        template = None
        if not has_generation_markers(tokenizer.chat_template):
            from trl.chat_template_utils import get_training_chat_template

            template = get_training_chat_template(tokenizer)

        def assistant(messages: Messages) -> list[bool]:
            return [bool(m) for m in ids(messages, chat_template=template, return_assistant_tokens_mask=True)
                    ["assistant_masks"]]

        return assistant
    if mode == "completion":
        def completion(messages: Messages) -> list[bool]:
            if not messages or messages[-1]["role"] != "assistant":
                raise DataError("the conversation does not end with an assistant message, and with this chat "
                                "template the trainer trains on the last assistant turn only")
            prompt = ids(messages[:-1], add_generation_prompt=True)["input_ids"]
            full = ids(messages)["input_ids"]
            start = _common_prefix(prompt, full)
            return [False] * start + [True] * (len(full) - start)

        return completion

    def whole(messages: Messages) -> list[bool]:
        return [True] * len(ids(messages)["input_ids"])

    return whole


def sft_masker(model_path: str, config: TrlConfig, chat_template: str | None,
               revision: str | None = None) -> Callable[[Messages], list[bool]] | None:
    """The ``trl`` trainer's target masker; None for ``objective: dpo`` (pairs are not counted)."""
    if config.objective != "sft":
        return None
    from cruijff_kit_trl.sft import load_tokenizer, loss_mode

    tokenizer = load_tokenizer(model_path, chat_template, revision)
    return masker_for(tokenizer, loss_mode(tokenizer, config))
