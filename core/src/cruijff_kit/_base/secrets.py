"""Keep secrets out of everything the project writes (run folders, scripts, logs, spec snapshots)."""

from __future__ import annotations

import os
import re
from typing import Any

#: Environment variables that always count as secrets.
KNOWN_SECRETS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "OPENAI_API_KEY", "RUNPOD_API_KEY")
_SECRET_NAME = re.compile(r"(API_KEY|TOKEN|SECRET|PASSWORD)$")


def secret_values(env: dict[str, str] | None = None) -> dict[str, str]:
    """Map secret value -> variable name for the secrets set in ``env`` (default: os.environ)."""
    env = os.environ if env is None else env
    found: dict[str, str] = {}
    for name, value in env.items():
        if (name in KNOWN_SECRETS or _SECRET_NAME.search(name)) and value and len(value) >= 6:
            found[value] = name
    return found


def scrub(obj: Any, env: dict[str, str] | None = None) -> Any:
    """Return ``obj`` (str, list, dict, nested) with every secret value replaced by ``<NAME>``."""
    values = secret_values(env)
    if not values:
        return obj
    ordered = sorted(values, key=len, reverse=True)

    def fix(x: Any) -> Any:
        if isinstance(x, str):
            for v in ordered:
                if v in x:
                    x = x.replace(v, f"<{values[v]}>")
            return x
        if isinstance(x, dict):
            return {k: fix(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return type(x)(fix(v) for v in x)
        return x

    return fix(obj)


def is_secret_name(name: str) -> bool:
    """True when an environment variable of this name must never be written out."""
    return name in KNOWN_SECRETS or bool(_SECRET_NAME.search(name))
