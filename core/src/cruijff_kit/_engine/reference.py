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


#: How to wire ``ck schema`` to an editor: a section of the reference page.
EDITOR_SECTION = [
    "## Editor completion and checking",
    "",
    "`ck schema > ck-schema.json` writes the JSON Schema (draft 2020-12) of a spec, with the options of",
    "every installed plugin and of `simulate` (write it again after installing or upgrading a plugin).",
    "An editor using the YAML language server (version 1.20 or later, e.g. VS Code's YAML extension)",
    "then completes keys and plugin names, shows each key's description, and marks a misspelt key at",
    "the top level, inside a plugin's options and inside `simulate`. Wire it for one spec with a first line",
    "",
    "```yaml",
    "# yaml-language-server: $schema=./ck-schema.json",
    "```",
    "",
    "(the path is relative to the spec), or for every spec of a workspace in VS Code's",
    "`.vscode/settings.json` (paths relative to the workspace folder):",
    "",
    "```json",
    "{",
    '  "yaml.schemas": {"./ck-schema.json": ["experiments/*.yaml"]},',
    '  "yaml.yamlVersion": "1.1"',
    "}",
    "```",
    "",
    "`yaml.yamlVersion: 1.1` makes the editor read `yes`, `no`, `on` and `off` as true and false, as",
    "`ck` does. The schema is a guide while typing; `ck validate` is the judge (it also checks what a",
    "schema cannot, such as files that must exist and values that must fit together).",
    "",
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
        *EDITOR_SECTION,
    ]
    owned = [table for owner in registry().spec_sections.values() for table in owner.reference()]
    for title, model, text in SECTIONS + owned:
        out += [f"## {title}", "", text, "", model_table(model), ""]
    return "\n".join(out)
