"""inspect-ai extension entry point (group ``inspect_ai``): the ``ck`` model provider and the scorers.

inspect imports this module when it loads extensions; the provider class itself (torch, peft) is
imported only when a ``ck/...`` model is created.
"""

from __future__ import annotations

from typing import Any

from inspect_ai.model import modelapi

from cruijff_kit_inspect import scorers  # noqa: F401  (registers risk, numeric_risk, continuous, classification)


@modelapi(name="ck")
def ck() -> Any:
    """``ck/<base model path or id>`` with model args adapter, dtype, device, batch_size, merge."""
    from cruijff_kit_inspect.provider import CkModelAPI

    return CkModelAPI
