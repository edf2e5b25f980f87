"""The spec reference page (docs/spec-reference.md), generated from the pydantic models.

``ck schema --markdown`` prints it; a test checks the committed page equals the generated one, so the
reference cannot drift from the code.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from cruijff_kit._api.kinds import EvalConfig, LoraOptions, Prompt, Resources, SchedulerConfig, TrainConfig
from cruijff_kit._api.registry import registry
from cruijff_kit._engine.spec import ModelSpec, SpecModel


def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("cruijff_kit._api.kinds.", "").replace("cruijff_kit._engine.spec.", "")
    return text.replace("<class '", "").replace("'>", "").replace("NoneType", "None")


def model_table(model: type[BaseModel]) -> str:
    """A markdown table of a model's fields: name, type, default, description."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, f in model.model_fields.items():
        if f.is_required():
            default = "**required**"
        elif f.default_factory is not None:
            try:
                value = f.default_factory()  # type: ignore[call-arg]
            except TypeError:
                value = "…"
            default = f"`{value.model_dump() if isinstance(value, BaseModel) else value}`"
        else:
            default = f"`{f.default}`"
        desc = (f.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | `{_type_name(f.annotation)}` | {default} | {desc} |".replace("`|`", "` or `"))
    return "\n".join(lines)


SECTIONS: list[tuple[str, type[BaseModel], str]] = [
    ("Top level", SpecModel, "Every spec is one YAML mapping with these keys."),
    ("`model`", ModelSpec, "The base model."),
    ("`prompt` (and `eval[i].prompt`)", Prompt, "How instruct rows become chat messages. An eval task's "
     "prompt overrides the run's field by field."),
    ("`train` (every trainer)", TrainConfig, "Options every trainer plugin accepts; plugins add their own "
     "(see `ck plugins` and each plugin's README)."),
    ("`train.lora`", LoraOptions, "The LoRA adapter."),
    ("`eval[i]` (every evaluator)", EvalConfig, "What to evaluate; evaluator plugins add how."),
    ("`scheduler` (every scheduler)", SchedulerConfig, "Where stages run."),
    ("`scheduler.resources`", Resources, "What one stage asks of the machine."),
]


def spec_reference() -> str:
    """The whole reference page."""
    out = [
        "# Run spec reference",
        "",
        "Generated from the code by `ck schema --markdown`; do not edit by hand.",
        "Relative paths are relative to the spec file's folder. Unknown keys are errors everywhere.",
        "A plugin section (`dataset`, `train`, `eval[i]`, `scheduler`) is `plugin: NAME` plus that",
        "plugin's options; `ck plugins` lists them for what is installed, `ck schema` gives a JSON Schema.",
        "",
        "Sweeps: `sweep` maps dotted paths (`train.lora.rank`, `eval[0].checkpoints`) to lists of values;",
        "runs are the cartesian product, crossed with the `variants` list (each a mapping of dotted paths).",
        "Precedence: the file < sweep and variant values < `--set` on the command line.",
        "",
    ]
    owned = [table for owner in registry().spec_sections.values() for table in owner.reference()]
    for title, model, text in SECTIONS + owned:
        out += [f"## {title}", "", text, "", model_table(model), ""]
    return "\n".join(out)
