"""`ck status` of many finished SLURM jobs: every stage's entry right after one refresh, one write per
run, and writes that stay atomic when they are batched (a failure or a kill mid-batch leaves every
file whole, old or new).

The fake `squeue` and `sacct` here are small executables on PATH that answer in the formats the real
commands print with the options slurmcli passes (`squeue -h -r -o %i|%T|%r`, `sacct -n -P -o ...`),
and count their calls."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from cruijff_kit import StageJob, status
from cruijff_kit._base import fileio
from cruijff_kit._engine.runner import experiment_status

ROOT = Path(__file__).resolve().parents[1]
T0, T1 = "2026-12-01T10:00:00", "2026-12-01T10:20:00"

#: job id -> (sacct State, ExitCode, Reason); squeue lists the jobs in QUEUED below
SACCT = {
    "500_0": ("COMPLETED", "0:0", "None"),     # train recorded done
    "501_0": ("COMPLETED", "0:0", "None"),     # eval recorded done
    "500_1": ("FAILED", "1:0", "None"),        # train running when its job failed
    "501_1": ("CANCELLED", "0:0", "Dependency"),  # eval removed: its train failed (--kill-on-invalid-dep)
    "500_2": ("OUT_OF_MEMORY", "0:125", "None"),  # train running, SLURM stopped it for memory
    "501_2": ("CANCELLED by 1000", "0:15", "None"),  # eval cancelled by a user
    "500_3": ("COMPLETED", "0:0", "None"),     # train: the job ended but the stage never recorded its end
    "501_3": ("PENDING", "0:0", "Dependency"),  # eval still waiting (squeue says so too)
    "500_4": ("RUNNING", "0:0", "None"),       # train still running (squeue says so too)
    "501_4": ("PENDING", "0:0", "Dependency"),
    "500_5": ("TIMEOUT", "0:0", "None"),       # train hit its time limit
    "501_5": ("CANCELLED", "0:0", "Dependency"),
}
QUEUED = {"501_3": ("PENDING", "Dependency"), "500_4": ("RUNNING", "None"), "501_4": ("PENDING", "Dependency")}

SQUEUE_PY = """#!{python}
import sys
open("{bin}/calls.log", "a").write("squeue\\n")
queued = {queued!r}
ids = sys.argv[sys.argv.index("-j") + 1].split(",")
for jid, (state, reason) in queued.items():
    if jid.split("_")[0] in ids:
        print(f"{{jid}}|{{state}}|{{reason}}")
"""

SACCT_PY = """#!{python}
import sys
open("{bin}/calls.log", "a").write("sacct\\n")
jobs = {jobs!r}
ids = sys.argv[sys.argv.index("-j") + 1].split(",")
for jid, (state, code, reason) in jobs.items():
    if jid.split("_")[0] not in ids:
        continue
    end = "Unknown" if state in ("PENDING", "RUNNING") else "{t1}"
    print(f"{{jid}}|{{state}}|{{code}}|{{reason}}|00:20:00|00:19:30||billing=1,cpu=1|node01|{t0}|{{end}}")
    if end != "Unknown" and not state.startswith("CANCELLED"):
        print(f"{{jid}}.batch|{{state.split()[0]}}|{{code}}||00:20:00|00:19:30|812M|cpu=1|node01|{t0}|{{end}}")
"""


def fake_slurm(folder: Path, jobs: dict[str, tuple[str, str, str]], queued: dict[str, tuple[str, str]]) -> Path:
    """Fake squeue/sacct answering ``jobs`` and ``queued``; each call is a line of ``calls.log``."""
    folder.mkdir()
    for name, text in (("squeue", SQUEUE_PY.format(python=sys.executable, bin=folder, queued=queued)),
                       ("sacct", SACCT_PY.format(python=sys.executable, bin=folder, jobs=jobs, t0=T0, t1=T1))):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


def calls(fakebin: Path) -> list[str]:
    log = fakebin / "calls.log"
    return log.read_text().split() if log.exists() else []


def submitted_entry(job_id: str, array: str, **extra: Any) -> dict[str, Any]:
    """A stage entry as the slurm scheduler writes it when it submits an array task."""
    return {"state": "submitted", "scheduler": "slurm", "job_id": job_id, "slurm_array": array,
            "slurm_state": "PENDING", "submitted": "2026-12-01T09:59:00Z", "updated": "2026-12-01T09:59:00Z",
            "script": "x.sbatch", **extra}


def make_runs(exp: Path, n: int = 6) -> list[Path]:
    """``n`` runs: train (task i of array 500) and one eval (task i of array 501, aftercorr), in the
    states their stages recorded (see :data:`SACCT`)."""
    recorded = {  # run index -> (train state, eval state) as the stages themselves left them
        0: ("done", "done"), 1: ("running", "submitted"), 2: ("running", "submitted"),
        3: ("submitted", "submitted"), 4: ("running", "submitted"), 5: ("running", "submitted"),
    }
    runs = []
    for i in range(n):
        run = exp / "runs" / f"run-{i}"
        (run / "logs").mkdir(parents=True)
        (run / "logs" / "train.err").write_text(f"line one\ntrain {i} said goodbye\n")
        tr, ev = recorded[i % 6]
        stages = {
            "train": {**submitted_entry(f"500_{i}", "500"), "state": tr},
            "eval.check.epoch_0": {**submitted_entry(f"501_{i}", "501", dependency="aftercorr:500"), "state": ev},
        }
        for entry in stages.values():
            if entry["state"] == "done":
                entry.update(started="2026-12-01T10:00:05Z", ended="2026-12-01T10:19:55Z", exit_code=0)
        (run / "status.json").write_text(json.dumps({"run": run.name, "stages": stages}, indent=2))
        runs.append(run)
    return runs


def jobs_of(runs: list[Path]) -> list[StageJob]:
    return [StageJob("exp", r.name, r, stage, [], None, "train" if stage == "train" else "eval")  # type: ignore[arg-type]
            for r in runs for stage in ("train", "eval.check.epoch_0")]


def slurm_scheduler() -> Any:
    from cruijff_kit_slurm.config import SlurmConfig
    from cruijff_kit_slurm.scheduler import SlurmScheduler

    return SlurmScheduler(SlurmConfig())


@pytest.fixture(name="fakebin")
def fakebin_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    fb = fake_slurm(tmp_path / "fakebin", SACCT, QUEUED)
    monkeypatch.setenv("PATH", f"{fb}{os.pathsep}{os.environ['PATH']}")
    return fb


def test_one_refresh_sets_every_stage_from_the_schedulers_answers(fakebin: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    runs = make_runs(tmp_path / "exp")
    replaced: list[str] = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (replaced.append(os.fspath(b)), real_replace(a, b))[1])
    states = slurm_scheduler().refresh(jobs_of(runs))
    monkeypatch.setattr(os, "replace", real_replace)

    assert calls(fakebin) == ["squeue", "sacct"]
    # one write of each run's status.json, however many of its stages changed
    assert sorted(p for p in replaced if p.endswith("status.json")) == sorted(str(r / "status.json") for r in runs)
    assert states == {"500_0": "done", "501_0": "done", "500_1": "failed", "501_1": "pending", "500_2": "failed",
                      "501_2": "cancelled", "500_3": "failed", "501_3": "submitted", "500_4": "running",
                      "501_4": "submitted", "500_5": "failed", "501_5": "pending"}
    st = {r.name: json.loads((r / "status.json").read_text())["stages"] for r in runs}
    tr, ev = "train", "eval.check.epoch_0"

    usage0 = {"job_id": "500_0", "state": "COMPLETED", "exit_code": "0:0", "elapsed": "00:20:00",
              "totalcpu": "00:19:30", "alloctres": "billing=1,cpu=1", "nodelist": "node01", "start": T0, "end": T1,
              "maxrss": "812M"}
    assert st["run-0"][tr]["state"] == "done" and st["run-0"][tr]["usage"] == usage0
    assert st["run-0"][tr]["slurm_state"] == "COMPLETED" and "slurm_reason" not in st["run-0"][tr]
    assert st["run-0"][ev]["usage"]["job_id"] == "501_0" and st["run-0"][ev]["state"] == "done"
    sacct0 = json.loads((runs[0] / "slurm" / "train.sacct.json").read_text())
    assert sacct0["job"] == usage0 and [s["JobID"] for s in sacct0["steps"]] == ["500_0.batch"]

    f1 = st["run-1"][tr]
    assert f1["state"] == "failed" and f1["exit_code"] == 1 and f1["ended"] == T1
    assert f1["error"] == "SLURM job 500_1 ended FAILED, exit code 1:0."
    assert f1["error_tail"] == "line one\ntrain 1 said goodbye"
    e1 = st["run-1"][ev]
    assert e1["state"] == "pending" and "job_id" not in e1 and e1["last_job_id"] == "501_1"
    assert e1["error"] == "not run: the train stage it waits for did not finish"

    o2 = st["run-2"][tr]
    assert o2["state"] == "failed" and o2["oom"] is True and o2["slurm_state"] == "OUT_OF_MEMORY"
    assert st["run-2"][ev]["state"] == "cancelled" and st["run-2"][ev]["usage"]["cancelledby"] == "1000"

    assert st["run-3"][tr]["state"] == "failed"
    assert st["run-3"][tr]["error"] == "SLURM job 500_3 ended without the stage recording its end"
    assert st["run-3"][ev]["state"] == "submitted" and st["run-3"][ev]["slurm_reason"] == "Dependency"
    assert "usage" not in st["run-3"][ev]

    assert st["run-4"][tr]["state"] == "running" and st["run-4"][tr]["slurm_state"] == "RUNNING"
    assert "usage" not in st["run-4"][tr] and not (runs[4] / "slurm").exists()

    t5 = st["run-5"][tr]
    assert t5["state"] == "failed" and "reached its time limit" in t5["error"] and t5["slurm_state"] == "TIMEOUT"
    for run in runs:  # no temp file left behind
        assert not [p.name for p in run.rglob("*.tmp")]


def test_status_rows_after_the_refresh_are_the_files(fakebin: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`ck status` of an experiment submitted for real (`ck run` to the benchmark's fake SLURM): after
    the first call every row is done with sacct's usage, as written; the second asks SLURM nothing."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import status_at_scale as bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    fb = bench.fake_slurm(tmp_path / "benchbin")
    work = bench.submit(tmp_path / "work", 3, fb)
    monkeypatch.setenv("PATH", f"{fb}{os.pathsep}{os.environ['PATH']}")
    from cruijff_kit._base.layout import ExperimentLayout

    exp = ExperimentLayout(work / "out" / "scale")
    replaced: list[str] = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (replaced.append(Path(b).name), real_replace(a, b))[1])
    rows = experiment_status(exp)
    monkeypatch.setattr(os, "replace", real_replace)
    assert calls(fb) == ["squeue", "sacct"]
    # each run's status.json written once, and each stage's sacct record
    assert sorted(replaced) == ["eval.exact-match.epoch_0.sacct.json"] * 3 + ["status.json"] * 3 + \
        ["train.sacct.json"] * 3
    assert len(rows) == 6 and {r["state"] for r in rows} == {"done"}
    for row in rows:
        entry = status.read(exp.runs_dir / row["run"])["stages"][row["stage"]]
        assert row["usage"] == entry["usage"] and row["slurm_state"] == "COMPLETED"
        assert row["usage"]["maxrss"] == "812M" and row["usage"]["elapsed"] == "00:20:00"
        assert row["usage"]["job_id"] == row["job_id"] and "_" in row["job_id"]
    assert experiment_status(exp) == rows
    assert calls(fb) == ["squeue", "sacct"]  # nothing left to ask


# --------------------------------------------------------------------------- atomic batches
def test_batched_writes_fsync_every_temp_file_before_any_rename(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_open = os.fsync, os.replace, os.open
    names: dict[int, str] = {}

    def opened(path: Any, flags: int, *a: Any, **k: Any) -> int:
        fd = real_open(path, flags, *a, **k)
        names[fd] = os.fspath(path)
        return fd

    monkeypatch.setattr(os, "open", opened)
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", names.get(fd, "?"))), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("rename", os.fspath(a))), real_replace(a, b))[1])
    items = [(tmp_path / f"d{i % 3}" / f"f{i}.json", f'{{"i": {i}}}\n') for i in range(40)]
    fileio.atomic_write_many(items)
    monkeypatch.undo()
    renames = [p for e, p in events if e == "rename"]
    assert len(renames) == 40
    first_rename = events.index(("rename", renames[0]))
    assert sorted(p for e, p in events[:first_rename] if e == "fsync") == sorted(renames)
    assert [json.loads(p.read_text())["i"] for p, _ in items] == list(range(40))


def test_a_failed_write_in_a_batch_leaves_every_file_as_it_was(tmp_path: Path) -> None:
    paths = [tmp_path / f"f{i}.json" for i in range(5)]
    for i, p in enumerate(paths):
        p.write_text(f'{{"old": {i}}}\n')
    items = [(p, f'{{"new": {i}}}\n') for i, p in enumerate(paths)]
    items[3] = (paths[3], "\udcff")  # a lone surrogate: not encodable, the write fails
    with pytest.raises(UnicodeEncodeError):
        fileio.atomic_write_many(items)
    assert [json.loads(p.read_text()) for p in paths] == [{"old": i} for i in range(5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"f{i}.json" for i in range(5)]  # no temp files


def test_update_runs_fails_a_batch_whole_and_keeps_the_batches_before(tmp_path: Path) -> None:
    runs = make_runs(tmp_path / "exp")
    before = {r: (r / "status.json").read_text() for r in runs}

    def change(run_dir: Path, stages: dict[str, Any], files: dict[Path, Any]) -> dict[str, Any]:
        if run_dir.name == "run-3":
            raise RuntimeError("boom")
        files[run_dir / "extra.json"] = {"seen": stages["train"]["job_id"]}
        return {"train": {"note": run_dir.name, "slurm_state": None}}

    with pytest.raises(RuntimeError, match="boom"):
        status.update_runs(runs, change, batch=2)
    for r in runs[:2]:  # the first batch (run-0, run-1) is written
        entry = status.read(r)["stages"]["train"]
        assert entry["note"] == r.name and "slurm_state" not in entry
        assert json.loads((r / "extra.json").read_text()) == {"seen": entry["job_id"]}
    for r in runs[2:]:  # the failing batch (run-2, run-3) and those after it are untouched
        assert (r / "status.json").read_text() == before[r] and not (r / "extra.json").exists()
    assert not list((tmp_path / "exp").rglob("*.tmp"))


def test_update_runs_holds_each_runs_lock_until_written(tmp_path: Path) -> None:
    """A `ck stage` finishing while the refresh is between reading and writing its run is not lost:
    it waits for the lock, then changes the refreshed file."""
    runs = make_runs(tmp_path / "exp", 2)
    code = textwrap.dedent(f"""
        from cruijff_kit import status
        status.update_stage({str(runs[0])!r}, "eval.check.epoch_0", state="done", exit_code=0)
    """)
    started: list[subprocess.Popen[str]] = []

    def change(run_dir: Path, stages: dict[str, Any], files: dict[Path, Any]) -> dict[str, Any]:
        if not started:
            started.append(subprocess.Popen([sys.executable, "-c", code], text=True))
            time.sleep(1.0)  # long enough for the other process to try the lock
        return {"train": {"slurm_state": "COMPLETED"}}

    status.update_runs(runs, change)
    assert started[0].wait(60) == 0
    st = status.read(runs[0])["stages"]
    assert st["train"]["slurm_state"] == "COMPLETED" and st["eval.check.epoch_0"]["state"] == "done"


def test_update_runs_renames_each_status_file_while_holding_its_lock(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from filelock import FileLock, Timeout

    runs = make_runs(tmp_path / "exp", 5)
    held: list[bool] = []
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        if os.fspath(dst).endswith("status.json"):
            other = FileLock(os.fspath(dst) + ".lock", timeout=0)  # another holder (its own open file)
            try:
                other.acquire()
                other.release()
                held.append(False)
            except Timeout:
                held.append(True)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    status.update_runs(runs, lambda run_dir, stages, files: {"train": {"slurm_state": "COMPLETED"}}, batch=2)
    monkeypatch.undo()
    assert held == [True] * 5
    assert {status.read(r)["stages"]["train"]["slurm_state"] for r in runs} == {"COMPLETED"}


KILLED_WRITER = """
import sys, json
from pathlib import Path
from cruijff_kit import status
runs = [Path(p) for p in sys.argv[1:]]
n = 0
def change(run_dir, stages, files):
    files[run_dir / "slurm" / "train.sacct.json"] = {"job": {"n": n}, "steps": ["x" * 2000] * 20}
    return {"train": {"n": n, "pad": "y" * 20000}}
print("ready", flush=True)
while True:
    n += 1
    status.update_runs(runs, change, batch=16)
"""


def test_a_writer_killed_mid_batch_leaves_every_file_whole(tmp_path: Path) -> None:
    runs = make_runs(tmp_path / "exp", 48)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, *map(str, runs)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    seen_torn = 0
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:  # a reader meanwhile never sees a half-written file
        for r in runs[::7]:
            try:
                status.read(r)
                f = r / "slurm" / "train.sacct.json"
                if f.exists():
                    json.loads(f.read_text())
            except (status.DamagedState, json.JSONDecodeError):
                seen_torn += 1
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert seen_torn == 0
    ns = set()
    for r in runs:  # every file whole: the state the stages recorded, plus one of the writer's rounds
        entry = status.read(r)["stages"]["train"]
        assert entry["job_id"].startswith("500_") and entry["pad"] == "y" * 20000 or "n" not in entry
        ns.add(entry.get("n"))
        record = json.loads((r / "slurm" / "train.sacct.json").read_text()) if (r / "slurm").exists() else None
        assert record is None or record["steps"] == ["x" * 2000] * 20
    assert max(n for n in ns if n) >= 1  # the writer got through at least one round before the kill
