"""The user profile: per-user scheduler settings (account, partition, GPU type...), never in the spec.

Looked up as ``ck.profile.yaml`` beside the spec, else ``profile.yaml`` in the platform config
folder (e.g. ``~/.config/cruijff-kit/``), else ``$CK_PROFILE``. Top-level keys are scheduler plugin
names (validated by that plugin's ``Profile`` model) plus ``models_cache``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cruijff_kit._base.errors import SpecError
from cruijff_kit._base.yamlfile import read_yaml, spec_error_from

PROFILE_NAME = "ck.profile.yaml"


def user_profile_path() -> Path:
    """The profile in the platform's config folder."""
    from platformdirs import user_config_dir

    return Path(user_config_dir("cruijff-kit")) / "profile.yaml"


def find_profile(spec_dir: Path | None) -> Path | None:
    """The profile file that applies (beside the spec wins, then $CK_PROFILE, then the user's)."""
    candidates = []
    if spec_dir is not None:
        candidates.append(Path(spec_dir) / PROFILE_NAME)
    if os.environ.get("CK_PROFILE"):
        candidates.append(Path(os.environ["CK_PROFILE"]))
    candidates.append(user_profile_path())
    for c in candidates:
        if c.exists():
            return c
    return None


def load_profile(spec_dir: Path | None) -> tuple[Path | None, dict[str, Any]]:
    """(path, data) of the profile that applies; empty when there is none."""
    path = find_profile(spec_dir)
    if path is None:
        return None, {}
    data = read_yaml(path, what="profile")
    check_no_secrets(data, path)
    return path, data


def scheduler_profile(scheduler_cls: Any, spec_dir: Path | None) -> Any:
    """The validated profile section for a scheduler class (None when it takes none)."""
    model = getattr(scheduler_cls, "Profile", None)
    if model is None:
        return None
    path, data = load_profile(spec_dir)
    section = data.get(scheduler_cls.name, {}) or {}
    try:
        return model.model_validate(section)
    except ValidationError as exc:
        raise spec_error_from(exc, model, file=str(path) if path else "(profile)",
                              prefix=scheduler_cls.name) from None


def write_profile(path: Path, data: dict[str, Any]) -> None:
    """Write a profile file (merging with an existing one)."""
    from cruijff_kit._base.fileio import atomic_write_yaml

    existing = read_yaml(path, what="profile") if path.exists() else {}
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(existing.get(key), dict):
            existing[key].update(value)
        else:
            existing[key] = value
    atomic_write_yaml(path, existing)


def check_no_secrets(data: dict[str, Any], path: Path) -> None:
    """Refuse literal credentials in a profile (they belong in the environment; name the variable).

    A secret-named key with a literal value (``hf_token: hf_...``; mappings named ``*_refs`` hold names
    of secrets kept elsewhere and are skipped), a shell line or argument that sets one
    (``export HF_TOKEN=hf_...``, ``--api-key=...``), a URL with a password, or the value of a secret
    environment variable anywhere.
    """
    from cruijff_kit._base.secrets import is_secret_name, refuse_literal_secrets

    def walk(obj: Any, where: str) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if is_secret_name(str(k)) and isinstance(v, str) and v and not v.startswith("$"):
                    raise SpecError("holds a secret value.", file=str(path), path=f"{where}{k}",
                                    hint="Keep secrets in environment variables; name the variable instead "
                                         f"(`{k}: ${str(k).upper()}` where the option takes a variable, or the "
                                         "option the plugin offers for naming one).")
                if not str(k).lower().endswith("_refs"):
                    walk(v, f"{where}{k}.")

    walk(data, "")
    refuse_literal_secrets(data, file=str(path))
