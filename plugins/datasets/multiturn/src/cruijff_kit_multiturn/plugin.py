"""The ``multiturn`` dataset: scored multi-turn conversations -> SFT conversations or DPO pairs."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from cruijff_kit import DataError, Dataset, DatasetConfig
from cruijff_kit.data import as_prompt, check_run_splits, shown, to_dataset_dict

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
        self._splits: dict[str, list[dict[str, Any]]] | None = None
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
        if self._splits is None or self._system != system:
            from cruijff_kit_multiturn import build
            from cruijff_kit_multiturn.rows import read_candidates

            cfg = self.config
            local, hub = self.source()
            cands = read_candidates(local, source_split=cfg.source_split, hub_id=hub)
            mask = build.keep_mask(cands, cfg.threshold, cfg.threshold_on)
            if cfg.pairs:
                built = build.pairs(cands, mask, system, cfg.min_gap)
                what = ("preference pairs (no turn has two candidates whose scores differ by at least "
                        f"dataset.min_gap = {cfg.min_gap}")
            else:
                built = build.conversations(cands, mask, system)
                what = "conversations (no conversation's first turn has a candidate above the threshold"
            if not built:
                raise DataError(f"{shown(local)}: no {what}). Lower dataset.threshold, or simulate with "
                                "scoring and more candidates.")
            self._splits = build.split_rows(built, cfg.splits, cfg.seed)
            self._system = system
        return self._splits

    # -- the Dataset API
    def allows_truncation(self) -> bool:
        """``on_truncation: warn`` accepts conversations that ``train.max_seq_length`` cuts."""
        return self.config.on_truncation == "warn"

    def load(self, prompt: Any = None) -> Any:
        """A DatasetDict: ``messages`` rows (SFT) or ``prompt``/``chosen``/``rejected`` rows (pairs)."""
        local, _ = self.source()
        return to_dataset_dict(self.rows(as_prompt(prompt).system), file=local)

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
