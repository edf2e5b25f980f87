"""cruijff-kit: fine-tune, evaluate and compare LLMs from one run spec.

This package imports only light modules (pluggy, pydantic, yaml); backends import torch and friends
inside the functions that do the work.
"""

from cruijff_kit._base.errors import CkError, DataError, PluginError, SpecError, StageError
from cruijff_kit._api.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["CkError", "DataError", "PluginError", "SpecError", "StageError", "__version__", "hookimpl"]
