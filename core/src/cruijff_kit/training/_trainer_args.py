"""``train.trainer_args``: settings of a trainer's own config class, checked key by key at plan time.

A trainer plugin describes its config class with three tables: the keys its own config class has
(``known``), the keys it already sets from a named spec option (``named``: key -> that option's
path), and the keys it refuses whatever the value (``refused``: key -> why; the run layout depends on
them, or the trainer does not read them). :func:`check_trainer_args` holds ``train.trainer_args`` to
them with one message shape for every trainer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cruijff_kit._base.errors import SpecError, closest, did_you_mean


def _rule(key: str, table: Mapping[str, str]) -> tuple[str, str] | None:
    """The entry of ``table`` that governs dotted ``key``: the key itself or one of its dotted prefixes."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in table:
            return prefix, table[prefix]
    return None


def _below(key: str, table: Mapping[str, str]) -> list[str]:
    """The keys of ``table`` below dotted ``key`` (``optimizer.lr`` below ``optimizer``), sorted."""
    return sorted(k for k in table if k.startswith(f"{key}."))


def check_trainer_args(args: Mapping[str, Any], *, known: Iterable[str], named: Mapping[str, str],
                       refused: Mapping[str, str], owner: str, file: str | None = None,
                       path: str = "train.trainer_args") -> None:
    """Raise a :class:`SpecError` at ``<path>.<key>`` for the first key of ``args`` that may not be set.

    ``known``: the keys of the trainer's config class (for a dotted key, its first part must be one);
    ``named``: keys set from a named spec option (key -> the option's path, e.g. ``train.learning_rate``);
    ``refused``: keys never accepted (key -> the reason). ``named`` and ``refused`` also govern dotted
    keys below theirs (``checkpointer.output_dir`` under ``checkpointer``), and a key above one of theirs
    is refused too: ``optimizer`` (an empty mapping, a scalar or null) would replace the whole section, and
    with it ``optimizer.lr`` that a named option sets. ``owner`` names the config class in messages
    (``TRL's SFTConfig``). An unknown key gets a did-you-mean among ``known``.
    """
    known_set = set(known)
    for key in args:
        where = f"{path}.{key}"
        found = _rule(key, named)
        if found is not None:
            option = found[1]
            raise SpecError(f"`{key}` is set by {option}, so it cannot be set in trainer_args as well.",
                            file=file, path=where, hint=f"Set {option} instead, and remove `{key}` here.")
        found = _rule(key, refused)
        if found is not None:
            raise SpecError(f"`{key}` cannot be set: {found[1]}.", file=file, path=where,
                            hint=f"Remove `{key}` from trainer_args.")
        replaced = [f"{k}, which {named[k]} sets" for k in _below(key, named)]
        replaced += [f"{k}, which cannot be changed ({refused[k]})" for k in _below(key, refused)]
        if replaced:
            raise SpecError(f"`{key}` would replace the whole `{key}` section, and with it {'; and '.join(replaced)}.",
                            file=file, path=where,
                            hint=f"Set single keys below it instead (`{key}._component_` to choose another class "
                                 f"where the section names one, `{key}.<param>` for one setting): each replaces only "
                                 "its own value.")
        head = key.split(".", 1)[0]
        if head not in known_set:
            best = closest(head, known_set)
            hint = (f"Did you mean `{best}`? It is set by {named[best]}; set that instead." if best in named
                    else did_you_mean(head, known_set - set(named) - set(refused)))
            raise SpecError(f"`{head}` is not a setting of {owner}, so nothing would read it.", file=file,
                            path=where, hint=hint)
