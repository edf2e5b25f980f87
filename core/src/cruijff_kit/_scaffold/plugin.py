"""``ck new plugin KIND NAME``: a complete third-party plugin distribution.

The distribution has a ``pyproject.toml`` with the ``cruijff_kit`` entry point, a package whose
``__init__.py`` holds only the ``@hookimpl`` function, the plugin class with its pydantic ``Config``,
a README and tests that pass as generated. Every template works as written: the dataset reads JSON
lines of ``{split, input, output}``; the evaluator scores exact matches with
:mod:`cruijff_kit.inference`; the trainer is a minimal LoRA loop in plain PyTorch
(``templates_trainer``); the scheduler runs each stage as a ``ck stage`` subprocess, one at a time
(``templates_scheduler``); the simulator answers through a Python function named in its section
(``templates_simulator``).
"""

from __future__ import annotations

from pathlib import Path

from cruijff_kit._scaffold.names import Names, check_name, write_files
from cruijff_kit._scaffold.templates_scheduler import SCHEDULER, SCHEDULER_TESTS
from cruijff_kit._scaffold.templates_simulator import SIMULATOR, SIMULATOR_TESTS
from cruijff_kit._scaffold.templates_trainer import TRAINER, TRAINER_TESTS

#: Plugin kinds ``ck new plugin`` can write -> (base class, base config, hook).
PLUGIN_KINDS = {
    "dataset": ("Dataset", "DatasetConfig", "register_datasets"),
    "evaluator": ("Evaluator", "EvalConfig", "register_evaluators"),
    "trainer": ("Trainer", "TrainConfig", "register_trainers"),
    "scheduler": ("Scheduler", "SchedulerConfig", "register_schedulers"),
    "simulator": ("Simulator", "SimulatorConfig", "register_simulators"),
}

PYPROJECT = '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "__DIST__"
version = "0.1.0"
description = "A cruijff-kit __KIND__ plugin: __NAME__."
requires-python = ">=3.11"
dependencies = ["cruijff-kit__CK_EXTRAS____CK_RANGE__"]

[project.optional-dependencies]
test = ["pytest"]

[project.entry-points.cruijff_kit]
__NAME__ = "__PACKAGE__"

[tool.setuptools.packages.find]
where = ["src"]
'''

INIT = '''"""__NAME__: a cruijff-kit __KIND__ plugin.

Only the hook lives here, so `ck --help` and plugin discovery stay fast: the class is imported when
the hook is called, and heavy libraries only inside the methods that do the work.
"""

from cruijff_kit import hookimpl


@hookimpl
def __HOOK__(register):
    """Register the __KIND__ with cruijff-kit."""
    from __PACKAGE__.plugin import __CLASS__

    register(__CLASS__)
'''

DATASET = '''"""The __NAME__ dataset: a JSON lines file of ``{"split": ..., "input": ..., "output": ...}`` rows.

Rows without ``split`` go to ``train``. Instruct rows are rendered with the run's prompt into the
canonical ``messages`` form by the core, like the built-in formats.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from cruijff_kit import DataError, Dataset, DatasetConfig


class __CLASS__Config(DatasetConfig):
    """Options of __NAME__ (unknown keys are errors)."""

    path: str = Field(..., description="The JSON lines file (relative to the spec file's folder).")


class __CLASS__(Dataset):
    """Instruct rows from one JSON lines file with a split column."""

    name = "__NAME__"
    description = "A JSON lines file of {split, input, output} rows."
    Config = __CLASS__Config

    def check(self, run: Any) -> None:
        """Plan-time: the file exists."""
        if not self.path(self.config.path).is_file():
            raise DataError(f"{self.config.path}: no such file (dataset.path of plugin __NAME__). "
                            "Point dataset.path at a JSON lines file relative to the spec.")

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        """The raw rows per split (a line that is not JSON, repeats a key or nests too deep is a DataError)."""
        from cruijff_kit.data import parse_jsonl, read_text

        file = self.path(self.config.path)
        splits: dict[str, list[dict[str, Any]]] = {}
        values, numbers = parse_jsonl(file, read_text(file))
        for row, number in zip(values, numbers, strict=True):
            if not isinstance(row, dict):
                raise DataError(f"{file}: line {number} is not a JSON object.")
            splits.setdefault(str(row.pop("split", "train")), []).append(row)
        return splits

    def load(self, prompt: Any) -> Any:
        """The canonical DatasetDict."""
        from cruijff_kit.data import INSTRUCT, canonical_rows, check_rows, to_dataset_dict

        file = self.path(self.config.path)
        splits = {split: canonical_rows(check_rows(rows, INSTRUCT, file=file, split=split), INSTRUCT, prompt)
                  for split, rows in self.rows().items()}
        return to_dataset_dict(splits, file=file)

    def describe(self, prompt: Any = None) -> dict[str, Any]:
        """Rows per split, for `ck plan`."""
        return {"rows": {split: len(rows) for split, rows in self.rows().items()}}
'''

EVALUATOR = '''"""The __NAME__ evaluator: greedy answers scored by exact match (after stripping spaces).

The model (base, or base + the target's adapter) is loaded with :func:`cruijff_kit.inference.load`,
the same path the built-in evaluators use.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field

from cruijff_kit import EvalConfig, Evaluator


class __CLASS__Config(EvalConfig):
    """Options of __NAME__ (unknown keys are errors)."""

    max_new_tokens: int = Field(16, gt=0, description="Longest answer in tokens.")
    batch_size: int = Field(8, gt=0, description="Prompts per forward pass.")
    limit: int | None = Field(None, gt=0, description="Evaluate only the first N rows.")
    device: str = Field("auto", description="auto, cpu, cuda:0, ...")


def exact_match(answer: str, target: str) -> bool:
    """The scoring rule: equal after stripping surrounding whitespace."""
    return answer.strip() == target.strip()


class __CLASS__(Evaluator):
    """Exact-match accuracy of greedy answers."""

    name = "__NAME__"
    description = "Exact-match accuracy of greedy answers."
    Config = __CLASS__Config

    def evaluate(self, ctx: Any) -> dict[str, Any]:
        """Answer every row of the split; write answers.jsonl; return accuracy."""
        from cruijff_kit.data import split_target
        from cruijff_kit.inference import InferenceModel, load_model
        from cruijff_kit.scoring import mean_stderr

        cfg = self.config
        rows = list(ctx.dataset()[cfg.split])[: cfg.limit]
        model, tok, device = load_model(ctx.model_path, ctx.target.adapter, device=cfg.device)
        m = InferenceModel(model, tok, device, seed=ctx.seed, batch_size=cfg.batch_size, progress=False)
        prompts, targets, systems = [], [], []
        for row in rows:
            messages, target = split_target(row["messages"])
            systems.append(next((x["content"] for x in messages if x["role"] == "system"), None))
            prompts.append(next(x["content"] for x in reversed(messages) if x["role"] == "user"))
            targets.append(target or "")
        answers = m.generate(prompts, max_new_tokens=cfg.max_new_tokens, system=systems[0] if systems else None)
        correct = [float(exact_match(a, t)) for a, t in zip(answers, targets, strict=True)]
        ctx.eval_dir.mkdir(parents=True, exist_ok=True)
        with (ctx.eval_dir / "answers.jsonl").open("w") as f:
            for p, a, t, c in zip(prompts, answers, targets, correct, strict=True):
                f.write(json.dumps({"prompt": p, "answer": a, "target": t, "correct": bool(c)}) + "\\n")
        mean, se = mean_stderr(correct)
        return {"accuracy": {"value": mean, "stderr": se}, "samples": len(rows)}
'''

TEST_COMMON = '''"""Tests of the __NAME__ __KIND__ plugin (run with `pytest`)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from __PACKAGE__ import __HOOK__
from __PACKAGE__.plugin import __CLASS__


def test_registers_the_class() -> None:
    registered = []
    __HOOK__(register=registered.append)
    assert registered == [__CLASS__]
    assert __CLASS__.name == "__NAME__"


def test_config_refuses_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        __CLASS__.Config.model_validate({**MINIMAL, "no_such_option": 1})
'''

TEST_KIND = {
    "dataset": '''
MINIMAL = {"path": "rows.jsonl"}


def test_reads_splits(tmp_path) -> None:
    import json

    rows = [{"split": "train", "input": "a", "output": "A"}, {"split": "test", "input": "b", "output": "B"},
            {"input": "c", "output": "C"}]
    (tmp_path / "rows.jsonl").write_text("\\n".join(json.dumps(r) for r in rows))
    plugin = __CLASS__(__CLASS__.Config.model_validate(MINIMAL), base_dir=tmp_path)
    plugin.check(None)
    assert plugin.describe() == {"rows": {"train": 2, "test": 1}}
''',
    "evaluator": '''
MINIMAL = {"task": "exact"}


def test_scoring_rule() -> None:
    from __PACKAGE__.plugin import exact_match

    assert exact_match(" APPLE\\n", "APPLE")
    assert not exact_match("apple", "APPLE")
''',
    "trainer": TRAINER_TESTS,
    "scheduler": SCHEDULER_TESTS,
    "simulator": SIMULATOR_TESTS,
}

README = '''# __DIST__

A cruijff-kit __KIND__ plugin, `__NAME__`.

```bash
pip install -e .          # registers the entry point
ck plugins                # lists __NAME__
pytest tests              # the plugin's tests
```

In a spec:

```yaml
__EXAMPLE__
```

Edit `src/__PACKAGE__/plugin.py`: options go in `__CLASS__Config` (validated; unknown keys are
errors), plan-time checks in `check`, the work in the kind's method.
'''

EXAMPLES = {
    "dataset": "dataset: {plugin: __NAME__, path: rows.jsonl}",
    "evaluator": "eval:\n  - {plugin: __NAME__, task: exact, max_new_tokens: 8}",
    "trainer": "train: {plugin: __NAME__, epochs: 2, learning_rate: 1.0e-3, lora: {rank: 8}}",
    "scheduler": "scheduler: {plugin: __NAME__, env: {OMP_NUM_THREADS: \"2\"}}",
    "simulator": ("simulate:                          # ck simulate SPEC\n"
                  "  tasks: {path: tasks.json}\n"
                  "  user: {plugin: __NAME__, function: people.py:user}\n"
                  "  assistant: {plugin: __NAME__, function: __PACKAGE__.plugin:echo}"),
}


def ck_range() -> str:
    """The cruijff-kit versions a generated plugin accepts: this minor version (``>=0.1,<0.2``)."""
    from cruijff_kit._base.version import __version__

    major, minor = (int(x) for x in __version__.split(".")[:2])
    return f">={major}.{minor},<{major}.{minor + 1}"


def _fill(text: str, n: Names, kind: str) -> str:
    base, base_config, hook = PLUGIN_KINDS[kind]
    # a dataset plugin builds a datasets.DatasetDict: the core's `data` extra installs that library
    extras = "[data]" if kind == "dataset" else ""
    for key, value in (("__CK_EXTRAS__", extras), ("__CK_RANGE__", ck_range()), ("__EXAMPLE__", EXAMPLES[kind]),
                       ("__PACKAGE__", n.package),
                       ("__DIST__", n.dist),
                       ("__CLASS__", n.cls), ("__HOOK__", hook), ("__KIND__", kind), ("__NAME__", n.name)):
        text = text.replace(key, value)
    return text


def plugin_files(kind: str, name: str) -> dict[str, str]:
    """Relative path -> text of the distribution for a ``kind`` plugin called ``name``."""
    from cruijff_kit._base.errors import SpecError

    if kind not in PLUGIN_KINDS:
        raise SpecError(f"kind {kind!r} has no template.", file="ck new plugin",
                        hint=f"Use one of {', '.join(PLUGIN_KINDS)}.")
    n = check_name(name, "plugin")
    body = {"dataset": DATASET, "evaluator": EVALUATOR, "trainer": TRAINER, "scheduler": SCHEDULER,
            "simulator": SIMULATOR}[kind]
    return {rel: _fill(text, n, kind) for rel, text in {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"src/{n.package}/__init__.py": INIT,
        f"src/{n.package}/plugin.py": body,
        f"tests/test_{n.package}.py": TEST_COMMON + TEST_KIND[kind],
    }.items()}


def new_plugin(kind: str, name: str, dest: Path) -> Path:
    """Write the distribution into ``dest/<dist name>`` and return that folder."""
    files = plugin_files(kind, name)
    root = Path(dest) / Names(name).dist
    write_files(root, files)
    return root
