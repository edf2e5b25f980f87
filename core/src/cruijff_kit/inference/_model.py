"""The research API: :func:`load` returns an :class:`InferenceModel` with batched ``generate``,
``option_probabilities``, ``token_logprobs`` and ``embed``.

Prompts are plain strings. With ``chat=True`` (the default) each prompt is rendered as one user turn
(after an optional ``system`` message) with the tokenizer's chat template and the assistant turn
opened, exactly as the model saw it in training; with ``chat=False`` the text is used as is.
Everything runs under ``torch.inference_mode`` with a fixed seed, batch by batch, with a progress bar
when there is more than one batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cruijff_kit._base.errors import SpecError
from cruijff_kit.inference._loading import load_model, resolve_device, resolve_dtype, resolve_target
from cruijff_kit.inference._quantization import base_quantization
from cruijff_kit.scoring import normalize_token

POOLINGS = ("mean", "last")


def load(path: str | Path, adapter: str | Path | None = None, *, epoch: int | None = None,
         device: str | None = "auto", dtype: str | None = "auto", merge: bool = False,
         quantization: str = "auto", seed: int = 0, batch_size: int = 8, progress: bool = True) -> InferenceModel:
    """Open a run folder, an epoch or adapter folder, or a base model (+ ``adapter``) in one call.

    See :func:`cruijff_kit.inference._loading.resolve_target` for what ``path`` may be.
    ``quantization`` is ``auto`` (the base in 4-bit NF4 when the adapter was trained with qlora, as
    it was trained; else full precision), ``nf4`` or ``none`` (full precision in ``dtype``); the
    returned model records what was loaded in :attr:`InferenceModel.quantization`.
    """
    base, adapter_path = resolve_target(path, adapter, epoch)
    dev = resolve_device(device)
    dtype_name = str(resolve_dtype(dtype, dev)).removeprefix("torch.")
    quant = base_quantization(adapter_path, quantization, dtype=dtype_name)
    model, tokenizer, dev = load_model(base, adapter_path, device=dev, dtype=dtype, merge=merge, quantization=quant)
    return InferenceModel(model, tokenizer, dev, seed=seed, batch_size=batch_size, progress=progress,
                          base=base, adapter=str(adapter_path) if adapter_path else None,
                          quantization=quant.record() | {"dtype": dtype_name})


class InferenceModel:
    """A loaded (base + adapter) model with the research workflows as methods."""

    def __init__(self, model: Any, tokenizer: Any, device: str, *, seed: int = 0, batch_size: int = 8,
                 progress: bool = True, base: str | None = None, adapter: str | None = None,
                 quantization: dict[str, Any] | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.seed = seed
        self.batch_size = batch_size
        self.progress = progress
        self.base = base
        self.adapter = adapter
        #: How the base was loaded (set by :func:`load`; None for a model built elsewhere):
        #: ``{"quantization": "nf4"|"none", "dtype": ...}`` plus, for nf4, ``quant_type``,
        #: ``double_quant`` and ``compute_dtype``.
        self.quantization = quantization
        self._variants: dict[tuple[str, bool], list[int]] = {}

    # ------------------------------------------------------------------ helpers
    def render(self, prompt: str, *, chat: bool = True, system: str | None = None) -> str:
        """The text the model reads for ``prompt`` (chat template applied unless ``chat=False``)."""
        if not chat or not getattr(self.tokenizer, "chat_template", None):
            return prompt
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def _batches(self, items: Sequence[Any], what: str) -> Iterator[Sequence[Any]]:
        from tqdm.auto import tqdm

        starts = range(0, len(items), self.batch_size)
        bar = tqdm(starts, desc=what, unit="batch", disable=not self.progress or len(starts) < 2)
        for i in bar:
            yield items[i:i + self.batch_size]

    def _encode(self, texts: Sequence[str]) -> Any:
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
        return {k: v.to(self.device) for k, v in enc.items()}

    def _seed(self) -> None:
        import torch

        torch.manual_seed(self.seed)

    # ------------------------------------------------------------------ generate
    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 64, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, chat: bool = True,
                 system: str | None = None) -> list[str]:
        """Completions of ``prompts`` (greedy unless ``do_sample``; sampling is seeded)."""
        import torch

        self._seed()
        out: list[str] = []
        sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
        with torch.inference_mode():
            for batch in self._batches(prompts, "generate"):
                enc = self._encode([self.render(p, chat=chat, system=system) for p in batch])
                ids = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                          pad_token_id=self.tokenizer.pad_token_id, **sampling)
                new = ids[:, enc["input_ids"].shape[1]:]
                out.extend(self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return out

    # ------------------------------------------------------------------ option probabilities
    def option_token_ids(self, option: str, ignore_case: bool = False) -> list[int]:
        """Ids of every vocabulary token whose text is ``option`` (``"1"``, ``" 1"``, ``"Ġ1"``...)."""
        key = (normalize_token(option, ignore_case), ignore_case)
        if key not in self._variants:
            table: dict[str, list[int]] = {}
            vocab = self.tokenizer.get_vocab()
            for piece, idx in vocab.items():
                try:
                    text = self.tokenizer.convert_tokens_to_string([piece])
                except Exception:  # a piece the tokenizer cannot render alone
                    text = piece
                table.setdefault(normalize_token(text, ignore_case), []).append(int(idx))
            for norm, ids in table.items():
                self._variants.setdefault((norm, ignore_case), sorted(set(ids)))
            self._variants.setdefault(key, [])
        return self._variants[key]

    def option_probabilities(self, prompts: Sequence[str], options: Sequence[str], *, ignore_case: bool = False,
                             chat: bool = True, system: str | None = None) -> list[dict[str, float]]:
        """Per prompt, the probability of each option as the next token, renormalised over ``options``.

        Each option's mass is the sum of the next-token probabilities of all its token variants
        (``"1"`` and ``" 1"``); the returned values sum to 1 over the options. Use
        :meth:`option_mass` for the raw (not renormalised) masses.
        """
        out = []
        for mass in self.option_mass(prompts, options, ignore_case=ignore_case, chat=chat, system=system):
            total = sum(mass.values())
            out.append({o: (m / total if total > 0 else math.nan) for o, m in mass.items()})
        return out

    def option_mass(self, prompts: Sequence[str], options: Sequence[str], *, ignore_case: bool = False,
                    chat: bool = True, system: str | None = None) -> list[dict[str, float]]:
        """Per prompt, each option's next-token probability summed over its token variants."""
        import torch

        if len({normalize_token(o, ignore_case) for o in options}) != len(options):
            raise SpecError("two options are the same after stripping spaces (and case).", file="options",
                            hint="Give distinct options.")
        ids = {o: self.option_token_ids(o, ignore_case) for o in options}
        missing = [o for o, v in ids.items() if not v]
        if missing:
            raise SpecError(f"options {missing} are not single tokens of this tokenizer.", file="options",
                            hint="Use short option labels (A/B/C, 0/1, yes/no) that the tokenizer has as one token.")
        self._seed()
        out: list[dict[str, float]] = []
        with torch.inference_mode():
            for batch in self._batches(prompts, "options"):
                enc = self._encode([self.render(p, chat=chat, system=system) for p in batch])
                logits = self.model(**enc).logits[:, -1, :].float()
                probs = torch.softmax(logits, dim=-1).cpu()
                for row in probs:
                    out.append({o: float(row[v].sum()) for o, v in ids.items()})
        return out

    # ------------------------------------------------------------------ log-probabilities
    def token_logprobs(self, prompts: Sequence[str], completions: Sequence[str], *, chat: bool = True,
                       system: str | None = None) -> list[list[tuple[str, float]]]:
        """Per (prompt, completion) pair, each completion token's text and log-probability given all before it."""
        import torch

        if len(prompts) != len(completions):
            raise SpecError(f"{len(prompts)} prompts but {len(completions)} completions.", file="completions",
                            hint="Give one completion per prompt.")
        self._seed()
        out: list[list[tuple[str, float]]] = []
        pairs = list(zip(prompts, completions, strict=True))
        pad = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for batch in self._batches(pairs, "logprobs"):
                seqs, starts = [], []
                for prompt, completion in batch:
                    p_ids = self.tokenizer(self.render(prompt, chat=chat, system=system),
                                           add_special_tokens=False)["input_ids"]
                    c_ids = self.tokenizer(completion, add_special_tokens=False)["input_ids"]
                    seqs.append(p_ids + c_ids)
                    starts.append(len(p_ids))
                width = max(len(s) for s in seqs)
                ids = torch.full((len(seqs), width), pad, dtype=torch.long)
                mask = torch.zeros((len(seqs), width), dtype=torch.long)
                for i, s in enumerate(seqs):  # left padding: the last token is at the end of every row
                    ids[i, width - len(s):] = torch.tensor(s)
                    mask[i, width - len(s):] = 1
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                logp = torch.log_softmax(logits.float(), dim=-1).cpu()
                for i, s in enumerate(seqs):
                    off = width - len(s)
                    row = []
                    for j in range(starts[i], len(s)):
                        tok = s[j]
                        text = self.tokenizer.decode([tok])
                        row.append((text, float(logp[i, off + j - 1, tok])))
                    out.append(row)
        return out

    # ------------------------------------------------------------------ embeddings
    def embed(self, texts: Sequence[str], *, layers: Sequence[int] = (-1,), pooling: str = "mean",
              chat: bool = False, system: str | None = None) -> dict[int, Any]:
        """Hidden-state embeddings: ``{layer: float32 array of shape (len(texts), hidden_size)}``.

        ``layers`` index the hidden states (0 = token embeddings, -1 = last layer); ``pooling`` is
        ``mean`` (over the text's tokens) or ``last`` (the last token). Texts are used as is unless
        ``chat`` is set.
        """
        import numpy as np
        import torch

        if pooling not in POOLINGS:
            raise SpecError(f"pooling {pooling!r} is unknown.", file="pooling", hint=f"Use one of {POOLINGS}.")
        n_states = int(self.model.config.num_hidden_layers) + 1
        for layer in layers:
            if not -n_states <= layer < n_states:
                raise SpecError(f"layer {layer} does not exist (the model has hidden states 0..{n_states - 1}).",
                                file="layers", hint="Use 0..N or negative indices (-1 is the last layer).")
        self._seed()
        chunks: dict[int, list[Any]] = {layer: [] for layer in layers}
        with torch.inference_mode():
            for batch in self._batches(texts, "embed"):
                enc = self._encode([self.render(t, chat=chat, system=system) for t in batch])
                states = self.model(**enc, output_hidden_states=True).hidden_states
                mask = enc["attention_mask"].unsqueeze(-1).float()
                for layer in layers:
                    h = states[layer].float()
                    pooled = h[:, -1, :] if pooling == "last" else (h * mask).sum(1) / mask.sum(1).clamp(min=1)
                    chunks[layer].append(pooled.cpu().numpy())
        hidden = int(self.model.config.hidden_size)
        return {layer: (np.concatenate(c).astype(np.float32) if c else np.zeros((0, hidden), np.float32))
                for layer, c in chunks.items()}

    def embed_to_parquet(self, texts: Sequence[str], out: str | Path, *, ids: Sequence[Any] | None = None,
                         layers: Sequence[int] = (-1,), pooling: str = "mean", chat: bool = False) -> Path:
        """Write :meth:`embed` to a parquet file: an ``id`` column and one list column ``layer_<L>`` per layer."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        ids = list(ids) if ids is not None else list(range(len(texts)))
        if len(ids) != len(texts):
            raise SpecError(f"{len(ids)} ids but {len(texts)} texts.", file="ids", hint="Give one id per text.")
        emb = self.embed(texts, layers=layers, pooling=pooling, chat=chat)
        columns: dict[str, Any] = {"id": pa.array(ids)}
        for layer, arr in emb.items():
            columns[f"layer_{layer}"] = pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1])
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table(columns)
        table = table.replace_schema_metadata({"base": str(self.base), "adapter": str(self.adapter),
                                               "pooling": pooling,
                                               "quantization": str((self.quantization or {}).get("quantization"))})
        pq.write_table(table, out)
        return out
