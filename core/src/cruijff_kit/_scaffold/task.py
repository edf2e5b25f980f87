"""``ck new task NAME``: an inspect task file wired to cruijff-kit's dataset form and scorers.

In a spec (``eval: [{plugin: inspect, task: NAME.py@NAME}]``) the task receives the run's dataset
split as ``dataset``; on its own (``inspect eval NAME.py --model ck/MODEL_DIR -T data=data.json``)
it reads a json-instruct file or a json-chat folder itself, through the same readers.
"""

from __future__ import annotations

from pathlib import Path

from cruijff_kit._scaffold.names import check_name, write_files

TASK = '''"""The __NAME__ task for inspect-ai, in cruijff-kit's dataset form.

In a cruijff-kit spec:

    eval:
      - {plugin: inspect, task: __FILE__@__NAME__}

the run's dataset split is passed in as ``dataset``. Standalone:

    inspect eval __FILE__ --model ck/path/to/model -T data=data.json -M adapter=path/to/adapter

reads a json-instruct file (train/validation/test lists of input/output rows) or a json-chat folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inspect_ai import Task, task
from inspect_ai.scorer import includes, match
from inspect_ai.solver import generate, system_message

from cruijff_kit_inspect.scorers import classification
from cruijff_kit_inspect.tasks import rows_to_samples


def read_samples(data: str, split: str = "test", system: str | None = None) -> list[Any]:
    """inspect Samples of one split of a json-instruct file or json-chat folder."""
    from cruijff_kit import Prompt
    from cruijff_kit.data import ChatFolder, InstructFile, canonical_rows

    path = Path(data)
    source = ChatFolder(path) if path.is_dir() else InstructFile(path)
    source.ensure()
    got = source.rows(split)
    rows = canonical_rows(got.rows, got.kind, Prompt(system=system) if system else Prompt())
    return rows_to_samples(rows, split)


@task
def __NAME__(dataset: Any = None, data: str | None = None, split: str = "test", system: str | None = None,
             max_tokens: int = 32) -> Task:
    """Greedy answers scored by exact match, inclusion and label classification."""
    if dataset is None:
        if data is None:
            raise ValueError("__NAME__: pass -T data=FILE (a json-instruct file or json-chat folder)")
        dataset = read_samples(data, split, system)
    solver = [system_message(system), generate(max_tokens=max_tokens)] if system else [generate(max_tokens=max_tokens)]
    return Task(dataset=dataset, solver=solver, scorer=[match(), includes(), classification()], name="__NAME__")
'''


def new_task(name: str, dest: Path) -> Path:
    """Write ``dest/<name>.py`` and return its path."""
    n = check_name(name, "task")
    func = n.name.replace("-", "_")
    file = f"{func}.py"
    write_files(Path(dest), {file: TASK.replace("__FILE__", file).replace("__NAME__", func)})
    return Path(dest) / file
