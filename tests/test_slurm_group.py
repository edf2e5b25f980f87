"""The slurm scheduler's `group_evals`: a run's evaluations in one job, without a SLURM cluster.

sbatch, squeue, sacct and scancel are stand-ins (shell scripts that record their arguments); the
job scripts are run with bash as a compute node would. Against a real SLURM: test_slurm_group_cluster.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from slurm_fixtures import read_status, slurm_env_fixture, slurm_plugin_site_fixture, slurm_spec

FIXTURES = (slurm_env_fixture, slurm_plugin_site_fixture)
STAGES = ["eval.check.epoch_0", "eval.check.epoch_1", "eval.check.epoch_2"]


def _fake_slurm(folder: Path, sacct_state: str = "PENDING") -> Path:
    """sbatch hands out ids 7, 8, ... and logs its arguments; squeue knows no job; sacct reports every
    job in the state written to ``folder/state`` (``sacct_state`` at first); scancel logs its arguments."""
    folder.mkdir()
    (folder / "state").write_text(sacct_state)
    (folder / "sbatch").write_text(
        f'#!/bin/bash\nn=$(cat {folder}/next 2>/dev/null || echo 7); echo $((n+1)) > {folder}/next\n'
        f'echo "$@" >> {folder}/sbatch.log; echo $n\n')
    (folder / "squeue").write_text("#!/bin/bash\nexit 1\n")
    (folder / "scancel").write_text(f'#!/bin/bash\necho "$@" >> {folder}/scancel.log\n')
    (folder / "sacct").write_text(
        "#!/bin/bash\nids=$(echo \"$@\" | sed -E 's/.*-j ([^ ]+).*/\\1/')\n"
        f"st=$(cat {folder}/state)\n"
        "for i in ${ids//,/ }; do\n"
        "  for t in 0 1; do\n"
        "    echo \"${i}_$t|$st|0:15|None|00:01:00|00:00:50||billing=1|vm|2026-01-01T00:00:00|2026-01-01T00:01:00\"\n"
        "  done\n"
        "  echo \"$i|$st|0:15|None|00:01:00|00:00:50||billing=1|vm|2026-01-01T00:00:00|2026-01-01T00:01:00\"\n"
        "done\n")
    for name in ("sbatch", "squeue", "sacct", "scancel"):
        (folder / name).chmod(0o755)
    return folder


def _spec(tmp_path: Path, experiment: str, **scheduler: Any) -> Path:
    """Two runs, each training 3 epochs and evaluating every saved epoch (3 eval stages per run)."""
    return slurm_spec(tmp_path, experiment=experiment, train={"epochs": 3}, evals={"checkpoints": "all"},
                      sweep={"train.lora.rank": [4, 8]}, scheduler=scheduler)


def _sbatch_calls(fake: Path) -> list[list[str]]:
    return [line.split() for line in (fake / "sbatch.log").read_text().splitlines()]


def _array_tasks(script: Path) -> dict[int, Path]:
    found = re.findall(r"^  (\d+)\) ck_script=(\S+); export CK_ARRAY_POS=\d+ ;;$", script.read_text(), re.M)
    return {int(i): Path(p) for i, p in found}


def _run_script(script: Path, env: dict[str, str], **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env, **extra})


@pytest.fixture(name="fake")
def fake_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    fake = _fake_slurm(tmp_path / "fakebin")
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    return fake


def test_a_runs_evaluations_are_one_job_and_a_sweeps_one_array(
        slurm_env: dict[str, str], ck: Any, tmp_path: Path, fake: Path) -> None:
    spec = _spec(tmp_path, "grouped")
    res = ck("run", str(spec), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "2 run(s); 8 stage(s) submitted" in res.stdout
    calls = _sbatch_calls(fake)
    assert len(calls) == 2, calls  # the train array, then one eval array (not one per target)
    assert calls[0][-1].endswith("-train.sbatch") and "--dependency" not in " ".join(calls[0])
    assert calls[1][-1].endswith("-evals.sbatch") and "--dependency=aftercorr:7" in calls[1]
    exp = tmp_path / "out" / "grouped"
    status = read_status(exp)
    runs = sorted(status)
    tasks = _array_tasks(Path(calls[1][-1]))
    assert sorted(tasks) == [0, 1] and "--array=0,1%2" in Path(calls[1][-1]).read_text()
    for run in runs:
        i = int(status[run]["train"]["job_id"].split("_")[1])  # the run's index, in every array
        script = tasks[i]
        assert script == exp / "runs" / run / "slurm" / "eval.check.epoch_0+2.sbatch"
        text = script.read_text()
        assert f"STAGES=({' '.join(STAGES)})" in text  # the plan's order
        assert 'ck_run "$PY" -m cruijff_kit stage "$RUN_DIR" "${STAGES[@]}"' in text
        assert f"--job-name=ck.grouped.{run}.evals" in text
        for stage in STAGES:
            entry = status[run][stage]
            # each stage records the array task it runs in, and the stages of that job
            assert entry["job_id"] == f"8_{i}/{stage}", entry
            assert entry["job_stages"] == STAGES and entry["state"] == "submitted"
            assert entry["dependency"] == "aftercorr:7" and entry["script"] == str(script)
        assert "job_stages" not in status[run]["train"]
    assert not (exp / "runs" / runs[0] / "slurm" / "eval.check.epoch_1.sbatch").exists()


def test_group_evals_false_submits_one_array_per_stage(
        slurm_env: dict[str, str], ck: Any, tmp_path: Path, fake: Path) -> None:
    spec = _spec(tmp_path, "ungrouped", group_evals=False)
    res = ck("run", str(spec), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    calls = _sbatch_calls(fake)
    assert [Path(c[-1]).name.split("-", 3)[-1] for c in calls] == ["train.sbatch", *(f"{s}.sbatch" for s in STAGES)]
    assert all("--dependency=aftercorr:7" in c for c in calls[1:])
    status = read_status(tmp_path / "out" / "ungrouped")
    for run in status:
        i = int(status[run]["train"]["job_id"].split("_")[1])
        for n, stage in enumerate(STAGES):
            entry = status[run][stage]
            assert entry["job_id"] == f"{8 + n}_{i}" and "job_stages" not in entry
            assert entry["script"].endswith(f"/slurm/{stage}.sbatch")
            text = Path(entry["script"]).read_text()
            assert "STAGES=" not in text and 'cruijff_kit stage "$RUN_DIR" "$STAGE"' in text


def test_stages_that_wait_for_different_jobs_are_not_grouped(
        slurm_env: dict[str, str], ck: Any, tmp_path: Path, fake: Path) -> None:
    """The base model's evaluation waits for nothing: its own job; the checkpoints' job waits for the train."""
    spec = slurm_spec(tmp_path, experiment="base", train={"epochs": 2},
                      evals={"checkpoints": "all", "include_base": True})
    assert ck("run", str(spec), cwd=tmp_path).returncode == 0
    calls = _sbatch_calls(fake)
    assert len(calls) == 3, calls  # train, the base evaluation (single), the two epochs (grouped)
    run_dir = next((tmp_path / "out" / "base" / "runs").iterdir())
    status = read_status(tmp_path / "out" / "base")[run_dir.name]
    assert "job_stages" not in status["eval.check.base"] and status["eval.check.base"].get("dependency") is None
    assert status["eval.check.epoch_0"]["job_stages"] == ["eval.check.epoch_0", "eval.check.epoch_1"]
    assert status["eval.check.epoch_0"]["dependency"] == "afterok:7"


def test_the_group_script_runs_every_stage_in_one_process_and_a_requeue_skips_the_finished(
        slurm_env: dict[str, str], ck: Any, tmp_path: Path, fake: Path) -> None:
    spec = slurm_spec(tmp_path, experiment="script", train={"epochs": 3}, evals={"checkpoints": "all"})
    assert ck("run", str(spec), cwd=tmp_path).returncode == 0
    exp = tmp_path / "out" / "script"
    run_dir = next((exp / "runs").iterdir())
    assert _run_script(run_dir / "slurm" / "train.sbatch", slurm_env).returncode == 0
    script = run_dir / "slurm" / "eval.check.epoch_0+2.sbatch"
    res = _run_script(script, slurm_env)
    assert res.returncode == 0, res.stderr
    status = read_status(exp)[run_dir.name]
    pids = set()
    for stage in STAGES:
        entry = status[stage]
        assert entry["state"] == "done" and entry["attempts"] == 1, entry
        pids.add(entry["pid"])
        assert (run_dir / "eval" / "check" / stage.rsplit(".", 1)[1] / "result.json").exists()
        assert f"stage {stage} of run {run_dir.name} done" in (run_dir / "logs" / f"{stage}.out").read_text()
    assert len(pids) == 1  # one process ran them all
    err = (run_dir / "logs" / f"{STAGES[0]}.err").read_text()
    assert f"stages {' '.join(STAGES)} exited with code 0" in err

    # requeued (SLURM_RESTART_COUNT > 0): done and failed stages are not run again, the others are,
    # and the job writes to the first one's logs
    from cruijff_kit import status as st

    st.update_stage(run_dir, STAGES[1], state="interrupted")
    st.update_stage(run_dir, STAGES[2], state="failed", error="boom")
    res = _run_script(script, slurm_env, SLURM_RESTART_COUNT="1")
    assert res.returncode == 0, res.stderr
    after = read_status(exp)[run_dir.name]
    assert [after[s]["attempts"] for s in STAGES] == [1, 2, 1]
    assert [after[s]["state"] for s in STAGES] == ["done", "done", "failed"]
    assert f"stages {STAGES[1]} exited with code 0" in (run_dir / "logs" / f"{STAGES[1]}.err").read_text()
    # submitted again by hand (no restart): only the failed one is still to do
    res = _run_script(script, slurm_env)
    assert res.returncode == 0, res.stderr
    assert [read_status(exp)[run_dir.name][s]["attempts"] for s in STAGES] == [1, 2, 2]
    # nothing left: the job says so and exits 0 without running anything
    res = _run_script(script, slurm_env)
    assert res.returncode == 0
    assert [read_status(exp)[run_dir.name][s]["attempts"] for s in STAGES] == [1, 2, 2]
    assert "every stage of this job is finished" in (run_dir / "logs" / f"{STAGES[0]}.err").read_text()


def test_requeue_marks_the_unfinished_stages_of_the_job(slurm_env: dict[str, str], ck: Any, tmp_path: Path,
                                                         fake: Path) -> None:
    spec = slurm_spec(tmp_path, experiment="requeue", train={"epochs": 3}, evals={"checkpoints": "all"})
    assert ck("run", str(spec), cwd=tmp_path).returncode == 0
    run_dir = next((tmp_path / "out" / "requeue" / "runs").iterdir())
    from cruijff_kit_slurm.recover import main

    from cruijff_kit import status as st

    st.update_stage(run_dir, STAGES[0], state="done")
    st.update_stage(run_dir, STAGES[1], state="interrupted", error="interrupted by SIGTERM")
    assert main([str(run_dir), *STAGES, "--requeued"]) == 0
    entries = read_status(tmp_path / "out" / "requeue")[run_dir.name]
    assert [entries[s]["state"] for s in STAGES] == ["done", "submitted", "submitted"]
    assert [entries[s].get("requeues") for s in STAGES] == [None, 1, 1]


def _run_for_real(run_dir: Path, env: dict[str, str]) -> None:
    """Run the train and eval jobs' scripts here, so that every stage is done with its outputs."""
    for name in ("train.sbatch", "eval.check.epoch_0+2.sbatch"):
        res = _run_script(run_dir / "slurm" / name, env)
        assert res.returncode == 0, res.stderr


def _set(run_dir: Path, states: list[str]) -> None:
    from cruijff_kit import status as st

    for stage, state in zip(STAGES, states, strict=True):
        st.update_stage(run_dir, stage, state=state)


@pytest.mark.parametrize(("slurm_state", "others"), [("CANCELLED by 0", "cancelled"), ("TIMEOUT", "failed"),
                                                     ("FAILED", "failed")])
def test_an_ended_job_settles_only_its_unfinished_stages(
        slurm_env: dict[str, str], ck: Any, tmp_path: Path, fake: Path, slurm_state: str, others: str) -> None:
    spec = slurm_spec(tmp_path, experiment="ended", train={"epochs": 3}, evals={"checkpoints": "all"})
    assert ck("run", str(spec), cwd=tmp_path).returncode == 0
    exp = tmp_path / "out" / "ended"
    run_dir = next((exp / "runs").iterdir())
    _run_for_real(run_dir, slurm_env)
    _set(run_dir, ["done", "running", "submitted"])  # killed while the 2nd ran
    (fake / "state").write_text(slurm_state)
    shown = ck("status", str(spec), "--json", cwd=tmp_path)  # exits 1 when a stage failed
    rows = {r["stage"]: r for r in json.loads(shown.stdout)}
    assert rows[STAGES[0]]["state"] == "done"
    assert rows[STAGES[1]]["state"] == rows[STAGES[2]]["state"] == others, rows
    entries = read_status(exp)[run_dir.name]
    assert [entries[s]["state"] for s in STAGES] == ["done", others, others]
    if others == "failed":
        assert slurm_state in entries[STAGES[2]]["error"] and "SLURM job 8" in entries[STAGES[2]]["error"]
    for stage in STAGES:  # the job's usage is every stage's
        assert json.loads((run_dir / "slurm" / f"{stage}.sacct.json").read_text())["job"]["job_id"] == "8"

    # `ck run` again submits only the unfinished (failed ones: on request), again as one job
    before = len(_sbatch_calls(fake))
    res = ck("run", str(spec), *(["--retry-failed"] if others == "failed" else []), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "2 stage(s) submitted" in res.stdout, (res.stdout, read_status(exp))
    calls = _sbatch_calls(fake)[before:]
    assert len(calls) == 1 and calls[0][-1].endswith("eval.check.epoch_1+1.sbatch"), calls
    entries = read_status(exp)[run_dir.name]
    assert entries[STAGES[0]]["job_id"] == f"8/{STAGES[0]}" and entries[STAGES[0]]["state"] == "done"
    assert [entries[s]["job_id"] for s in STAGES[1:]] == [f"9/{s}" for s in STAGES[1:]]
    assert entries[STAGES[1]]["job_stages"] == STAGES[1:]
    assert f"STAGES=({' '.join(STAGES[1:])})" in Path(calls[0][-1]).read_text()


def test_a_running_job_leaves_each_stage_its_own_state(
        slurm_env: dict[str, str], ck: Any, tmp_path: Path, fake: Path) -> None:
    """While the job runs: the finished stage is done, the one running runs, the next waits its turn;
    `ck run` resubmits none of them, and `ck cancel` cancels the job once."""
    spec = slurm_spec(tmp_path, experiment="live", train={"epochs": 3}, evals={"checkpoints": "all"})
    assert ck("run", str(spec), cwd=tmp_path).returncode == 0
    exp = tmp_path / "out" / "live"
    run_dir = next((exp / "runs").iterdir())
    _run_for_real(run_dir, slurm_env)
    _set(run_dir, ["done", "running", "submitted"])
    (fake / "state").write_text("RUNNING")
    rows = {r["stage"]: r for r in json.loads(ck("status", str(spec), "--json", cwd=tmp_path).stdout)}
    assert [rows[s]["state"] for s in STAGES] == ["done", "running", "submitted"], rows
    res = ck("run", str(spec), cwd=tmp_path)
    assert res.returncode == 0 and "0 stage(s) submitted" in res.stdout, res.stdout
    assert len(_sbatch_calls(fake)) == 2
    res = ck("cancel", str(spec), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (fake / "scancel.log").read_text().split() == ["8"]
    entries = read_status(exp)[run_dir.name]
    assert [entries[s]["state"] for s in STAGES] == ["done", "cancelled", "cancelled"]


def test_a_shared_stage_is_a_job_of_its_own_folder(
        slurm_env: dict[str, str], ck: Any, tmp_path: Path, fake: Path) -> None:
    """The base model's evaluation, the same for both runs, runs once in shared/: never in a run's job."""
    spec = slurm_spec(tmp_path, experiment="shared", train={"epochs": 2}, sweep={"train.lora.rank": [4, 8]},
                      evals={"checkpoints": "all", "include_base": True})
    res = ck("run", str(spec), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    exp = tmp_path / "out" / "shared"
    shared = [p.parent for p in (exp / "shared").glob("*/status.json")]
    assert len(shared) == 1
    entry = json.loads((shared[0] / "status.json").read_text())["stages"]["eval.check.base"]
    assert "job_stages" not in entry and "/" not in entry["job_id"]
    assert entry["script"] == str(shared[0] / "slurm" / "eval.check.base.sbatch")
    status = read_status(exp)
    for run in status:
        assert status[run]["eval.check.base"]["shared"] == f"shared/{shared[0].name}"
        assert status[run]["eval.check.epoch_0"]["job_stages"] == ["eval.check.epoch_0", "eval.check.epoch_1"]
    assert len(_sbatch_calls(fake)) == 3  # train array, the shared stage, the runs' eval array
