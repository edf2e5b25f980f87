"""Trackers of the trl trainer: TensorBoard event files in the run folder, the ``metrics_logged`` hook,
and the plan-time error for a tracker that is not installed.

One short LoRA run (module fixture, in this process, offline) reports to TensorBoard while an
in-process plugin records every ``metrics_logged`` call.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from trl_fixtures import plan_spec, prepare_run, read_rows, write_trl_spec

from cruijff_kit import hookimpl, status
from cruijff_kit._api.registry import registry
from cruijff_kit._base.errors import SpecError
from cruijff_kit._engine.stage import run_stage

TRAIN = {"epochs": 1, "learning_rate": 1e-2, "batch_size": 8, "logging_steps": 1, "validation": True,
         "lora": {"rank": 4, "dropout": 0.0}, "report_to": ["tensorboard"]}
#: Planted in the environment of the run; must appear in no file of the run folder.
SECRET = "hf_trackerSecret0123456789abcdef"


class MetricsRecorder:
    """In-process plugin that records every ``metrics_logged`` call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, dict[str, Any]]] = []

    @hookimpl
    def metrics_logged(self, run: Any, stage: str, step: int, metrics: dict[str, Any]) -> None:
        self.calls.append((run.name, stage, step, dict(metrics)))


@pytest.fixture(scope="module")
def tracked(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished 1-epoch run with ``report_to: [tensorboard]`` and a recorder plugin registered.

    ``TENSORBOARD_LOGGING_DIR`` points outside the run folder beforehand, to prove the run ignores it.
    """
    base = tmp_path_factory.mktemp("trl-trackers")
    elsewhere = base / "elsewhere"
    run_dir = prepare_run(write_trl_spec(base / "exp", tiny_llama, train=TRAIN))
    recorder = MetricsRecorder()
    pm = registry().pm
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_TOKEN", SECRET)
        mp.setenv("WANDB_API_KEY", SECRET)
        mp.setenv("TENSORBOARD_LOGGING_DIR", str(elsewhere))
        pm.register(recorder, name="test-metrics-recorder")
        try:
            run_stage(run_dir, "train")
        finally:
            pm.unregister(recorder)
    return {"run_dir": run_dir, "base": base, "elsewhere": elsewhere, "recorder": recorder}


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``tag -> [(step, value)]`` of every scalar in the event files under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(log_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


@pytest.mark.integration
def test_tensorboard_event_files_hold_the_train_and_val_loss(tracked: dict[str, Any]) -> None:
    run_dir = tracked["run_dir"]
    assert status.stage_state(run_dir, "train") == status.DONE
    tb_dir = run_dir / "train" / "tensorboard"
    assert list(tb_dir.rglob("events.out.tfevents.*")), "no TensorBoard event file in train/tensorboard/"
    found = scalars(tb_dir)
    rows = read_rows(run_dir)
    train = [(r["step"], r["train_loss"]) for r in rows if r["train_loss"] is not None]
    val = [(r["step"], r["val_loss"]) for r in rows if r["val_loss"] is not None]
    assert len(train) == 4 and len(val) == 1  # 32 rows / batch 8, logged every step; one epoch-end eval
    for tag, expected in (("train/loss", train), ("eval/loss", val)):
        got = found.get(tag)
        assert got is not None, f"{tag} missing; tags: {sorted(found)}"
        assert [s for s, _ in got] == [s for s, _ in expected]
        # metrics.jsonl rounds to 6 decimals and TensorBoard stores float32.
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6, abs=1e-6)


@pytest.mark.integration
def test_tracker_files_stay_in_the_run_folder_without_secrets(tracked: dict[str, Any]) -> None:
    run_dir, base = tracked["run_dir"], tracked["base"]
    assert not tracked["elsewhere"].exists()  # a TENSORBOARD_LOGGING_DIR from outside is overridden
    outside = [p for p in base.rglob("events.out.tfevents.*") if run_dir not in p.parents]
    assert outside == []
    inside = [p for p in run_dir.rglob("events.out.tfevents.*")]
    assert inside and all(p.is_relative_to(run_dir / "train" / "tensorboard") for p in inside)
    leaked = [p for p in run_dir.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []


@pytest.mark.integration
def test_metrics_logged_hook_sees_every_metrics_row(tracked: dict[str, Any]) -> None:
    run_dir, calls = tracked["run_dir"], tracked["recorder"].calls
    rows = read_rows(run_dir)
    assert len(rows) == 5
    assert [c[3] for c in calls] == rows  # one call per row, same content, same order
    assert {(c[0], c[1]) for c in calls} == {(run_dir.name, "train")}
    assert [c[2] for c in calls] == [r["step"] for r in rows]


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_missing_tracker_names_the_extra_to_install(tracker: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from test_trl_plan import QWEN25_05B, fake_model

    from cruijff_kit.training import _trackers

    monkeypatch.setattr(_trackers, "find_spec", lambda name: None if name == tracker else find_spec(name))

    model = fake_model(tmp_path / "model", QWEN25_05B)
    spec = write_trl_spec(tmp_path, model, train={"report_to": ["tensorboard", tracker]})
    with pytest.raises(SpecError) as err:
        plan_spec(spec)
    text = str(err.value)
    assert "train.report_to" in text and tracker in text
    assert f"pip install 'cruijff-kit-trl[{tracker}]'" in text
