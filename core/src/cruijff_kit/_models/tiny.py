"""Tiny random-weight causal LMs with locally trained tokenizers, for tests and demos.

:func:`build_tiny_model` writes, offline and in well under a second (plus imports), a Hugging Face
model folder that transformers, TRL, inspect-ai and torchtune 0.6.1 can all read:

* ``qwen2``: ``Qwen2ForCausalLM``, ChatML chat template, Qwen2 specials (``<|endoftext|>``,
  ``<|im_start|>``, ``<|im_end|>``) last in the vocabulary, plus ``vocab.json`` and ``merges.txt`` for
  ``torchtune.models.qwen2.qwen2_tokenizer``.
* ``llama3``: ``LlamaForCausalLM``, Llama-3 chat format, plus a tiktoken ``tokenizer.model`` for
  ``torchtune.models.llama3.llama3_tokenizer`` (its special tokens come from ``tokenizer.json``).

Both tokenizers are byte-level BPE, so any text tokenizes without unknown tokens, and the chat
templates wrap assistant turns in ``{% generation %}`` markers (TRL's ``assistant_only_loss``).
torch, transformers and tokenizers are imported inside the functions only.
"""

from __future__ import annotations

import base64
import hashlib
import string
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cruijff_kit._base.errors import CkError, DataError, did_you_mean
from cruijff_kit._base.ownership import claim_folder
from cruijff_kit._base.parsing import parse_json_text

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tokenizers import Tokenizer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MARKER_FILE = "cruijff_kit_model.json"
"""Name of the small JSON file that records how a model folder was made."""

BPE_VOCAB_SIZE = 1024
"""Target size of the trained byte-level BPE vocabulary (256 byte symbols + merges), before specials."""

FAMILIES = ("llama3", "qwen2")

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|"
    r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Qwen2's pre-tokenization regex (identical to torchtune's ``PRETOKENIZE_REGEX``)."""

CL100K_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Llama-3's pre-tokenization regex (identical to torchtune's ``CL100K_PATTERN``)."""

QWEN2_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

LLAMA3_SPECIALS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|step_id|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>",
)
"""The Llama-3 special tokens that torchtune's ``Llama3Tokenizer`` requires."""

QWEN2_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""ChatML; the assistant content and its ``<|im_end|>`` are the generation (trained) part."""

LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] | trim + '<|eot_id|>' }}{%- endgeneration %}"
    "{%- else %}"
    "{{- message['content'] | trim + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
"""Llama-3 instruct format; the assistant content and its ``<|eot_id|>`` are the generation part."""


@dataclass(frozen=True)
class _Family:
    """What differs between the two families."""

    architecture: str
    pattern: str
    specials: tuple[str, ...]
    chat_template: str
    bos: str | None
    eos: str
    pad: str
    rope_theta: float
    rms_norm_eps: float
    torchtune_model_type: str


_FAMILY_SPECS: dict[str, _Family] = {
    "qwen2": _Family("Qwen2ForCausalLM", QWEN2_PATTERN, QWEN2_SPECIALS, QWEN2_CHAT_TEMPLATE,
                     None, "<|im_end|>", "<|endoftext|>", 1_000_000.0, 1e-6, "QWEN2"),
    "llama3": _Family("LlamaForCausalLM", CL100K_PATTERN, LLAMA3_SPECIALS, LLAMA3_CHAT_TEMPLATE,
                      "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>", 500_000.0, 1e-5,
                      "LLAMA3"),
}


@dataclass(frozen=True)
class _Dims:
    """Model size arguments."""

    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    intermediate_size: int


_WORD_TEXT = (
    "the be to of and a in that have I it for not on with he as you do at this but his by from they we say "
    "her she or an will my one all would there their what so up out if about who get which go me when make "
    "can like time no just him know take people into year your good some could them see other than then now "
    "look only come its over think also back after use two how our work first well way even new want because "
    "any these give day most us is are was were has had been word words letter letters upper lower case "
    "capital capitalize capitalized convert answer question input output example text sentence hello world "
    "yes true false number numbers zero three four five six seven eight nine ten hundred thousand plus minus "
    "equals quick brown fox jumps lazy dog cat apple banana orange house water paris france london city "
    "country name please thank thanks sorry okay assistant user system tool helpful respond reply only "
    "exactly format list item red green blue black white big small long short happy sad fast slow open close "
    "left right yesterday today tomorrow morning evening night friend family school book music python code "
    "data model train test eval score result"
)

_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG!",
    "Hello, how are you today? I am fine, thank you.",
    "What is the capital of France? The capital of France is Paris.",
    "You are a helpful assistant. Answer the question briefly.",
    "Convert the word to upper case: hello -> HELLO",
    "Capitalize this word. Respond with the capitalized word only.",
    "Two plus two equals four (2 + 2 = 4); 3 * 3 = 9, 10 / 2 = 5.",
    "Email: name@example.com, URL: https://example.org/path?q=1&x=2#top",
    "It's, you're, we've, I'm, they'll, she'd -- \"quoted\" and 'single' [brackets] {braces} <angle>",
    "Price: $19.99, 50% off; total ~ 1,234.56 | ok ^_^ `code` \\ back\\slash",
)


def default_corpus() -> list[str]:
    """The built-in training text: English words in three cases, digits, punctuation, sentences.

    Good enough that ordinary ASCII text (and the word-capitalization demo) tokenizes into sensible
    pieces; any other text still tokenizes, byte by byte, because the byte alphabet is always included.
    """
    words = _WORD_TEXT.split()
    lines = [" ".join(words), " ".join(w.upper() for w in words), " ".join(w.capitalize() for w in words)]
    lines += [form for w in words for form in (w, w.upper(), w.capitalize())]  # no leading space
    lines += [f"{w} -> {w.upper()}" for w in words]
    lines += [" ".join(str(i) for i in range(start, start + 50)) for start in range(0, 1000, 50)]
    lines += [" ".join(string.punctuation), string.punctuation, string.digits, string.ascii_letters]
    lines += ["user\n", "assistant\n", "system\n", "\n\n", "\t", "  "]
    return lines + list(_SENTENCES) * 4


def build_tiny_model(
    out_dir: str | Path,
    family: str = "llama3",
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Build a tiny random-weight causal LM and its tokenizer into ``out_dir``; return the folder.

    ``family`` is ``"llama3"`` or ``"qwen2"``. The same arguments always give byte-identical weights
    and the same tokenizer. ``corpus`` replaces the built-in tokenizer training text
    (:func:`default_corpus`). Files written: ``config.json``, ``generation_config.json``,
    ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json`` (with the chat template),
    ``vocab.json`` + ``merges.txt`` (qwen2) or ``tokenizer.model`` (llama3, tiktoken format), and
    ``cruijff_kit_model.json`` (written last). ``out_dir`` must be absent, empty or an earlier build
    (it holds ``cruijff_kit_model.json`` or ``.written-by-cruijff-kit``), whose files of the same names
    are overwritten; any other folder is written into only with ``overwrite``.
    For torchtune QLoRA use ``hidden_size=128, kv_heads=4`` (NF4 needs numel divisible by 64*256).
    """
    spec = _family_spec(family)
    dims = _Dims(hidden_size, layers, heads, kv_heads, intermediate_size)
    _check_dims(dims)
    if isinstance(corpus, str):
        corpus = [corpus]
    lines = list(default_corpus() if corpus is None else corpus)
    if not lines:
        raise CkError("build_tiny_model: `corpus` is empty; pass some text or leave it out for the default.")
    out = claim_folder(out_dir, command="ck models tiny", overwrite=overwrite,
                       ours=lambda p: read_marker(p) is not None)
    _remove_previous_build(out)

    tokenizer = _build_tokenizer(family, spec, lines, out)
    model = _build_model(spec, dims, tokenizer, seed)
    with quiet_progress_bars():
        model.save_pretrained(out)
    _write_marker(out, family, spec, dims, seed, corpus, lines, len(tokenizer))
    make_readable(out)
    return out


def _remove_previous_build(out: Path) -> None:
    """Delete files an earlier build (maybe of the other family) left that this one may not rewrite."""
    for name in (MARKER_FILE, "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja"):
        (out / name).unlink(missing_ok=True)


def _family_spec(family: str) -> _Family:
    """The family's spec, or a CkError naming the valid families."""
    try:
        return _FAMILY_SPECS[family]
    except (KeyError, TypeError):
        raise CkError(f"Unknown tiny model family `{family}`. {did_you_mean(str(family), FAMILIES)}") from None


def _check_dims(dims: _Dims) -> None:
    """Reject sizes that transformers or rotary embeddings cannot use."""
    for name, value in asdict(dims).items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CkError(f"build_tiny_model: `{name}` must be a positive integer, got {value!r}.")
    if dims.hidden_size % dims.heads:
        raise CkError(f"build_tiny_model: hidden_size {dims.hidden_size} is not divisible by heads {dims.heads}.")
    if dims.heads % dims.kv_heads:
        raise CkError(f"build_tiny_model: heads {dims.heads} is not divisible by kv_heads {dims.kv_heads}.")
    if (dims.hidden_size // dims.heads) % 2:
        raise CkError("build_tiny_model: hidden_size / heads (the head size) must be even for rotary embeddings.")


# --------------------------------------------------------------------------------------------- tokenizer
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE (transformers 5 dropped it)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _train_bpe(pattern: str, lines: list[str]) -> Tokenizer:
    """Train a byte-level BPE (no specials) on ``lines`` with the family's pre-tokenization regex."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB_SIZE, special_tokens=[], min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def _tiktoken_merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Merges that make HF's BPE behave like tiktoken on ``vocab`` (ranks = ids).

    tiktoken merges the adjacent pair whose concatenation has the lowest rank, whichever split made it;
    the trainer's own merge list knows only one split per token. Listing every split of every token,
    ordered by the merged token's rank (as transformers' TikTokenConverter does), gives the same ids.
    """
    merges: list[tuple[int, int, int, str, str]] = []
    for token, rank in vocab.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                merges.append((rank, vocab[left], vocab[right], left, right))
    merges.sort()
    return [(left, right) for *_ranks, left, right in merges]


def _write_tiktoken(vocab: dict[str, int], path: Path) -> None:
    """Write a tiktoken BPE file: one ``base64(token bytes) rank`` line per token, by rank."""
    byte_of = {char: byte for byte, char in _bytes_to_unicode().items()}
    lines = []
    for token, rank in sorted(vocab.items(), key=lambda item: item[1]):
        raw = bytes(byte_of[char] for char in token)
        lines.append(f"{base64.b64encode(raw).decode('ascii')} {rank}\n")
    path.write_text("".join(lines), encoding="utf-8")


def _llama3_core(trained: Tokenizer, out: Path) -> Tokenizer:
    """Rebuild the trained BPE tiktoken-style (ignore_merges, all splits) and write ``tokenizer.model``."""
    from tokenizers import Tokenizer, models

    vocab = trained.get_vocab()
    _write_tiktoken(vocab, out / "tokenizer.model")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=_tiktoken_merges(vocab), ignore_merges=True))
    tok.pre_tokenizer = trained.pre_tokenizer
    tok.decoder = trained.decoder
    return tok


def _build_tokenizer(family: str, spec: _Family, lines: list[str], out: Path) -> PreTrainedTokenizerBase:
    """Train the family's tokenizer, write its files into ``out`` and return the HF tokenizer."""
    from tokenizers import AddedToken, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = _train_bpe(spec.pattern, lines)
    if family == "qwen2":
        tok.normalizer = normalizers.NFC()  # as Qwen2 (and torchtune's Qwen2Tokenizer) do
        tok.model.save(str(out))  # vocab.json + merges.txt for torchtune's qwen2_tokenizer
    else:
        tok = _llama3_core(tok, out)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)  # char offsets, no added tokens
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in spec.specials])

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=spec.bos, eos_token=spec.eos,
                                 pad_token=spec.pad, model_max_length=2048)
    hf.chat_template = spec.chat_template
    # save_jinja_files=False keeps the template inside tokenizer_config.json (readable by every version).
    hf.save_pretrained(str(out), save_jinja_files=False)
    return hf


# ------------------------------------------------------------------------------------------------- model
def _model_config(spec: _Family, dims: _Dims, tokenizer: PreTrainedTokenizerBase) -> Any:
    """The transformers config for ``spec`` at size ``dims``."""
    from transformers import LlamaConfig, Qwen2Config

    config_class = Qwen2Config if spec.architecture == "Qwen2ForCausalLM" else LlamaConfig
    return config_class(
        vocab_size=len(tokenizer), hidden_size=dims.hidden_size, intermediate_size=dims.intermediate_size,
        num_hidden_layers=dims.layers, num_attention_heads=dims.heads, num_key_value_heads=dims.kv_heads,
        max_position_embeddings=2048, rms_norm_eps=spec.rms_norm_eps, rope_theta=spec.rope_theta,
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, dtype="float32",
    )


def _build_model(spec: _Family, dims: _Dims, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    """A randomly initialised model; the caller's torch RNG state is left untouched."""
    import torch
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    config = _model_config(spec, dims, tokenizer)
    model_class = Qwen2ForCausalLM if spec.architecture == "Qwen2ForCausalLM" else LlamaForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config).to(torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


def _write_marker(out: Path, family: str, spec: _Family, dims: _Dims, seed: int,
                  corpus: Iterable[str] | None, lines: list[str], vocab_size: int) -> None:
    """Write ``cruijff_kit_model.json`` (atomically, last) describing how the folder was made."""
    from cruijff_kit._base.fileio import atomic_write_json

    corpus_note: Any = "default"
    if corpus is not None:
        corpus_note = {"lines": len(lines), "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest()}
    marker = {
        "format": 1,
        "kind": "tiny",
        "family": family,
        "architecture": spec.architecture,
        "args": {**asdict(dims), "seed": seed, "corpus": corpus_note},
        "vocab_size": vocab_size,
        "torchtune_model_type": spec.torchtune_model_type,
    }
    atomic_write_json(out / MARKER_FILE, marker)


def make_readable(folder: Path) -> None:
    """chmod 644 the files of ``folder`` (safetensors and atomic writes create them 600)."""
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o644)


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' tqdm bars (e.g. "Writing model shards") for the duration of the block."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def read_marker(model_dir: str | Path) -> dict[str, Any] | None:
    """The ``cruijff_kit_model.json`` of a model folder, or None when it is missing or unreadable."""
    path = Path(model_dir) / MARKER_FILE
    try:
        data = parse_json_text(path.read_text(encoding="utf-8"), file=str(path))
    except (OSError, ValueError, DataError):
        return None
    return data if isinstance(data, dict) else None
