"""The ``tabular`` dataset plugin: generates the dataset (cached by content hash) and loads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from cruijff_kit import Dataset, Prompt
from cruijff_kit.data import as_prompt, canonical_rows, check_run_splits, check_template, to_dataset_dict
from cruijff_kit_tabular.options import TabularOptions

#: The cache folder beside the spec when ``cache_dir`` is not set.
DEFAULT_CACHE = ".ck-cache"


class TabularConfig(TabularOptions):
    """Options of the ``tabular`` dataset plugin: the generator's options plus where results are kept."""

    cache_dir: str | None = Field(None, description="Where generated files are kept (default: .ck-cache "
                                  "beside the spec). Files are named by a content hash and reused.")


class TabularDataset(Dataset):
    """Rows of a table (CSV, TSV, parquet, Stata, SAS, Excel) rendered as instruct rows by a schema."""

    name = "tabular"
    description = "A data table rendered as text by a schema YAML: a target column becomes the answer."
    Config = TabularConfig

    @property
    def options(self) -> TabularConfig:
        assert isinstance(self.config, TabularConfig)
        return self.config

    def cache_dir(self) -> Path:
        """The folder generated files go to."""
        return self.path(self.options.cache_dir or DEFAULT_CACHE)

    def generated(self) -> Path:
        """The generated JSON instruct file (generated now unless an identical one exists)."""
        from cruijff_kit_tabular.generate import build

        return build(self.options, self.base_dir, self.cache_dir()).path

    def prompt_for(self, prompt: Any) -> Prompt:
        """The run's prompt, with the context in front of its system message when placed there."""
        from cruijff_kit_tabular.generate import system_prompt

        p = as_prompt(prompt)
        context = system_prompt(self.options)
        if context is None:
            return p
        system = context if not p.system else f"{context}\n\n{p.system}"
        return Prompt(system=system, template=p.template)

    def load(self, prompt: Any = None) -> Any:
        """The canonical DatasetDict (``messages``, ``input``, ``output``, ``row``)."""
        from cruijff_kit.data import InstructFile

        source = InstructFile(self.generated())
        p = self.prompt_for(prompt)
        out = {split: canonical_rows(source.rows(split).rows, "instruct", p) for split in source.split_names()}
        return to_dataset_dict(out, file=source.path)

    def describe(self, prompt: Any = None) -> dict[str, Any]:
        """Rows per split from the sidecar when the dataset was generated already, else nothing."""
        from cruijff_kit import data as provenance
        from cruijff_kit_tabular.generate import PREFIX, prepare

        try:
            key = prepare(self.options, self.base_dir).key()
        except Exception:
            return {}
        out = provenance.output_path(self.cache_dir(), PREFIX, key)
        meta = provenance.read_meta(out) if provenance.find_cached(out, key) else None
        return {"rows": dict(meta["rows"])} if meta else {}

    def splits(self) -> list[str] | None:
        return list(self.options.splits)

    def check(self, run: Any) -> None:
        """Plan-time: files exist, schema/features/target/template agree, the run's splits exist."""
        from cruijff_kit_tabular.generate import prepare

        p = prepare(self.options, self.base_dir)
        check_run_splits(run, list(self.options.splits), source=p.source)
        check_template(as_prompt(run.spec.get("prompt")))
        for ev in run.spec.get("eval") or []:
            if ev.get("prompt"):
                check_template(as_prompt(ev["prompt"]))
