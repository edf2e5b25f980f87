"""The model hub's default cache folder, derived from the environment exactly as ``huggingface_hub`` does.

``huggingface_hub.constants.HF_HUB_CACHE`` holds the same folder, but fixed once, when the library is
first imported: a process that sets ``HF_HUB_CACHE`` or ``HF_HOME`` later (a profile, a test) would
read the old folder from it, and importing the library costs a plan a noticeable part of a second.
:func:`hub_cache_dir` applies the rules of ``huggingface_hub/constants.py`` (2.x) on each call instead,
in this one place (``tests/test_public_apis.py`` compares it with the library's constant in fresh
processes for each variable):

1. ``HF_HUB_CACHE`` if set, else
2. ``HUGGINGFACE_HUB_CACHE`` (the legacy name) if set, else
3. ``HF_HOME/hub``, where ``HF_HOME`` defaults to ``XDG_CACHE_HOME/huggingface`` and ``XDG_CACHE_HOME``
   to ``~/.cache``;

``~`` and ``$VAR`` are expanded in ``HF_HOME`` and in the final folder. A variable set to the empty
string counts as set, as it does for the library.
"""

from __future__ import annotations

import os
from pathlib import Path


def _expand(path: str) -> str:
    return os.path.expandvars(os.path.expanduser(path))


def hub_cache_dir() -> Path:
    """The folder ``huggingface_hub`` would use as its hub cache in the current environment."""
    default_home = os.path.join(os.path.expanduser("~"), ".cache")
    hf_home = _expand(os.getenv("HF_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", default_home), "huggingface")))
    legacy = os.getenv("HUGGINGFACE_HUB_CACHE", os.path.join(hf_home, "hub"))
    return Path(_expand(os.getenv("HF_HUB_CACHE", legacy)))
