"""The fast experiment loop: a run's ready evaluations run in one `ck stage` process (each target keeps
its own claim, state, results and logs; a kill redoes only the unfinished ones), stages run side by
side on the CPU cores the machine has, and `ck run` shows what each running stage is doing.

The toy plugins (tests/toy_plugin) stand in for trainer and evaluator: the bookkeeping is the
subject here, not the maths."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import pytest

from cruijff_kit._base.layout import RunLayout

STAGES = ["eval.toy.epoch_0", "eval.toy.epoch_1", "eval.toy.epoch_2"]


def _spec(folder: Path, *, scheduler: str = "plugin: local\npoll_seconds: 0.05\n", sleep: float = 0.0,
          include_base: bool = False, sweep: str = "") -> Path:
    model = folder / "models" / "base"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text('{"model_type": "toy"}')
    text = textwrap.dedent(f"""\
        experiment: loop
        output_dir: out
        model: {{path: models/base}}
        dataset: {{plugin: toy-data}}
        train: {{plugin: toy, epochs: 3, save_epochs: all, steps_per_epoch: 2}}
        eval:
          - {{plugin: toy-eval, task: toy, checkpoints: all, include_base: {str(include_base).lower()},
              sleep_seconds: {sleep}}}
        scheduler:
        """) + textwrap.indent(scheduler, "  ") + sweep
    path = folder / "spec.yaml"
    path.write_text(text)
    return path


def _entries(run: Path) -> dict[str, dict]:
    return json.loads((run / "status.json").read_text())["stages"]


def _only_run(tmp_path: Path) -> Path:
    (run,) = (tmp_path / "out" / "loop" / "runs").iterdir()
    return run


def test_a_runs_evaluations_share_one_process_and_keep_their_own_books(with_toy: Path, tmp_path: Path, ck) -> None:
    res = ck("run", str(_spec(tmp_path)), env={"CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 0, res.stdout + res.stderr
    run = _only_run(tmp_path)
    st = _entries(run)
    assert {st[s]["state"] for s in ["train", *STAGES]} == {"done"}
    # one process for the three evaluations, another for training
    assert len({st[s]["pid"] for s in STAGES}) == 1 and st["train"]["pid"] != st[STAGES[0]]["pid"]
    # ... but each its own start, end and attempt count, done one after the other
    times = [(datetime.fromisoformat(st[s]["started"]), datetime.fromisoformat(st[s]["ended"])) for s in STAGES]
    assert all(a[1] <= b[0] for a, b in zip(times, times[1:], strict=False)), times
    assert [st[s]["attempts"] for s in STAGES] == [1, 1, 1]
    # its own results (the toy scores every adapter 1.0) and its own logs, naming itself only
    results = json.loads((run / "eval" / "results.json").read_text())
    assert {t: results["toy"][t]["accuracy"]["value"] for t in ("epoch_0", "epoch_1", "epoch_2")} == \
        {"epoch_0": 1.0, "epoch_1": 1.0, "epoch_2": 1.0}
    layout = RunLayout(run)
    for s in STAGES:
        out = layout.log(s, "out").read_text()
        assert f"stage {s} of run" in out and all(f"stage {o} of run" not in out for o in STAGES if o != s), (s, out)


def test_group_evals_off_gives_one_process_per_stage(with_toy: Path, tmp_path: Path, ck) -> None:
    spec = _spec(tmp_path, scheduler="plugin: local\npoll_seconds: 0.05\ngroup_evals: false\n")
    assert ck("run", str(spec), env={"CUDA_VISIBLE_DEVICES": ""}).returncode == 0
    st = _entries(_only_run(tmp_path))
    assert len({st[s]["pid"] for s in STAGES}) == 3


def test_a_kill_during_the_group_redoes_only_unfinished_targets(with_toy: Path, tmp_path: Path, ck) -> None:
    spec = _spec(tmp_path, sleep=1.5)
    assert ck("run", str(spec), "--dry-run").returncode == 0
    run = next((tmp_path / "out" / "loop" / "runs").iterdir())
    assert ck("stage", str(run), "train").returncode == 0
    layout = RunLayout(run)
    layout.logs_dir.mkdir(exist_ok=True)
    with open(layout.log(STAGES[0], "out"), "ab") as out, open(layout.log(STAGES[0], "err"), "ab") as err:
        proc = subprocess.Popen([sys.executable, "-m", "cruijff_kit", "stage", str(run), *STAGES],
                                stdout=out, stderr=err, start_new_session=True)
    deadline = time.monotonic() + 120
    while _entries(run)[STAGES[0]].get("state") != "done":
        assert proc.poll() is None and time.monotonic() < deadline, layout.log(STAGES[0], "err").read_text()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = dict(_entries(run)[STAGES[0]])
    assert _entries(run)[STAGES[2]]["state"] != "done"
    res = ck("run", str(spec), env={"CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 0, res.stdout + res.stderr
    st = _entries(run)
    assert st[STAGES[0]] == first  # finished before the kill: not done again
    assert all(st[s]["state"] == "done" for s in STAGES[1:])
    assert st[STAGES[2]]["attempts"] == 1 and st[STAGES[1]]["started"] >= first["ended"]
    # the second stage's own log says it was started (again, if the kill caught it running)
    assert f"stage {STAGES[1]} of run" in layout.log(STAGES[1], "out").read_text()


def test_a_failing_target_does_not_stop_the_next(with_toy: Path, tmp_path: Path, ck) -> None:
    spec = _spec(tmp_path)
    assert ck("run", str(spec), "--dry-run").returncode == 0
    run = next((tmp_path / "out" / "loop" / "runs").iterdir())
    assert ck("stage", str(run), "train").returncode == 0
    blocker = RunLayout(run).eval_dir("toy", "epoch_1")  # a file where epoch_1's folder goes: it cannot write
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    res = ck("stage", str(run), *STAGES)
    assert res.returncode == 1 and "eval.toy.epoch_1 (failed)" in res.stderr, res.stderr
    st = _entries(run)
    assert [st[s]["state"] for s in STAGES] == ["done", "failed", "done"]


def test_stages_run_side_by_side(with_toy: Path, tmp_path: Path, ck) -> None:
    """Two runs' trainings overlap with two slots."""
    spec = _spec(tmp_path, scheduler="plugin: local\npoll_seconds: 0.05\nslots: 2\n",
                 sweep="sweep:\n  train.learning_rate: [0.001, 0.002]\n")
    spec.write_text(spec.read_text().replace("steps_per_epoch: 2}", "steps_per_epoch: 2, step_seconds: 0.5}"))
    res = ck("run", str(spec), env={"CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 0, res.stdout + res.stderr
    runs = sorted((tmp_path / "out" / "loop" / "runs").iterdir())
    a, b = (_entries(r)["train"] for r in runs)
    assert max(a["started"], b["started"]) < min(a["ended"], b["ended"]), (a, b)


@pytest.mark.parametrize(("options", "cores", "memory_gib", "expected"), [
    ({}, 2, 24, (2, 1)),                                      # cpus 1 (default): one stage per core
    ({}, 16, 24, (3, 1)),                                     # 24 GiB // 8GB (default memory) = 3
    ({}, 16, None, (16, 1)),                                  # memory unknown: the cores decide
    ({"resources": {"cpus": 4}}, 16, 64, (4, 4)),             # 16 // 4 = 4 stages of 4 threads
    ({"resources": {"cpus": 4}}, 2, 64, (1, 4)),              # fewer cores than one stage asks: one at a time
    ({"resources": {"memory": "30G"}}, 8, 24, (1, 1)),        # 24 // 30 = 0: still one
    ({"slots": 3}, 16, 24, (3, 5)),                           # slots set: 16 // 3 = 5 threads each
    ({"slots": 4}, 2, 24, (4, 1)),                            # more slots than cores: 1 thread each
])
def test_cpu_slots_from_cores_memory_and_resources(options, cores, memory_gib, expected) -> None:
    from cruijff_kit_local.scheduler import LocalConfig, cpu_slots

    memory = None if memory_gib is None else memory_gib * 2**30
    assert cpu_slots(LocalConfig.model_validate(options), cores, memory) == expected


def test_live_display_reads_step_loss_and_samples(tmp_path: Path) -> None:
    from cruijff_kit_local.scheduler import _live_text

    from cruijff_kit import StageJob
    from cruijff_kit._api.context import StageContext
    from cruijff_kit._api.kinds import Resources
    from cruijff_kit._api.records import StageDef

    class _Planned:
        layout = RunLayout(tmp_path / "r")

    train = StageContext(None, StageDef("train", "train"), _Planned(), None)  # type: ignore[arg-type]
    train.log_metrics(7, epoch=0, train_loss=1.23456, learning_rate=0.1)
    job = StageJob("e", "r", tmp_path / "r", "train", [], Resources(), "train")
    assert _live_text([job]) == "step 7 loss 1.235"
    ev = StageContext(None, StageDef("eval.t.base", "eval", [], 0, "t", "base"), _Planned(), None)  # type: ignore[arg-type]
    with ev.progress(40, "samples") as bar:
        for _ in range(40):
            bar.advance()
    ev_job = StageJob("e", "r", tmp_path / "r", "eval.t.base", [], Resources(), "eval")
    assert _live_text([ev_job]) == "samples 40/40"  # the last one is always written
    assert _live_text([ev_job, job]).startswith(("eval.t.base samples 40/40", "train step 7"))
