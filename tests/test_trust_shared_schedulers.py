"""Identical stages run once on the SLURM and RunPod schedulers too: the base-model eval of a sweep
is one job (one pod), in ``shared/<name>/``, and every run shows its result.

SLURM: `ck run --dry-run` writes the job scripts (tests/slurm_fixtures.py's `slurmtest` plugins), and one
test runs the sweep on a real single-node SLURM. RunPod: the fake RunPod and bucket on 127.0.0.1
(tests/fake_runpod.py) run each pod's real agent here, with the toy plugins (the toy evaluator scores
0.5 on the base model and 1.0 on an adapter).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from runpod_fixtures import run_ck, running_fake_runpod, running_fake_store, write_profile, write_toy_spec
from slurm_fixtures import (
    cancel_leftovers_fixture,
    poll,
    slurm_cluster_fixture,
    slurm_env_fixture,
    slurm_plugin_site_fixture,
    slurm_spec,
)

from cruijff_kit import status

FIXTURES = (cancel_leftovers_fixture, slurm_cluster_fixture, slurm_env_fixture, slurm_plugin_site_fixture)
fake_runpod = pytest.fixture(running_fake_runpod, name="fake_runpod")
fake_store = pytest.fixture(running_fake_store, name="fake_store")

BASE = "eval.check.base"
EPOCH = "eval.check.epoch_0"


def _status(folder: Path) -> dict[str, dict[str, Any]]:
    return json.loads((folder / "status.json").read_text())["stages"]


def _sbatch_options(text: str) -> list[str]:
    return [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("#SBATCH ")]


def _array_tasks(script: Path) -> list[Path]:
    """The stage scripts a job array runs, one per task."""
    return [Path(p) for p in re.findall(r"^  \d+\) ck_script=(\S+);", script.read_text(), re.M)]


def _only_folder(parent: Path) -> Path:
    (folder,) = sorted(p for p in parent.iterdir() if p.is_dir())
    return folder


# --------------------------------------------------------------------------- SLURM, dry run
def test_slurm_dry_run_writes_one_script_for_the_shared_base_eval(slurm_env: dict[str, str], ck: Any,
                                                                  tmp_path: Path) -> None:
    spec = slurm_spec(
        tmp_path, experiment="shared", sweep={"train.lora.rank": [4, 8]}, evals={"include_base": True},
        scheduler={"resources": {"gpus": 2, "cpus": 6, "memory": "8GB", "time": "02:00:00"},
                   "eval_resources": {"gpus": 1, "cpus": 3, "memory": "2GB", "time": "00:30:00"}})
    res = ck("run", str(spec), "--dry-run", cwd=tmp_path)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
    exp = tmp_path / "out" / "shared"
    runs = sorted((exp / "runs").iterdir())
    assert len(runs) == 2
    shared = _only_folder(exp / "shared")
    assert shared.name.startswith("check-base-")

    # every script ck wrote: each run's train and epoch eval, and the base eval once, in shared/
    stage_scripts = sorted(p.relative_to(exp).as_posix() for p in exp.glob("*/*/slurm/*.sbatch"))
    assert stage_scripts == sorted([*(f"runs/{r.name}/slurm/{s}.sbatch" for r in runs for s in ("train", EPOCH)),
                                    f"shared/{shared.name}/slurm/{BASE}.sbatch"])
    base = (shared / "slurm" / f"{BASE}.sbatch").read_text()
    opts = _sbatch_options(base)
    for want in ("--nodes=1", "--cpus-per-task=3", "--mem=2048M", "--time=30", "--gpus-per-node=1",
                 f"--output={shared / 'logs' / (BASE + '.out')}", f"--error={shared / 'logs' / (BASE + '.err')}"):
        assert want in opts, (want, opts)
    assert f"\nRUN_DIR={shared}\nSTAGE={BASE}\n" in base
    assert (shared / "logs").is_dir()

    # arrays: one per stage of both runs; the base eval is a single job, in no array
    arrays = sorted((exp / "slurm").glob("*.sbatch"))
    tasks = {a.name.split("-", 3)[-1]: _array_tasks(a) for a in arrays}
    assert sorted(tasks) == sorted(["train.sbatch", f"{EPOCH}.sbatch"])
    for stage, paths in tasks.items():
        assert sorted(p.parent.parent for p in paths) == runs, (stage, paths)
    assert all(BASE not in a.read_text() for a in arrays)

    # the shared folder's status says pending with its script; each run's entry is the pointer only
    entry = _status(shared)[BASE]
    assert entry["state"] == "pending" and entry["script"] == str(shared / "slurm" / f"{BASE}.sbatch")
    assert entry.get("dependency") is None
    for run in runs:
        assert _status(run)[BASE] == {"shared": f"shared/{shared.name}", "updated": _status(run)[BASE]["updated"]}
        assert not (run / "slurm" / f"{BASE}.sbatch").exists()


def test_slurm_counts_a_queued_shared_job_against_max_queued(slurm_env: dict[str, str], ck: Any,
                                                             tmp_path: Path) -> None:
    """The back-pressure (profile `max_queued`) counts every active job of the experiment, a shared
    stage's too: an earlier `ck run` may have left it in the queue."""
    from cruijff_kit_slurm.scheduler import SlurmScheduler

    spec = slurm_spec(tmp_path, experiment="queued", sweep={"train.lora.rank": [4, 8]}, evals={"include_base": True})
    res = ck("run", str(spec), "--dry-run", cwd=tmp_path)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
    assert "shared/<name>/slurm/" in res.stderr
    exp = tmp_path / "out" / "queued"
    runs = sorted((exp / "runs").iterdir())
    shared = _only_folder(exp / "shared")
    # what `ck run` records once sbatch answered: one job per run's train, one for the shared base eval
    for n, folder in enumerate(runs):
        status.update_stage(folder, "train", state="submitted", scheduler="slurm", job_id=str(100 + n))
    status.update_stage(shared, BASE, state="running", scheduler="slurm", job_id="200")
    assert sorted(SlurmScheduler._experiment_job_ids(exp)) == ["100", "101", "200"]
    status.update_stage(shared, BASE, state="done")
    assert sorted(SlurmScheduler._experiment_job_ids(exp)) == ["100", "101"]


# --------------------------------------------------------------------------- SLURM, real cluster
@pytest.fixture(name="cancel_shared_leftovers")
def cancel_shared_leftovers_fixture() -> Iterator[Callable[[Path], None]]:
    """Like ``cancel_leftovers`` (which reads runs/ only): the jobs of the experiments' shared stages
    still queued at the end of the test are cancelled."""
    folders: list[Path] = []
    yield folders.append
    ids = [str(e["job_id"]) for exp in folders for f in exp.glob("shared/*/status.json")
           for e in json.loads(f.read_text())["stages"].values()
           if e.get("job_id") and e.get("state") in ("submitted", "running")]
    if ids and shutil.which("scancel"):
        subprocess.run(["scancel", *ids], capture_output=True, check=False)


@pytest.mark.slurm
@pytest.mark.integration
@pytest.mark.slow
def test_slurm_sweep_runs_the_shared_base_eval_once(slurm_cluster: dict[str, Any], slurm_env: dict[str, str],
                                                    ck: Any, tmp_path: Path, cancel_leftovers: Any,
                                                    cancel_shared_leftovers: Any) -> None:
    spec = slurm_spec(tmp_path, experiment="sharedreal", sweep={"train.lora.rank": [4, 8]},
                      evals={"include_base": True}, profile={"partition": slurm_cluster["partition"]})
    exp = tmp_path / "out" / "sharedreal"
    cancel_leftovers(exp)
    cancel_shared_leftovers(exp)
    res = ck("run", str(spec), cwd=tmp_path)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
    assert "2 run(s); 5 stage(s) submitted" in res.stdout, res.stdout
    # settled, and sacct's final record (usage) of every job is in
    rows = poll(exp, lambda rows: all(r.get("state") not in ("submitted", "running") and r.get("usage")
                                      for r in rows))
    assert {r["state"] for r in rows} == {"done"}, rows
    runs = sorted((exp / "runs").iterdir())
    shared = _only_folder(exp / "shared")
    pointer = f"shared/{shared.name}"

    # the base eval ran once, as one SLURM job (no array), in the shared folder
    base = [r for r in rows if r["stage"] == BASE]
    assert sorted(r["run"] for r in base) == [r.name for r in runs]
    assert {(r["shared"], r["job_id"]) for r in base} == {(pointer, _status(shared)[BASE]["job_id"])}
    job = base[0]["job_id"]
    assert "_" not in job and base[0]["usage"]["state"] == "COMPLETED"
    assert [p.relative_to(exp).as_posix() for p in sorted(exp.rglob("eval/check/base/result.json"))] == \
        [f"{pointer}/eval/check/base/result.json"]
    assert f"[ck-slurm] job {job} " in (shared / "logs" / f"{BASE}.err").read_text()
    assert json.loads((shared / "eval" / "results.json").read_text())["check"]["base"]["accuracy"] == 1.0
    assert (shared / "slurm" / f"{BASE}.sacct.json").exists()
    # each run's own epoch eval ran in its own folder, in one array with the other run's
    epoch_jobs = {r["job_id"] for r in rows if r["stage"] == EPOCH}
    assert len(epoch_jobs) == 2 and len({j.split("_")[0] for j in epoch_jobs}) == 1
    for run in runs:
        assert _status(run)[BASE]["shared"] == pointer and "job_id" not in _status(run)[BASE]
        assert json.loads((run / "eval" / "results.json").read_text())["check"]["base"] == {"shared": pointer}

    shown = ck("status", str(spec), cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout.count("done (shared)") == 2, shown.stdout


# --------------------------------------------------------------------------- RunPod, fake API
RP_BASE = "eval.toy.base"
RP_EPOCH = "eval.toy.epoch_0"
SWEEP = "sweep:\n  train.learning_rate: [1.0e-4, 2.0e-4]\n"


def _rp_spec(tmp_path: Path, *, scheduler: str = "", evals: str = "") -> Path:
    """The runpod flow's toy spec (train, eval of base and epoch_0) as a sweep of two runs."""
    spec = write_toy_spec(tmp_path, scheduler=scheduler)
    text = spec.read_text()
    if evals:
        text = text.replace("include_base: true}", f"include_base: true, {evals}}}")
    spec.write_text(text + SWEEP)
    return spec


def _rp_exp(tmp_path: Path) -> Path:
    return tmp_path / "runs" / "rp"


def _json_out(out: str) -> Any:
    """The JSON document of a `ck ... --json` output captured with stderr (messages come before it)."""
    start = min(i for i in (out.find("["), out.find("{")) if i >= 0)
    return json.JSONDecoder().raw_decode(out[start:])[0]


def _pods_of(folder: Path) -> list[dict[str, Any]]:
    return json.loads((folder / "runpod.json").read_text())["pods"]


@pytest.mark.parametrize(("pod_per", "run_pods"), [
    ("run", [["train", RP_EPOCH]]),  # one pod per run, and one for the shared folder's single stage
    ("stage", [["train"], [RP_EPOCH]]),  # one pod per stage: the shared stage still has one pod only
])
def test_runpod_sweep_runs_the_base_eval_on_one_pod_of_its_own(fake_runpod, fake_store, tmp_path, capsys,
                                                                 pod_per, run_pods):
    spec = _rp_spec(tmp_path, scheduler=f"wait: true\npod_per: {pod_per}\n")
    write_profile(tmp_path, fake_store)
    code, out = run_ck(capsys, "run", str(spec))
    assert code == 0, out
    exp = _rp_exp(tmp_path)
    runs = sorted((exp / "runs").iterdir())
    shared = _only_folder(exp / "shared")
    pointer = f"shared/{shared.name}"
    assert len(runs) == 2

    n_pods = 2 * len(run_pods) + 1
    assert len(fake_runpod.calls("podFindAndDeployOnDemand")) == n_pods and len(fake_runpod.pods) == n_pods
    for run in runs:
        assert [pod["stages"] for pod in _pods_of(run)] == run_pods
    (shared_pod,) = _pods_of(shared)
    assert shared_pod["stages"] == [RP_BASE]
    assert shared_pod["name"].startswith(f"ck-{shared.name}-")
    assert fake_runpod.running() == [] and all(p["terminated_by"] == "pod" for p in fake_runpod.pods.values())

    # the base model was evaluated once, on the shared folder's pod, in its copy of the shared folder
    ran = {pid: (tmp_path / "containers" / pid / "container.log").read_text() for pid in fake_runpod.pods}
    assert [pid for pid, log in ran.items() if f" {RP_BASE}\n" in log] == [shared_pod["id"]]
    assert sum(log.count(f" {RP_EPOCH}\n") for log in ran.values()) == 2

    # its results came back into shared/, and only there
    st = _status(shared)[RP_BASE]
    assert st["state"] == "done" and st["job_id"] == f"{shared_pod['id']}/{RP_BASE}" and not st.get("live")
    assert json.loads((shared / "eval" / "results.json").read_text())["toy"]["base"]["accuracy"]["value"] == 0.5
    assert json.loads((shared / "eval" / "toy" / "base" / "log.json").read_text())["target"] == "base"
    assert (shared / "logs" / f"{RP_BASE}.err").exists()
    for run in runs:
        assert _status(run)[RP_BASE]["shared"] == pointer and "state" not in _status(run)[RP_BASE]
        results = json.loads((run / "eval" / "results.json").read_text())["toy"]
        assert results["base"] == {"shared": pointer} and results["epoch_0"]["accuracy"]["value"] == 1.0
        assert not (run / "eval" / "toy" / "base").exists()

    # ck status: each run's base eval done, marked shared
    code, out = run_ck(capsys, "status", "--json", str(spec))
    assert code == 0, out
    rows = _json_out(out)
    base = sorted((r["run"], r["state"], r.get("shared")) for r in rows if r["stage"] == RP_BASE)
    assert base == [(run.name, "done", pointer) for run in runs]
    assert {r["state"] for r in rows} == {"done"}
    code, out = run_ck(capsys, "status", str(spec))
    assert code == 0 and "done (shared)" in out and "Still running" not in out

    # ck summarize: the base value (0.5) on both runs' base rows, the adapters' (1.0) on epoch_0
    code, out = run_ck(capsys, "summarize", "--no-plots", "--json", str(spec))
    assert code == 0, out
    summary = _json_out(out)
    got = sorted((r["run"], r["target"], r["accuracy"], r["shared"] or None) for r in summary["rows"])
    assert got == sorted([*((run.name, "base", 0.5, pointer) for run in runs),
                          *((run.name, "epoch_0", 1.0, None) for run in runs)])

    code, out = run_ck(capsys, "run", str(spec))  # nothing left: no new pod
    assert code == 0 and "0 stage(s) submitted, 5 already done" in out, out
    assert len(fake_runpod.calls("podFindAndDeployOnDemand")) == n_pods


def test_runpod_cancel_terminates_the_shared_stages_pod(fake_runpod, fake_store, tmp_path, capsys):
    spec = _rp_spec(tmp_path, evals="sleep_seconds: 300")  # every eval is still running when cancelled
    write_profile(tmp_path, fake_store)
    code, out = run_ck(capsys, "run", str(spec))
    assert code == 0, out
    exp = _rp_exp(tmp_path)
    shared = _only_folder(exp / "shared")
    runs = sorted((exp / "runs").iterdir())
    (shared_pod,) = _pods_of(shared)
    assert len(fake_runpod.running()) == 3 and shared_pod["id"] in fake_runpod.running()
    deadline = time.monotonic() + 60
    while _status(shared)[RP_BASE]["state"] != "running":
        assert time.monotonic() < deadline, "the shared pod never reported its stage running"
        run_ck(capsys, "status", str(spec))
        time.sleep(0.2)
    code, out = run_ck(capsys, "status", "--json", str(spec))
    rows = _json_out(out)
    assert {(r["state"], r["shared"]) for r in rows if r["stage"] == RP_BASE} == {("running", f"shared/{shared.name}")}
    assert all(r["live"].startswith(f"RunPod pod {shared_pod['id']}") for r in rows if r["stage"] == RP_BASE)

    # what is active now: each run's epoch eval (its train too, if not back yet), the base eval once
    active = [(f.name, s) for f in [*runs, shared] for s, e in _status(f).items()
              if e.get("state") in ("submitted", "running")]
    assert (shared.name, RP_BASE) in active and not any(s == RP_BASE for f, s in active if f != shared.name)
    code, out = run_ck(capsys, "cancel", str(spec))
    assert code == 0, out
    assert f"Cancelled {len(active)} stage(s)" in out
    assert fake_runpod.running() == []
    assert fake_runpod.pods[shared_pod["id"]]["terminated_by"] == "user"
    entry = _status(shared)[RP_BASE]
    assert entry["state"] == "cancelled" and not entry.get("live")
    assert all(_status(run)[RP_EPOCH]["state"] == "cancelled" for run in runs)
    code, out = run_ck(capsys, "status", "--json", str(spec))
    rows = _json_out(out)
    assert {r["state"] for r in rows if r["stage"] == RP_BASE} == {"cancelled"}
    assert len([r for r in rows if r["stage"] == RP_BASE]) == 2
    code, out = run_ck(capsys, "status", str(spec))
    assert "Still running" not in out
