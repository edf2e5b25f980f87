"""Importing torchtune 0.6.1 beside torchao 0.17, and loading its stock recipe files.

torchtune 0.6.1 (its last release) imports ``int4_weight_only`` and
``int8_dynamic_activation_int4_weight`` from ``torchao.quantization``; torchao 0.16 removed both
(newer torchao also removed ``torchao.dtypes.nf4tensor``, hence the pin to 0.17). Only torchtune's
int4 post-training quantizers use those two names, so :func:`import_torchtune` defines them as
functions that raise, before torchtune is first imported. Every module of this plugin that needs
torchtune goes through it; users never see the incompatibility.

torchtune's recipes are scripts in a top-level ``recipes`` folder next to the package, not an
importable module; :func:`stock_recipe_module` loads one by path.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

REMOVED_TORCHAO_NAMES = ("int4_weight_only", "int8_dynamic_activation_int4_weight")


def _removed(*_args: Any, **_kwargs: Any) -> Any:
    raise NotImplementedError("torchtune's int4 post-training quantizers need an older torchao; "
                              "they are not available with torchao >= 0.16")


def install_torchao_shim() -> None:
    """Define the two quantizer names torchao removed, so ``import torchtune`` works."""
    import torchao.quantization as quantization

    for name in REMOVED_TORCHAO_NAMES:
        if not hasattr(quantization, name):
            setattr(quantization, name, _removed)


def import_torchtune() -> ModuleType:
    """``import torchtune`` with the torchao shim in place (torchao's notes about CUDA kernels hidden)."""
    if "torchtune" not in sys.modules:
        torchao_log = logging.getLogger("torchao")
        level = torchao_log.level
        torchao_log.setLevel(logging.ERROR)  # "Failed to load ... .so": GPU kernels absent on CPU builds
        try:
            install_torchao_shim()
        finally:
            torchao_log.setLevel(level)
    import torchtune

    return torchtune


def recipes_dir() -> Path:
    """The folder holding torchtune's stock recipe scripts."""
    torchtune = import_torchtune()
    return Path(torchtune.__file__).resolve().parent.parent / "recipes"


def stock_recipe_module(name: str) -> ModuleType:
    """Load ``recipes/<name>.py`` of the installed torchtune once per process."""
    mod_name = f"_ck_torchtune_recipe_{name}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    path = recipes_dir() / f"{name}.py"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None or not path.exists():  # pragma: no cover - broken install
        raise ImportError(f"torchtune's recipe {path} is missing; reinstall torchtune==0.6.1")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module
