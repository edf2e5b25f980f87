"""The model's own Hugging Face tokenizer, as the tokenizer component of a torchtune recipe.

torchtune 0.6.1 ships tokenizers for a few model families that read their own file formats, and no
general Hugging Face tokenizer. This component wraps ``transformers.AutoTokenizer`` instead, so a
tiny local model and a real Llama or Qwen checkpoint go through one path, and training sees exactly
the chat format (the model's chat template, or ``train.chat_template``) that inference will use.

Assistant-only loss: the chat template's ``{% generation %}`` markers give the assistant tokens
(``return_assistant_tokens_mask``). For a template without markers, the assistant spans are found
by rendering each conversation prefix and mapping character offsets to tokens.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cruijff_kit import DataError, StageError

#: Label value the loss ignores (torchtune's CROSS_ENTROPY_IGNORE_IDX).
IGNORE_INDEX = -100
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


#: Loaded Hugging Face tokenizers by (folder, chat template, the tokenizer files' sizes and times):
#: the truncation count, the recipe and the adapter export of a stage share one load.
_LOADED: dict[tuple[Any, ...], Any] = {}
#: While :func:`shared_tokenization` is active: conversations the truncation count tokenized, kept
#: until the recipe's dataset takes them (each is tokenized once per stage, not twice): the tokens,
#: the flags, and how many times the count met the conversation (the dataset takes it as often).
_TOKENIZED: dict[tuple[Any, ...], tuple[list[int], list[bool], int]] | None = None
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                    "special_tokens_map.json", "chat_template.jinja")


def _load_hf(path: str, chat_template: str | None) -> Any:
    """``AutoTokenizer.from_pretrained(path)`` with ``chat_template`` set, loaded once per process while
    the tokenizer files stay unchanged."""
    from transformers import AutoTokenizer

    stamps = []
    for name in _TOKENIZER_FILES:
        try:
            st = (Path(path) / name).stat()
        except OSError:
            continue
        stamps.append((name, st.st_size, st.st_mtime_ns))
    key = (str(path), chat_template, tuple(stamps))
    if key not in _LOADED:
        hf = AutoTokenizer.from_pretrained(str(path))
        if chat_template:
            hf.chat_template = chat_template
        _LOADED.clear()  # one tokenizer at a time: a process trains one model
        _LOADED[key] = hf
    return _LOADED[key]


@contextlib.contextmanager
def shared_tokenization() -> Iterator[None]:
    """Within it, a conversation tokenized for the truncation count (:meth:`HFChatTokenizer.target_mask`)
    is not tokenized again for the recipe's dataset (:meth:`HFChatTokenizer.tokenize_messages`)."""
    global _TOKENIZED
    _TOKENIZED = {}
    try:
        yield
    finally:
        _TOKENIZED = None


def _conversation_key(messages: list[dict[str, Any]]) -> tuple[Any, ...] | None:
    try:
        key = tuple((m["role"], m["content"]) for m in messages)
        hash(key)
    except (KeyError, TypeError):
        return None
    return key


class HFChatTokenizer:
    """A Hugging Face tokenizer with what torchtune's recipes use (``pad_id``, ``eos_id``, ``encode``).

    Args:
        path: model folder with the tokenizer files.
        max_seq_len: tokens kept per conversation (longer ones are cut at the end).
        chat_template: Jinja template replacing the tokenizer's own.
    """

    def __init__(self, path: str, max_seq_len: int | None = None, chat_template: str | None = None) -> None:
        try:
            self.hf = _load_hf(str(path), chat_template)
        except (OSError, ValueError) as exc:
            raise StageError(f"cannot load the tokenizer of {path}: {exc}") from None
        self.chat_template = chat_template
        if not getattr(self.hf, "chat_template", None):
            raise StageError(f"the tokenizer of {path} has no chat template, so chat rows cannot be rendered. "
                             "Set train.chat_template to a Jinja chat template.")
        self.path = str(path)
        self.max_seq_len = max_seq_len
        self.has_generation_markers = bool(_GENERATION.search(self.hf.chat_template))

    # -- what torchtune's recipes and collators read
    @property
    def pad_id(self) -> int:
        for tid in (self.hf.pad_token_id, self.hf.eos_token_id):
            if tid is not None:
                return int(tid)
        return 0

    @property
    def eos_id(self) -> int | None:
        return self.hf.eos_token_id

    @property
    def bos_id(self) -> int | None:
        return self.hf.bos_token_id

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        """Plain text to token ids (specials per the flags)."""
        ids = list(self.hf.encode(text, add_special_tokens=False))
        if add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        if add_eos and self.eos_id is not None:
            ids = [*ids, self.eos_id]
        return ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return str(self.hf.decode(token_ids, skip_special_tokens=skip_special_tokens))

    # -- chat rows
    def tokenize_messages(self, messages: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
        """One conversation to ``(tokens, labels)``: labels are the tokens inside assistant turns, else -100.

        Cut to ``max_seq_len``. Raises DataError when the template renders no assistant text.
        """
        tokens, mask = self._remembered(messages) or self.tokens_and_mask(messages)
        if self.max_seq_len is not None:
            tokens, mask = tokens[: self.max_seq_len], mask[: self.max_seq_len]
        labels = [t if m else IGNORE_INDEX for t, m in zip(tokens, mask, strict=True)]
        return tokens, labels

    def tokens_and_mask(self, messages: list[dict[str, Any]]) -> tuple[list[int], list[bool]]:
        """One conversation's tokens and assistant flags, before any cut at ``max_seq_len``."""
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        if self.has_generation_markers:
            out = self.hf.apply_chat_template(msgs, tokenize=True, return_dict=True,
                                              return_assistant_tokens_mask=True)
            return list(out["input_ids"]), [bool(x) for x in out["assistant_masks"]]
        return self._mask_by_prefixes(msgs)

    def target_mask(self, messages: list[dict[str, Any]]) -> list[bool]:
        """True for each token the loss trains on (the assistant turns), before any cut: the trainer's
        :meth:`~cruijff_kit.Trainer.target_masker`."""
        key = self._memo_key(messages)
        if key is None or _TOKENIZED is None:
            return self.tokens_and_mask(messages)[1]
        if key in _TOKENIZED:
            tokens, mask, seen = _TOKENIZED[key]
        else:
            (tokens, mask), seen = self.tokens_and_mask(messages), 0
        _TOKENIZED[key] = (tokens, mask, seen + 1)
        return list(mask)

    def _remembered(self, messages: list[dict[str, Any]]) -> tuple[list[int], list[bool]] | None:
        """The count's tokenization of ``messages`` (each taken as often as the count met it), or None."""
        key = self._memo_key(messages)
        if key is None or _TOKENIZED is None or key not in _TOKENIZED:
            return None
        tokens, mask, seen = _TOKENIZED[key]
        if seen > 1:
            _TOKENIZED[key] = (tokens, mask, seen - 1)
        else:
            del _TOKENIZED[key]
        return tokens, mask

    def _memo_key(self, messages: list[dict[str, Any]]) -> tuple[Any, ...] | None:
        conversation = _conversation_key(messages)
        return None if conversation is None else (self.path, self.chat_template, conversation)

    def _render(self, msgs: list[dict[str, Any]], generation_prompt: bool) -> str:
        return str(self.hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt))

    def _mask_by_prefixes(self, msgs: list[dict[str, Any]]) -> tuple[list[int], list[bool]]:
        """Assistant spans from rendered prefixes, mapped to tokens by character offsets.

        A turn's span runs from the end of the prefix rendered with the generation prompt to the end of
        the prefix that includes the turn, less trailing whitespace (the template's turn separator).
        """
        text = self._render(msgs, False)
        spans: list[tuple[int, int]] = []
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            start = len(self._render(msgs[:i], True)) if i else 0
            end = len(self._render(msgs[: i + 1], False))
            if not text.startswith(self._render(msgs[: i + 1], False)):
                raise DataError("the chat template renders a conversation differently from its prefixes, so "
                                "assistant turns cannot be located. Add {% generation %} markers around "
                                "assistant content in train.chat_template.")
            while end > start and text[end - 1].isspace():  # separators after the turn's end token
                end -= 1
            spans.append((start, end))
        enc = self.hf(text, add_special_tokens=False, return_offsets_mapping=True)
        mask = [any(s <= a and b <= e and b > a for s, e in spans) for a, b in enc["offset_mapping"]]
        return list(enc["input_ids"]), mask

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the tokenizer files (with the chat template used in training)."""
        self.hf.save_pretrained(str(folder))


def hf_chat_tokenizer(path: str, max_seq_len: int | None = None, chat_template: str | None = None
                      ) -> HFChatTokenizer:
    """Builder used as ``tokenizer._component_`` in ``train/torchtune.yaml``."""
    return HFChatTokenizer(path, max_seq_len=max_seq_len, chat_template=chat_template)
