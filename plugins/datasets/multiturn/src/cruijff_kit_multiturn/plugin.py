"""The ``multiturn`` dataset: scored multi-turn conversations -> SFT conversations or DPO pairs."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from cruijff_kit import DataError, Dataset, DatasetConfig
from cruijff_kit.data import ArrowDir, as_prompt, check_run_splits, file_identity, shown, to_dataset_dict

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class MultiturnConfig(DatasetConfig):
    """Options of ``plugin: multiturn``."""

    path: str = Field(..., description="The JSONL `ck simulate` writes, or CollabLLM rows: a .jsonl/.json "
                      "file, a parquet folder, a save_to_disk folder, or a hub dataset id.")
    source_split: str | None = Field(None, description="Read only this split of a parquet/save_to_disk/hub "
                                     "source (default: all of them).")
    threshold: float | None = Field(None, description="Drop candidates whose `threshold_on` value is below this.")
    threshold_on: str = Field("score", min_length=1, description="What the threshold applies to: score, or "
                              "a dotted path such as rewards.accuracy.")
    pairs: bool = Field(False, description="Emit preference pairs (prompt/chosen/rejected columns, for "
                        "train.objective: dpo) instead of conversations.")
    min_gap: float = Field(0.0, ge=0.0, description="pairs: keep a pair when chosen and rejected scores "
                           "differ by at least this.")
    splits: dict[str, float] = Field(default_factory=lambda: {"train": 0.8, "validation": 0.1, "test": 0.1},
                                     description="Split name -> fraction of conversations (sum 1).")
    seed: int = Field(42, ge=0, lt=2**32, description="Seed of the split shuffle.")
    on_truncation: Literal["error", "warn"] = Field(
        "error", description="At plan time, when train.max_seq_length would cut target turns away: "
        "error, or warn and go on.")

    @field_validator("splits")
    @classmethod
    def _fractions(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("give at least one split, e.g. {train: 1.0}")
        if any(f < 0 for f in v.values()):
            raise ValueError("split fractions must be >= 0")
        if abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must add up to 1 (they add up to {sum(v.values()):g})")
        return v


class MultiturnDataset(Dataset):
    """Best response per turn of simulated conversations (the CollabLLM recipe), and preference pairs."""

    name: ClassVar[str] = "multiturn"
    description: ClassVar[str] = ("Scored multi-turn conversations (ck simulate or CollabLLM rows): greedy-best "
                                  "conversations for SFT, or best-vs-worst pairs for DPO.")
    Config = MultiturnConfig
    config: MultiturnConfig

    def __init__(self, config: MultiturnConfig, base_dir: Path | None = None) -> None:  # type: ignore[override]
        super().__init__(config, base_dir)
        self._splits: dict[str, Any] | None = None
        self._rows: dict[str, list[dict[str, Any]]] | None = None
        self._system: Any = object()

    # -- where the data is
    def source(self) -> tuple[Path, str | None]:
        """(local path, hub id when the path names no local file and looks like ``org/name``)."""
        raw = self.config.path
        local = self.path(raw)
        hub = raw if not local.exists() and _HUB_ID.match(raw) and not Path(raw).suffix else None
        return local, hub

    def rows(self, system: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Training rows per split (plain dicts), built once per system prompt."""
        built = self._build(system)
        if self._rows is None:
            self._rows = {s: r if isinstance(r, list) else r.to_pylist() for s, r in built.items()}
        return self._rows

    def _build(self, system: str | None) -> dict[str, Any]:
        """Split -> an Arrow table (the column-wise path) or a list of rows (the row-by-row path)."""
        if self._splits is None or self._system != system:
            cfg = self.config
            local, hub = self.source()
            splits = None if cfg.pairs or hub else self._columnwise(local, system)
            self._splits = splits if splits is not None else self._row_by_row(local, hub, system)
            self._system = system
            self._rows = None
        return self._splits

    def _columnwise(self, local: Path, system: str | None) -> dict[str, Any] | None:
        """Greedy-best conversations built on whole columns; None when the source needs the row-by-row path."""
        from cruijff_kit_multiturn import fast

        cfg = self.config
        if not local.exists():
            return None
        if local.is_file():
            table = fast.read_jsonl_table(local) if local.suffix == ".jsonl" else None
        elif ArrowDir.recognises(local) or any(local.glob("*.parquet")):
            table = fast.read_arrow_table(local, cfg.source_split)
        else:
            table = None
        cands = fast.candidates(table) if table is not None else None
        mask = fast.keep_mask(cands, cfg.threshold, cfg.threshold_on) if cands is not None else None
        if cands is None or mask is None:
            return None
        convs = fast.conversations(cands, mask)
        if not len(convs["code"]):
            raise DataError(f"{shown(local)}: no {self._none_built()}). Lower dataset.threshold, or simulate with "
                            "scoring and more candidates.")
        return fast.split_tables(cands, convs, system, cfg.splits, cfg.seed)

    def _none_built(self) -> str:
        if self.config.pairs:
            return ("preference pairs (no turn has two candidates whose scores differ by at least "
                    f"dataset.min_gap = {self.config.min_gap}")
        return "conversations (no conversation's first turn has a candidate above the threshold"

    def _row_by_row(self, local: Path, hub: str | None, system: str | None) -> dict[str, list[dict[str, Any]]]:
        from cruijff_kit_multiturn import build
        from cruijff_kit_multiturn.rows import read_candidates

        cfg = self.config
        cands = read_candidates(local, source_split=cfg.source_split, hub_id=hub)
        mask = build.keep_mask(cands, cfg.threshold, cfg.threshold_on)
        built = build.pairs(cands, mask, system, cfg.min_gap) if cfg.pairs else build.conversations(cands, mask, system)
        if not built:
            raise DataError(f"{shown(local)}: no {self._none_built()}). Lower dataset.threshold, or simulate with "
                            "scoring and more candidates.")
        return build.split_rows(built, cfg.splits, cfg.seed)

    # -- the Dataset API
    def allows_truncation(self) -> bool:
        """``on_truncation: warn`` accepts conversations that ``train.max_seq_length`` cuts."""
        return self.config.on_truncation == "warn"

    def load(self, prompt: Any = None) -> Any:
        """A DatasetDict: ``messages`` rows (SFT) or ``prompt``/``chosen``/``rejected`` rows (pairs)."""
        local, _ = self.source()
        built = self._build(as_prompt(prompt).system)
        if all(isinstance(r, list) for r in built.values()):
            return to_dataset_dict(built, file=local)
        import datasets

        key = self._fingerprint(local, as_prompt(prompt).system)
        return datasets.DatasetDict({s: datasets.Dataset(t, fingerprint=f"{key}-{s}") for s, t in built.items()})

    def _fingerprint(self, local: Path, system: str | None) -> str:
        """A ``datasets`` fingerprint from the source files and the options (hashing the rows takes longer)."""
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        text = json.dumps([file_identity(files), self.config.model_dump(mode="json"), system], default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def describe(self, prompt: Any = None) -> dict[str, Any]:
        """Rows per split, when the data exists already (it may be simulated later)."""
        local, hub = self.source()
        if hub or not local.exists():
            return {}
        splits = self.rows(as_prompt(prompt).system)
        return {"rows": {s: len(r) for s, r in splits.items()},
                "chars": {s: sum(len(m["content"]) for row in r for m in row["messages"]) for s, r in splits.items()}}

    def check(self, run: Any) -> None:
        """Plan time: the data exists (or the spec simulates it), splits, and no target turn truncated."""
        train = run.spec.get("train") if run is not None else None
        if train and train.get("objective") == "dpo" and not self.config.pairs:
            raise DataError("train.objective is dpo, which trains on preference pairs, but dataset.pairs is "
                            "false (conversations). Set dataset.pairs: true.")
        local, hub = self.source()
        if hub:
            return
        if not local.exists():
            simulated = (run.spec.get("simulate") or {}).get("output") if run is not None else None
            if simulated and Path(simulated).resolve() == local.resolve():
                return  # `ck simulate SPEC` writes it
            raise DataError(f"dataset.path {shown(local)} does not exist. Run `ck simulate` for the spec that "
                            "writes it, or fix the path (relative to the spec file's folder).")
        system = as_prompt(run.spec.get("prompt")).system
        splits = self.rows(system)
        check_run_splits(run, splits, source=local)
        if train:
            from cruijff_kit_multiturn.length import truncation_problem

            problem = truncation_problem(run, [r for s in ("train", "validation") for r in splits.get(s, [])],
                                         pairs=self.config.pairs)
            if problem:
                if self.config.on_truncation == "error":
                    raise DataError(problem + " Set dataset.on_truncation: warn to train anyway.")
                print(f"Warning: {problem}", file=sys.stderr)
