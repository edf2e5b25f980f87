"""Synthetic "model organism" tasks: a rule maps a short sequence of symbols to an answer.

Inputs are sequences of ``bits`` (0/1), ``digits`` (0-9) or ``letters`` (a-z) of length ``k`` (or of
lengths ``k..k_max``). The rule computes the answer:

| rule | answer |
|---|---|
| ``parity`` | sum of the symbols' values mod 2 (a letter's value is its position, a=0) |
| ``first``, ``last``, ``nth`` | the first, last or ``position``-th (0-based) symbol |
| ``length`` | the number of symbols |
| ``constant`` | always ``value`` |
| ``coin`` | ``1`` with probability ``p``, else ``0``, independent of the input (a noise control) |
| ``majority`` | the most frequent symbol (ties: the one first in the alphabet) |
| ``min``, ``max`` | the smallest or largest symbol |
| ``weighted-sum`` | sum of weight x value; with ``threshold``: ``1`` when the sum is above it, else ``0`` |

Designs: ``memorization`` (validation and test are the training rows), ``in-distribution`` (three
disjoint samples at the same lengths) and ``out-of-distribution`` (in-distribution plus one split
``validation_ood_<i>`` per entry ``i`` of ``ood_lengths``). Formats: ``spaced`` (``0 1 1``), ``dense``
(``011``), ``comma``, ``tab``, ``pipe``. Everything is seeded; :func:`write_synthetic` writes our JSON
instruct format named by a content hash, with the settings in its ``.meta.json`` sidecar.
"""

from __future__ import annotations

import random
import string
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from cruijff_kit._api.kinds import PluginConfig
from cruijff_kit._base.errors import DataError
from cruijff_kit._base.ownership import check_writable, remove_path
from cruijff_kit.data import _provenance as provenance

#: Bumped when the same settings would give different rows.
GENERATOR_VERSION = 1

ALPHABETS: dict[str, str] = {"bits": "01", "digits": string.digits, "letters": string.ascii_lowercase}
SEPARATORS: dict[str, str] = {"spaced": " ", "dense": "", "comma": ",", "tab": "\t", "pipe": "|"}
RULES = ("parity", "first", "last", "nth", "length", "constant", "coin", "majority", "min", "max",
         "weighted-sum")
DESIGNS = ("memorization", "in-distribution", "out-of-distribution")

Rule = Literal["parity", "first", "last", "nth", "length", "constant", "coin", "majority", "min", "max",
               "weighted-sum"]


class SyntheticSettings(PluginConfig):
    """Everything that decides a synthetic dataset (all of it goes into the content hash)."""

    alphabet: Literal["bits", "digits", "letters"] = Field("bits", description="Symbols of the inputs.")
    k: int = Field(10, gt=0, le=256, description="Sequence length (the shortest one when k_max is set).")
    k_max: int | None = Field(None, gt=0, le=256, description="Longest length; lengths are drawn from k..k_max.")
    rule: Rule = Field("parity", description="What the answer is; see the module docs.")
    position: int = Field(0, ge=0, description="0-based position read by rule `nth`.")
    value: str = Field("0", description="The answer of rule `constant`.")
    p: float = Field(0.5, ge=0.0, le=1.0, description="Probability of answer 1 under rule `coin`.")
    weights: list[float] | None = Field(None, description="Weights of rule `weighted-sum` (default: all 1); "
                                        "at least as many as the longest sequence.")
    threshold: float | None = Field(None, description="Rule `weighted-sum`: answer 1 when the sum is above "
                                    "this, else 0 (binary); unset: the sum itself.")
    design: Literal["memorization", "in-distribution", "out-of-distribution"] = "in-distribution"
    ood_lengths: list[int] = Field(default_factory=list, description="Lengths of the validation_ood_<i> splits.")
    n_train: int = Field(200, gt=0)
    n_validation: int = Field(50, ge=0)
    n_test: int = Field(50, ge=0)
    n_ood: int = Field(50, gt=0, description="Rows of each validation_ood_<i> split.")
    format: Literal["spaced", "dense", "comma", "tab", "pipe"] = Field("spaced", description="How symbols are joined.")
    instruction: str | None = Field(None, description="Text put before every sequence (on its own line).")
    seed: int = Field(0, ge=0, lt=2**32, description="Seed of every random choice (0 <= seed < 2**32).")

    @model_validator(mode="after")
    def _consistent(self) -> SyntheticSettings:
        if self.k_max is not None and self.k_max < self.k:
            raise ValueError(f"k_max ({self.k_max}) is below k ({self.k})")
        lengths = self.lengths()
        if self.design == "out-of-distribution":
            if not self.ood_lengths:
                raise ValueError("design out-of-distribution needs ood_lengths (e.g. [12, 16])")
            if any(n <= 0 for n in self.ood_lengths):
                raise ValueError("ood_lengths must be positive")
        elif self.ood_lengths:
            raise ValueError(f"ood_lengths apply to design out-of-distribution only, not {self.design}")
        longest = max(lengths + self.ood_lengths)
        shortest = min(lengths + self.ood_lengths)
        if self.rule == "nth" and self.position >= shortest:
            raise ValueError(f"rule nth reads position {self.position} (0-based), but some sequences have "
                             f"only {shortest} symbols")
        if self.weights is not None:
            if self.rule != "weighted-sum":
                raise ValueError("weights apply to rule weighted-sum only")
            if len(self.weights) < longest:
                raise ValueError(f"weights has {len(self.weights)} entries, but sequences are up to {longest} "
                                 "long; give one weight per position")
        if self.threshold is not None and self.rule != "weighted-sum":
            raise ValueError("threshold applies to rule weighted-sum only")
        return self

    def lengths(self) -> list[int]:
        """The in-distribution lengths."""
        return list(range(self.k, (self.k_max or self.k) + 1))


# --------------------------------------------------------------------------- rules
def symbol_value(alphabet: str, symbol: str) -> int:
    """A symbol's number: its position in the alphabet (``'1'`` -> 1, ``'c'`` -> 2)."""
    return ALPHABETS[alphabet].index(symbol)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else format(x, ".6g")


def apply_rule(s: SyntheticSettings, seq: str, rng: random.Random) -> str:
    """The answer of ``seq`` under the settings' rule (``rng`` is used by ``coin`` only)."""
    values = [symbol_value(s.alphabet, c) for c in seq]
    rule = s.rule
    if rule == "parity":
        return str(sum(values) % 2)
    if rule == "first":
        return seq[0]
    if rule == "last":
        return seq[-1]
    if rule == "nth":
        return seq[s.position]
    if rule == "length":
        return str(len(seq))
    if rule == "constant":
        return s.value
    if rule == "coin":
        return "1" if rng.random() < s.p else "0"
    if rule == "majority":
        counts = Counter(seq)
        top = max(counts.values())
        return min((c for c in counts if counts[c] == top), key=lambda c: symbol_value(s.alphabet, c))
    if rule == "min":
        return min(seq, key=lambda c: symbol_value(s.alphabet, c))
    if rule == "max":
        return max(seq, key=lambda c: symbol_value(s.alphabet, c))
    if rule == "weighted-sum":
        weights = s.weights or [1.0] * len(values)
        total = sum(w * v for w, v in zip(weights, values, strict=False))
        if s.threshold is not None:
            return "1" if total > s.threshold else "0"
        return _number(total)
    raise ValueError(f"unknown rule {rule!r}")  # pragma: no cover - Literal guards it


# --------------------------------------------------------------------------- sampling
def _space(alphabet: str, lengths: list[int]) -> int:
    size = len(ALPHABETS[alphabet])
    return sum(size ** n for n in lengths)


def sample_sequences(alphabet: str, lengths: list[int], n: int, rng: random.Random,
                     exclude: set[str] | None = None) -> list[str]:
    """``n`` distinct sequences with lengths drawn uniformly from ``lengths``, none of them in ``exclude``."""
    exclude = exclude if exclude is not None else set()
    symbols = ALPHABETS[alphabet]
    available = _space(alphabet, lengths) - sum(1 for e in exclude if len(e) in lengths)
    if n > available:
        raise DataError(f"asked for {n} distinct sequences of {alphabet} with lengths {lengths[0]}"
                        f"{'..' + str(lengths[-1]) if len(lengths) > 1 else ''}, but only {available} exist "
                        "(after the other splits took theirs). Ask for fewer rows, or longer sequences.")
    out: list[str] = []
    seen = set(exclude)
    if n > available // 2 and available <= 1_000_000:  # dense: enumerate, then draw a length and a sequence
        pools = {length: [q for q in _all(symbols, length) if q not in seen] for length in lengths}
        for pool in pools.values():
            rng.shuffle(pool)
        for _ in range(n):
            out.append(pools[rng.choice([n_ for n_ in lengths if pools[n_]])].pop())
        return out
    while len(out) < n:
        length = rng.choice(lengths)
        seq = "".join(rng.choice(symbols) for _ in range(length))
        if seq not in seen:
            seen.add(seq)
            out.append(seq)
    return out


def _all(symbols: str, length: int) -> list[str]:
    seqs = [""]
    for _ in range(length):
        seqs = [s + c for s in seqs for c in symbols]
    return seqs


def render_sequence(s: SyntheticSettings, seq: str) -> str:
    """The input text of a sequence in the settings' format (with the instruction before it)."""
    text = SEPARATORS[s.format].join(seq)
    return f"{s.instruction}\n{text}" if s.instruction else text


def generate(s: SyntheticSettings) -> dict[str, list[dict[str, str]]]:
    """The splits of the dataset as ``{split: [{input, output}]}`` (deterministic for the settings)."""
    rng = random.Random(s.seed)
    label_rng = random.Random(f"{s.seed}:labels")

    def rows(seqs: list[str]) -> list[dict[str, str]]:
        return [{"input": render_sequence(s, q), "output": apply_rule(s, q, label_rng)} for q in seqs]

    if s.design == "memorization":
        train = rows(sample_sequences(s.alphabet, s.lengths(), s.n_train, rng))
        return {"train": train, "validation": [dict(r) for r in train], "test": [dict(r) for r in train]}
    used: set[str] = set()
    splits: dict[str, list[dict[str, str]]] = {}
    for name, n in (("train", s.n_train), ("validation", s.n_validation), ("test", s.n_test)):
        if n == 0:
            continue
        seqs = sample_sequences(s.alphabet, s.lengths(), n, rng, used)
        used.update(seqs)
        splits[name] = rows(seqs)
    for i, length in enumerate(s.ood_lengths):
        seqs = sample_sequences(s.alphabet, [length], s.n_ood, rng, used)
        used.update(seqs)
        splits[f"validation_ood_{i}"] = rows(seqs)
    return splits


# --------------------------------------------------------------------------- writing
def settings_from(options: dict[str, Any], *, where: str = "ck data synthetic") -> SyntheticSettings:
    """Validate settings; a problem becomes a DataError naming the setting."""
    try:
        return SyntheticSettings.model_validate(options)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        at = f"`{field}`: " if field else ""
        raise DataError(f"{where}: {at}{msg}. Fix that setting (see `ck data synthetic --help`).") from None


def metadata(s: SyntheticSettings, key: str) -> dict[str, Any]:
    """The sidecar content (without rows and data hash, which :func:`provenance.write_with_meta` adds)."""
    info: dict[str, Any] = {
        "key": key,
        "generator": {"name": "synthetic", "version": GENERATOR_VERSION},
        "seed": s.seed,
        "settings": s.model_dump(mode="json"),
        "lengths": {"train": s.lengths()},
    }
    for i, length in enumerate(s.ood_lengths):
        info["lengths"][f"validation_ood_{i}"] = [length]
    return info


def write_synthetic(dst: str | Path, settings: SyntheticSettings, *, force: bool = False,
                    overwrite: bool = False) -> tuple[Path, bool]:
    """Write the dataset (``dst`` a folder, or a ``.json`` file); returns ``(path, reused)``.

    An existing output with the same content key is reused unless ``force``. An existing file without
    a ``.meta.json`` sidecar (not generated by cruijff-kit) is written over only with ``overwrite``.
    """
    key = provenance.content_key("synthetic", GENERATOR_VERSION, settings.model_dump(mode="json"))
    out = provenance.output_path(dst, "synthetic", key)
    if not force and provenance.find_cached(out, key):
        return out, True
    if check_writable(out, command="ck data synthetic", overwrite=overwrite, error=DataError,
                      ours=lambda p: p.is_file() and provenance.read_meta(p) is not None):
        remove_path(out)
    splits = generate(settings)
    provenance.write_with_meta(out, splits, metadata(settings, key))
    return out, False
