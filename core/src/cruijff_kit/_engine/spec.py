"""The run spec: pydantic models, YAML loading, ``--set`` overrides and error messages.

Every section is validated with ``extra="forbid"``. A plugin section (``dataset``, ``train``, each
``eval`` entry, ``scheduler``) names its ``plugin``; the rest of the section is validated by that
plugin's own ``Config`` model, so a key the chosen plugin does not use is an error.

All relative paths in a spec are relative to the folder of the spec file.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cruijff_kit._api.kinds import Prompt
from cruijff_kit._base.errors import SpecError, clip, closest, did_you_mean
from cruijff_kit._base.parsing import parse_yaml_text
from cruijff_kit._base.yamlfile import read_yaml, spec_error_from

SLUG = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
#: Help text of every command's ``--set`` option.
SET_HELP = "Override a spec value: dotted.path=value (beats the file and the sweep). Repeatable."


class ModelSpec(BaseModel):
    """The base model (local folder or hub id), and for eval-only runs an existing adapter."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    path: str = Field(..., description="Local model folder (relative to the spec) or a hub id.")
    adapter: str | None = Field(None, description="Eval-only runs: a PEFT adapter folder to evaluate.")
    revision: str | None = Field(None, description="Hub revision when `path` is a hub id.")


class Section(BaseModel):
    """A plugin section: ``plugin`` picks the backend, every other key is that backend's option."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    plugin: str = Field(..., description="Name of the plugin (see `ck plugins`).")


class SpecModel(BaseModel):
    """The top level of a run spec."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    experiment: str = Field(..., pattern=SLUG, description="Experiment name; also its folder name.")
    description: str | None = None
    output_dir: str = Field("runs", description="Where experiments are written (relative to the spec).")
    seed: int = Field(42, ge=0, lt=2**32, description="Random seed of the run: 0 <= seed < 2**32.")
    model: ModelSpec
    dataset: Section | None = Field(None, description="The data runs train and evaluate on; required unless "
                                   "the spec only holds a `simulate:` section (for `ck simulate`).")
    prompt: Prompt = Field(default_factory=Prompt)
    train: Section | None = Field(None, description="Omit for control or eval-only runs.")
    eval: list[Section] = Field(default_factory=list)
    scheduler: Section = Field(default_factory=lambda: Section(plugin="local"))
    simulate: dict[str, Any] | None = Field(None, description="Settings for `ck simulate`.")
    sweep: dict[str, list[Any]] = Field(default_factory=dict, description="dotted.path: [values]; cartesian "
                                        "(more than 10,000 runs needs `--allow-large-sweep`).")
    variants: list[dict[str, Any]] = Field(
        default_factory=list, description="Explicit list of overrides (dotted.path: value), crossed with sweep."
    )


#: Runs a spec may expand to (sweep x variants) without ``--allow-large-sweep``.
RUNS_WITHOUT_CONFIRMATION = 10_000
#: Runs no spec may expand to, confirmed or not: a plan resolves every run in memory (about 10 KB and
#: 3 ms each) and lists each in plan.md, so this bounds a plan to about 1 GB and minutes, not hours.
MAX_RUNS = 100_000
#: Help of the confirmation flags of ``ck validate``, ``plan`` and ``run``.
ALLOW_LARGE_SWEEP_HELP = f"Confirm a sweep of more than {RUNS_WITHOUT_CONFIRMATION:,} runs (at most {MAX_RUNS:,})."
ALLOW_MANY_EPOCHS_HELP = "Confirm train.epochs above 1,000 (at most 100,000)."

#: Plugin sections: spec key -> plugin kind.
SECTION_KINDS = {"dataset": "dataset", "train": "trainer", "eval": "evaluator", "scheduler": "scheduler"}


# --------------------------------------------------------------------------- YAML and overrides
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_value(text: str, origin: str = "`--set`") -> Any:
    """Parse a ``--set`` value like YAML would, reading ``1e-4`` as a number.

    Text that is not YAML stays text; a key twice in a mapping, deep nesting or an alias bomb is a
    SpecError (the same checks as a spec file).
    """
    if _NUMBER.match(text.strip()):
        try:
            return int(text) if re.fullmatch(r"[+-]?\d+", text.strip()) else float(text)
        except ValueError:  # more digits than Python converts
            raise SpecError(f"the number `{clip(text.strip(), 40)}` has too many digits.", file=origin) from None
    try:
        return parse_yaml_text(text, file=origin)
    except yaml.YAMLError:
        return text


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["train.learning_rate=1e-4"]`` -> ``{"train.learning_rate": 0.0001}``."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SpecError(f"`--set {clip(item, 80)}` needs the form dotted.path=value, e.g. train.learning_rate=1e-4.")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_value(value, origin=f"`--set {clip(key.strip(), 80)}`")
    return out


_INDEX = re.compile(r"^(.*)\[(\d+)\]$")


def split_path(dotted: str) -> list[str | int]:
    """``eval[0].task`` or ``eval.0.task`` -> ``["eval", 0, "task"]``."""
    parts: list[str | int] = []
    for raw in dotted.split("."):
        m = _INDEX.match(raw)
        while m:
            raw = m.group(1)
            parts.extend([raw] if raw else [])
            parts.append(int(m.group(2)))
            raw = ""
            m = None
        if raw:
            parts.append(int(raw) if raw.isdigit() else raw)
    return parts


def set_path(data: dict[str, Any], dotted: str, value: Any, *, origin: str = "", file: str | None = None) -> None:
    """Set ``dotted`` in nested dicts/lists, creating mappings as needed."""
    where = f"{origin}: " if origin else ""

    def fail(problem: str, hint: str | None = None) -> SpecError:
        return SpecError(f"{where}{problem}", file=file, path=dotted, hint=hint)

    parts = split_path(dotted)
    if not parts:
        raise fail("empty path.")
    cur: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(part, int):
            if not isinstance(cur, list) or part >= len(cur):
                raise fail(f"index {part} is out of range.", "Index an existing list entry, e.g. eval[0].")
            cur = cur[part]
            continue
        if not isinstance(cur, dict):
            raise fail(f"`{part}` is inside a {type(cur).__name__}, not a mapping.")
        if cur.get(part) is None:
            cur[part] = [] if isinstance(nxt, int) else {}
        cur = cur[part]
    last = parts[-1]
    if isinstance(last, int):
        if not isinstance(cur, list) or last >= len(cur):
            raise fail(f"index {last} is out of range.", "Index an existing list entry, e.g. eval[0].")
        cur[last] = value
    elif isinstance(cur, dict):
        cur[last] = value
    else:
        raise fail(f"cannot set `{last}` inside a {type(cur).__name__}; the value above it is not a mapping.")


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any], origin: str,
                    file: str | None = None) -> dict[str, Any]:
    """A deep copy of ``data`` with every dotted override applied."""
    out = copy.deepcopy(data)
    for key, value in overrides.items():
        set_path(out, key, copy.deepcopy(value), origin=origin, file=file)
    return out


# --------------------------------------------------------------------------- the loaded spec
@dataclass
class LoadedSpec:
    """A spec file read and checked at the top level (plugin sections are checked per run)."""

    file: Path
    raw: dict[str, Any]
    model: SpecModel
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def spec_dir(self) -> Path:
        """Folder that relative paths in the spec are relative to."""
        return self.file.parent

    @property
    def experiment_dir(self) -> Path:
        """``<output_dir>/<experiment>``, absolute."""
        return (self.spec_dir / self.model.output_dir).resolve() / self.model.experiment


def validate_top(data: dict[str, Any], file: str | None) -> SpecModel:
    """Validate the top level of a spec dict (plugin options are checked later)."""
    try:
        return SpecModel.model_validate(data)
    except ValidationError as exc:
        raise spec_error_from(exc, SpecModel, file=file) from None


def check_dataset_named(model: SpecModel, file: str) -> None:
    """SpecError unless the spec names a dataset or is simulate-only (no runs to plan at all)."""
    if model.dataset is not None:
        return
    runs_keys = [k for k in ("train", "eval", "sweep", "variants") if getattr(model, k)]
    if model.simulate is None or runs_keys:
        also = f" (the spec sets {', '.join(f'`{k}`' for k in runs_keys)}, which need one)" if runs_keys else ""
        raise SpecError(f"required key `dataset` is missing{also}.", file=file, path="dataset",
                        hint="Add `dataset: {plugin: ..., ...}` (see `ck plugins`); a spec without runs holds "
                             "only a `simulate:` section, for `ck simulate`.")


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> LoadedSpec:
    """Read a spec file, apply ``--set`` overrides, and validate the top level."""
    file = Path(path).resolve()
    raw = read_yaml(file)
    overrides = overrides or {}
    for key in overrides:
        top = str(split_path(key)[0]) if split_path(key) else key
        if top not in SpecModel.model_fields:
            raise SpecError(f"`--set {key}`: unknown top-level key `{top}`.", file=str(file),
                            hint=did_you_mean(top, SpecModel.model_fields))
    merged = apply_overrides(raw, overrides, "--set", str(file))
    model = validate_top(merged, str(file))
    check_dataset_named(model, str(file))
    for key in model.sweep:
        top = str(split_path(key)[0]) if split_path(key) else key
        if top in ("sweep", "variants", "experiment", "output_dir"):
            raise SpecError(f"`{key}` cannot be swept.", file=str(file), path=f"sweep.{key}")
        if top not in SpecModel.model_fields:
            best = closest(top, SpecModel.model_fields)
            raise SpecError(f"unknown top-level key `{top}` in sweep path `{key}`.", file=str(file),
                            path=f"sweep.{key}", hint=f"Did you mean `{best}`?" if best else None)
        if not model.sweep[key]:
            raise SpecError("a sweep axis needs at least one value.", file=str(file), path=f"sweep.{key}")
    return LoadedSpec(file=file, raw=merged, model=model, overrides=overrides)
