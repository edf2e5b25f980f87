"""A pod runs its run's evaluations in one `ck stage` process (`group_evals`, the default), against the
fake RunPod and bucket on 127.0.0.1: the pod's agent, `ck stage` and the toy plugins run for real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from runpod_fixtures import (
    BUCKET,
    run_ck,
    run_dirs,
    running_fake_runpod,
    running_fake_store,
    stages,
    write_profile,
    write_toy_spec,
)

fake_runpod = pytest.fixture(running_fake_runpod, name="fake_runpod")
fake_store = pytest.fixture(running_fake_store, name="fake_store")


def write_spec(folder: Path, *, scheduler: str = "", epochs: int = 1, evaluation: str = "") -> Path:
    """The toy spec, with extra options in its scheduler and eval sections."""
    spec = write_toy_spec(folder, scheduler="wait: true\n" + scheduler)
    if epochs != 1:
        spec.write_text(spec.read_text().replace("  epochs: 1\n", f"  epochs: {epochs}\n  save_epochs: all\n"))
    if evaluation:
        text = spec.read_text()
        old = "{plugin: toy-eval, task: toy, include_base: true}"
        assert old in text
        spec.write_text(text.replace(old, "{plugin: toy-eval, task: toy, include_base: true, " + evaluation + "}"))
    return spec


def pod_of(fake_runpod) -> str:
    (pod_id,) = fake_runpod.pods
    return pod_id


def container_log(tmp_path: Path, pod_id: str) -> str:
    return (tmp_path / "containers" / pod_id / "container.log").read_text()


def done_marker(fake_store) -> dict:
    """The pod's final report (done.json in the bucket)."""
    (key,) = [k for k in fake_store.keys(BUCKET) if k.endswith("/done.json")]
    return json.loads(fake_store.objects[(BUCKET, key)])


def eval_pid(run: Path, target: str) -> int:
    """The pid of the process that evaluated ``target`` (the toy evaluator writes it into its log)."""
    return json.loads((run / "eval" / "toy" / target / "log.json").read_text())["pid"]


def stage_command(run_dir_on_pod: str, *names: str) -> str:
    """The agent's log line for a `ck stage` process of ``names``."""
    return f"running -m cruijff_kit stage {run_dir_on_pod} {' '.join(names)}\n"


@pytest.mark.parametrize("grouped", [True, False])
def test_evaluations_run_in_one_process_unless_switched_off(fake_runpod, fake_store, tmp_path, capsys, grouped):
    spec = write_spec(tmp_path, scheduler="" if grouped else "group_evals: false\n")
    write_profile(tmp_path, fake_store)
    code, out = run_ck(capsys, "run", str(spec))
    assert code == 0, out
    (run,) = run_dirs(tmp_path)
    st = stages(run)
    assert {s: e["state"] for s, e in st.items()} == dict.fromkeys(("train", "eval.toy.base", "eval.toy.epoch_0"),
                                                                   "done")
    # each stage its own results, whichever process made them
    results = json.loads((run / "eval/results.json").read_text())
    assert results["toy"]["base"]["accuracy"]["value"] == 0.5
    assert results["toy"]["epoch_0"]["accuracy"]["value"] == 1.0
    pid_base, pid_epoch = eval_pid(run, "base"), eval_pid(run, "epoch_0")
    train_pid = json.loads((run / "train/metrics.jsonl").read_text().splitlines()[0])["pid"]
    pod_id = pod_of(fake_runpod)
    log = container_log(tmp_path, pod_id)
    on_pod = str(tmp_path / "containers" / pod_id / "ck" / "files") + str(run)
    assert stage_command(on_pod, "train") in log, log
    if grouped:
        assert pid_base == pid_epoch != train_pid  # one process ran both evaluations, after the train's
        assert stage_command(on_pod, "eval.toy.base", "eval.toy.epoch_0") in log, log
        assert stage_command(on_pod, "eval.toy.base") not in log
    else:
        assert len({pid_base, pid_epoch, train_pid}) == 3
        assert stage_command(on_pod, "eval.toy.base") in log and stage_command(on_pod, "eval.toy.epoch_0") in log
    assert done_marker(fake_store)["codes"] == {"train": 0, "eval.toy.base": 0, "eval.toy.epoch_0": 0}
    for s in ("eval.toy.base", "eval.toy.epoch_0"):  # each stage has its own logs
        assert (run / "logs" / f"{s}.out").exists() and (run / "logs" / f"{s}.err").exists()


def test_a_failed_evaluation_of_the_group_leaves_the_others_done(fake_runpod, fake_store, tmp_path, capsys):
    spec = write_spec(tmp_path, evaluation='fail_with: "toy eval broke", only_targets: [epoch_0]')
    write_profile(tmp_path, fake_store)
    code, out = run_ck(capsys, "run", str(spec))
    assert code == 1 and "toy eval broke" in out, out
    (run,) = run_dirs(tmp_path)
    st = stages(run)
    assert st["train"]["state"] == "done" and st["eval.toy.base"]["state"] == "done"
    assert st["eval.toy.epoch_0"]["state"] == "failed" and "toy eval broke" in st["eval.toy.epoch_0"]["error"]
    assert json.loads((run / "eval/results.json").read_text())["toy"]["base"]["accuracy"]["value"] == 0.5
    pod_id = pod_of(fake_runpod)
    on_pod = str(tmp_path / "containers" / pod_id / "ck" / "files") + str(run)
    assert stage_command(on_pod, "eval.toy.base", "eval.toy.epoch_0") in container_log(tmp_path, pod_id)
    # the pod's report: each stage's own outcome, not the group process's exit code (1) for both
    assert done_marker(fake_store)["codes"] == {"train": 0, "eval.toy.base": 0, "eval.toy.epoch_0": 1}
    # the failure is in the failed stage's own log, not in the first stage's (where the process started)
    assert "toy eval broke" in (run / "logs" / "eval.toy.epoch_0.err").read_text()
    assert "toy eval broke" not in (run / "logs" / "eval.toy.base.err").read_text()
    assert fake_runpod.running() == []


def test_time_limit_during_the_group_interrupts_the_running_evaluation(fake_runpod, fake_store, tmp_path, capsys):
    # epoch_0 sleeps past the pod's limit (30 s, less a 3 s reserve): base is done before, epoch_1 never starts
    spec = write_spec(tmp_path, scheduler='time_limit: "00:00:30"\n', epochs=2,
                      evaluation="checkpoints: all, sleep_seconds: 600, only_targets: [epoch_0]")
    write_profile(tmp_path, fake_store)
    code, out = run_ck(capsys, "run", str(spec))
    assert code == 1 and "INTERRUPTED" in out, out
    (run,) = run_dirs(tmp_path)
    st = stages(run)
    assert st["train"]["state"] == "done" and st["eval.toy.base"]["state"] == "done"
    assert st["eval.toy.epoch_0"]["state"] == "interrupted" and st["eval.toy.epoch_0"]["exit_code"] == 130
    assert st["eval.toy.epoch_1"]["state"] == "pending" and "time limit" in st["eval.toy.epoch_1"]["error"]
    assert json.loads((run / "eval/results.json").read_text())["toy"]["base"]["accuracy"]["value"] == 0.5
    pod_id = pod_of(fake_runpod)
    on_pod = str(tmp_path / "containers" / pod_id / "ck" / "files") + str(run)
    assert stage_command(on_pod, "eval.toy.base", "eval.toy.epoch_0", "eval.toy.epoch_1") in container_log(
        tmp_path, pod_id)
    done = done_marker(fake_store)
    assert done["reason"] == "time limit reached"
    assert done["codes"] == {"train": 0, "eval.toy.base": 0, "eval.toy.epoch_0": 130, "eval.toy.epoch_1": None}
    assert fake_runpod.running() == []


STAGES = [{"name": "train", "depends_on": [], "kind": "train"},
          {"name": "eval.t.base", "depends_on": [], "kind": "eval"},
          {"name": "eval.t.epoch_0", "depends_on": ["train"], "kind": "eval"},
          {"name": "eval.t.epoch_1", "depends_on": ["train"], "kind": "eval"}]


@pytest.mark.parametrize(("codes", "start", "group"), [
    ({}, 0, ["train"]),  # training is never grouped
    ({"train": 0}, 1, ["eval.t.base", "eval.t.epoch_0", "eval.t.epoch_1"]),
    ({"train": 1}, 1, ["eval.t.base"]),  # the checkpoints' evaluations wait for a train that failed
    ({"train": None}, 1, ["eval.t.base"]),  # ... or was never run
])
def test_which_evaluations_share_a_process(tmp_path, monkeypatch, codes, start, group):
    from cruijff_kit_runpod.agent import Agent

    monkeypatch.setenv("CK_POD_ROOT", str(tmp_path))
    agent = Agent()
    agent.codes = dict(codes)
    assert agent.eval_group(STAGES, start, {s["name"] for s in STAGES}) == group
    # a dependency that is not on this pod was done before the pod started
    assert agent.eval_group(STAGES[2:], 0, {"eval.t.epoch_0", "eval.t.epoch_1"}) == ["eval.t.epoch_0",
                                                                                   "eval.t.epoch_1"]


def test_a_group_process_that_fails_before_any_stage_fails_every_stage(tmp_path, monkeypatch) -> None:
    """A `ck stage` process that dies before touching status.json (an import error, a damaged spec) is a
    failure of every stage it was to run, with its exit code: never a silent "not run"."""
    import json

    from cruijff_kit_runpod.agent import Agent

    monkeypatch.setenv("CK_POD_ROOT", str(tmp_path))
    agent = Agent()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "status.json").write_text(json.dumps({"stages": {"eval.t.base": {"state": "pending"}}}))
    agent.run_dir = str(run_dir)
    monkeypatch.setattr(agent, "run_process", lambda names: 3)
    assert agent.run_group(["eval.t.base", "eval.t.epoch_0"]) == {"eval.t.base": 3, "eval.t.epoch_0": 3}
    monkeypatch.setattr(agent, "run_process", lambda names: 0)  # a clean exit that ran nothing stays "not run"
    assert agent.run_group(["eval.t.base", "eval.t.epoch_0"]) == {"eval.t.base": None, "eval.t.epoch_0": None}


def test_a_group_the_pod_stopped_or_found_claimed_before_any_stage_ran_none(tmp_path, monkeypatch) -> None:
    """Stopped at the pod's time limit, or claimed by another process (exit 75), before a stage began: the
    stages were not run (None: pending again), not failed."""
    import json

    from cruijff_kit_runpod.agent import CLAIMED_EXIT, Agent

    from cruijff_kit._base.errors import ExitCode

    assert CLAIMED_EXIT == ExitCode.CLAIMED
    monkeypatch.setenv("CK_POD_ROOT", str(tmp_path))
    agent = Agent()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "status.json").write_text(json.dumps({"stages": {}}))
    agent.run_dir = str(run_dir)
    names = ["eval.t.base", "eval.t.epoch_0"]
    monkeypatch.setattr(agent, "run_process", lambda names: CLAIMED_EXIT)
    assert agent.run_group(names) == dict.fromkeys(names)

    def stopped(names: list[str]) -> int:
        agent.reason = "time limit reached"
        return -15

    monkeypatch.setattr(agent, "run_process", stopped)
    assert agent.run_group(names) == dict.fromkeys(names)
