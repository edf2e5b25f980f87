"""Trackers for real, offline: a tiny model trained by each trainer (trl, torchtune) reporting to W&B
(``WANDB_MODE=offline``) and MLflow (a ``file://`` store), then what each tracker wrote is read back.

W&B's offline run is read from its ``run-<id>.wandb`` file (:func:`wandb_records`: W&B's record log,
32 KiB blocks of CRC-framed chunks holding ``wandb.proto.wandb_internal_pb2.Record`` messages);
MLflow's through ``mlflow.tracking.MlflowClient``. Expected values come from the run folder:
``spec.yaml`` (read with PyYAML) and ``train/metrics.jsonl``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml
from torchtune_fixtures import FAST_TRAIN, write_tt_spec
from trl_fixtures import prepare_run, read_rows, write_trl_spec

from cruijff_kit import status
from cruijff_kit._engine.stage import run_stage

pytest.importorskip("wandb")
pytest.importorskip("mlflow")

pytestmark = pytest.mark.integration

#: Planted in the environment; a tracker must never receive it.
SECRET = "hf_trackerSecret0123456789abcdef"
TRL_TRAIN = {"epochs": 1, "learning_rate": 1e-2, "batch_size": 8, "logging_steps": 1, "validation": True,
             "lora": {"rank": 4, "dropout": 0.0}, "report_to": ["wandb", "mlflow"]}
#: A W&B offline record file: ":W&B", magic 0xBEE1, version 0; then 32 KiB blocks of chunks.
WANDB_HEADER, BLOCK = b":W&B\xe1\xbe\x00", 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list[Any]:
    """Every record of a W&B offline run file, as ``wandb_internal_pb2.Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:7] == WANDB_HEADER, f"{path} is not a W&B record file"
    out, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # zero padding to the block's end
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, FIRST):
            pending = chunk
        else:
            pending += chunk
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(pending)
            out.append(rec)
    return out


def wandb_run(folder: Path) -> dict[str, Any]:
    """The one offline run under ``folder``: its project, group, name, config and history rows."""
    (path,) = folder.rglob("offline-run-*/run-*.wandb")
    run: dict[str, Any] = {"history": []}
    for rec in wandb_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run.update(project=rec.run.project, group=rec.run.run_group, name=rec.run.display_name,
                       entity=rec.run.entity,
                       config={u.key: json.loads(u.value_json) for u in rec.run.config.update if u.key != "_wandb"})
        elif kind == "config":
            run["config"].update({u.key: json.loads(u.value_json) for u in rec.config.update if u.key != "_wandb"})
        elif kind == "history":
            run["history"].append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.history.item})
        elif kind == "exit":
            run["exit_code"] = rec.exit.exit_code
    return run


def mlflow_run(uri: str, experiment: str) -> tuple[Any, Any]:
    """``(client, the one run)`` of ``experiment`` in the store at ``uri``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r} in {uri}"
    (run,) = client.search_runs([exp.experiment_id])
    return client, run


def history(client: Any, run: Any, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def tb_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``tag -> [(step, value)]`` of the scalars under ``log_dir``, old style (``Scalars``) or new style
    (rank-0 tensors, as ``torch.utils.tensorboard`` writes with ``new_style=True``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(log_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        for tag in acc.Tags()["tensors"]:
            out.setdefault(tag, []).extend((e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
                                           for e in acc.Tensors(tag))
    return out


def leaves(obj: Any) -> int:
    """How many values a nested mapping holds (an empty mapping counts as one)."""
    if isinstance(obj, dict) and obj:
        return sum(leaves(v) for v in obj.values())
    return 1


def losses(run_dir: Path, field: str) -> list[tuple[int, float]]:
    return [(r["step"], r[field]) for r in read_rows(run_dir) if r[field] is not None]


def same_series(got: list[tuple[int, float]], expected: list[tuple[int, float]], rel: float = 0.0) -> None:
    """The same steps, and values equal to metrics.jsonl's (which rounds to 6 decimals)."""
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=rel, abs=1e-6)


def offline_env(mp: pytest.MonkeyPatch) -> None:
    for name in ("WANDB_PROJECT", "WANDB_RUN_GROUP", "WANDB_ENTITY", "WANDB_DIR", "WANDB_NAME",
                 "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "TENSORBOARD_LOGGING_DIR"):
        mp.delenv(name, raising=False)
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps file stores behind this switch
    mp.setenv("HF_TOKEN", SECRET)
    mp.setenv("WANDB_API_KEY", SECRET)


# --------------------------------------------------------------------------- trl
@pytest.fixture(scope="module")
def trl_run(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 1-epoch trl run reporting to W&B (defaults: project and group = experiment, files in the run
    folder) and MLflow (tracking URI from the spec)."""
    base = tmp_path_factory.mktemp("trackers-trl")
    uri = (base / "mlruns").as_uri()
    train = {**TRL_TRAIN, "trackers": {"mlflow": {"tracking_uri": uri}}}
    run_dir = prepare_run(write_trl_spec(base / "exp", tiny_llama, train=train, experiment="trk-trl"))
    with pytest.MonkeyPatch.context() as mp:
        offline_env(mp)
        run_stage(run_dir, "train")
    return {"run_dir": run_dir, "uri": uri}


def test_trl_wandb_offline_run_is_grouped_by_the_experiment(trl_run: dict[str, Any]) -> None:
    run_dir = trl_run["run_dir"]
    assert status.stage_state(run_dir, "train") == status.DONE
    run = wandb_run(run_dir / "train" / "wandb")  # default W&B dir: the run's train folder
    assert (run["project"], run["group"], run["name"]) == ("trk-trl", "trk-trl", run_dir.name)
    assert run["config"] == yaml.safe_load((run_dir / "spec.yaml").read_text())
    assert run["exit_code"] == 0
    logged = [(h["train/global_step"], h["train/loss"]) for h in run["history"] if "train/loss" in h]
    expected = losses(run_dir, "train_loss")
    assert len(expected) == 4  # 32 rows / batch 8, logged every step
    same_series(logged, expected)
    evals = [(h["train/global_step"], h["eval/loss"]) for h in run["history"] if "eval/loss" in h]
    assert len(evals) == 1
    same_series(evals, losses(run_dir, "val_loss"))


def test_trl_mlflow_file_store_holds_the_run_and_its_losses(trl_run: dict[str, Any]) -> None:
    run_dir = trl_run["run_dir"]
    client, run = mlflow_run(trl_run["uri"], "trk-trl")
    spec = yaml.safe_load((run_dir / "spec.yaml").read_text())
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    params = run.data.params
    assert params["experiment"] == "trk-trl" and params["run.name"] == run_dir.name
    assert params["train.plugin"] == "trl" and params["train.lora.rank"] == "4"
    assert params["train.report_to"] == '["wandb", "mlflow"]' and params["train.packing"] == "false"
    assert params["run.sweep"] == "{}"
    assert len(params) == leaves(spec)
    same_series(history(client, run, "loss"), losses(run_dir, "train_loss"))
    same_series(history(client, run, "eval_loss"), losses(run_dir, "val_loss"))


def test_trl_trackers_got_no_secret(trl_run: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> None:
    run_dir = trl_run["run_dir"]
    store = Path(trl_run["uri"].removeprefix("file://"))
    leaked = [p for folder in (run_dir, store) for p in folder.rglob("*")
              if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []


# --------------------------------------------------------------------------- torchtune
@pytest.fixture(scope="module")
def torchtune_run(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-epoch torchtune run reporting to W&B (project from WANDB_PROJECT, group from the spec over
    WANDB_RUN_GROUP, files under WANDB_DIR), MLflow (URI from MLFLOW_TRACKING_URI) and TensorBoard."""
    base = tmp_path_factory.mktemp("trackers-torchtune")
    uri = (base / "mlruns").as_uri()
    train = {**FAST_TRAIN, "eval_steps": 3, "report_to": ["wandb", "mlflow", "tensorboard"],
             "trackers": {"wandb": {"group": "spec-group"}}}
    run_dir = prepare_run(write_tt_spec(base / "exp", tiny_llama, train=train, experiment="trk-tt"))
    with pytest.MonkeyPatch.context() as mp:
        offline_env(mp)
        mp.setenv("WANDB_PROJECT", "env-project")
        mp.setenv("WANDB_RUN_GROUP", "env-group")
        mp.setenv("WANDB_DIR", str(base / "wandb-dir"))
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        run_stage(run_dir, "train")
    return {"run_dir": run_dir, "uri": uri, "wandb_dir": base / "wandb-dir"}


def test_torchtune_wandb_offline_run(torchtune_run: dict[str, Any]) -> None:
    run_dir = torchtune_run["run_dir"]
    assert status.stage_state(run_dir, "train") == status.DONE
    assert not (run_dir / "train" / "wandb").exists()  # WANDB_DIR, set by the user, wins over the run folder
    run = wandb_run(torchtune_run["wandb_dir"])
    assert (run["project"], run["group"], run["name"]) == ("env-project", "spec-group", run_dir.name)
    assert run["config"] == yaml.safe_load((run_dir / "spec.yaml").read_text())
    assert run["exit_code"] == 0
    logged = [(h["global_step"], h["train/loss"]) for h in run["history"] if "train/loss" in h]
    expected = losses(run_dir, "train_loss")
    assert len(expected) == 8  # 16 rows / batch 4, 2 epochs
    same_series(logged, expected)
    evals = [(h["global_step"], h["eval/loss"]) for h in run["history"] if "eval/loss" in h]
    assert [s for s, _ in evals] == [3, 4, 6, 8]
    same_series(evals, losses(run_dir, "val_loss"))


def test_torchtune_mlflow_and_tensorboard(torchtune_run: dict[str, Any]) -> None:
    run_dir = torchtune_run["run_dir"]
    client, run = mlflow_run(torchtune_run["uri"], "trk-tt")  # the experiment: MLFLOW_EXPERIMENT_NAME unset
    spec = yaml.safe_load((run_dir / "spec.yaml").read_text())
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    params = run.data.params
    assert params["train.plugin"] == "torchtune" and params["train.lora.rank"] == "8"
    assert params["train.trackers.wandb.group"] == "spec-group" and params["train.trackers.wandb.project"] == "null"
    assert len(params) == leaves(spec)
    expected = losses(run_dir, "train_loss")
    same_series(history(client, run, "loss"), expected)
    same_series(history(client, run, "eval_loss"), losses(run_dir, "val_loss"))
    same_series(history(client, run, "learning_rate"), losses(run_dir, "learning_rate"), rel=1e-6)

    found = tb_scalars(run_dir / "train" / "tensorboard")  # float32 values
    same_series(found["train/loss"], expected, rel=1e-6)
    same_series(found["eval/loss"], losses(run_dir, "val_loss"), rel=1e-6)


def test_torchtune_metrics_rows_unchanged_and_no_secret(torchtune_run: dict[str, Any]) -> None:
    run_dir = torchtune_run["run_dir"]
    rows = read_rows(run_dir)
    assert all(set(r) == {"step", "epoch", "train_loss", "val_loss", "learning_rate", "tokens_per_second",
                          "peak_memory_mb"} for r in rows)
    assert len([r for r in rows if r["train_loss"] is not None]) == 8
    tune = yaml.safe_load((run_dir / "train" / "torchtune.yaml").read_text())
    assert tune["metric_logger"]["_component_"] == "cruijff_kit_torchtune.trackers.TrackerLogger"
    assert tune["metric_logger"]["wandb"]["project"] == "env-project"
    store = Path(torchtune_run["uri"].removeprefix("file://"))
    leaked = [p for folder in (run_dir, store, torchtune_run["wandb_dir"]) for p in folder.rglob("*")
              if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []


def test_a_failed_stage_marks_its_tracker_runs_failed(tiny_llama: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from cruijff_kit_torchtune import recipe

    uri = (tmp_path / "mlruns").as_uri()
    train = {**FAST_TRAIN, "report_to": ["wandb", "mlflow"], "trackers": {"mlflow": {"tracking_uri": uri}}}
    run_dir = prepare_run(write_tt_spec(tmp_path / "exp", tiny_llama, train=train, experiment="trk-fail"))

    def broken_disk(self: Any, epoch: int) -> None:
        raise OSError("disk full")

    offline_env(monkeypatch)
    monkeypatch.setattr(recipe.CkRecipeMixin, "save_checkpoint", broken_disk)
    with pytest.raises(Exception, match="disk full"):
        run_stage(run_dir, "train")
    assert status.stage_state(run_dir, "train") == status.FAILED
    run = wandb_run(run_dir / "train" / "wandb")
    assert run["name"] == run_dir.name and run["exit_code"] == 1
    assert len([h for h in run["history"] if "train/loss" in h]) == 4  # the first epoch's steps
    _, ml = mlflow_run(uri, "trk-fail")
    assert ml.info.status == "FAILED"


def test_a_finished_trl_mlflow_callback_leaves_later_runs_alone(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The Trainer's MLflowCallback ends the active run when it is garbage collected; once its own run
    ended, ours must not end the run of a later stage in the same process."""
    import mlflow
    from cruijff_kit_trl.trackers import mlflow_callback
    from transformers import TrainerState, TrainingArguments

    from cruijff_kit import training

    offline_env(monkeypatch)
    uri = (tmp_path / "mlruns").as_uri()
    spec = {"experiment": "gc-test", "run": {"name": "first-run-abc123"}, "train": {"lora": {"rank": 4}}}
    found = training.tracker_settings(spec, ["mlflow"], training.TrackerOptions.model_validate(
        {"mlflow": {"tracking_uri": uri}}), train_dir=tmp_path / "train", env={})
    callback = mlflow_callback(found)
    args, state = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none"), TrainerState()
    callback.on_train_begin(args, state, None)
    assert mlflow.active_run().info.run_name == "first-run-abc123"
    callback.on_train_end(args, state, None)
    later = mlflow.start_run(run_name="later")
    try:
        callback.__del__()
        assert mlflow.active_run() is not None and mlflow.active_run().info.run_id == later.info.run_id
    finally:
        mlflow.end_run()
