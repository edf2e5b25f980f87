"""The SLURM commands the scheduler uses (sbatch, squeue, sacct, scancel), one call each per refresh.

Job ids are kept as SLURM prints them: ``1234`` for a job, ``1234_5`` for task 5 of array 1234. A
stage that shares its job with other stages (``group_evals``) records ``<job>/<stage>``.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field

from cruijff_kit import CkError, status

#: SLURM job states -> stage states (see :func:`stage_state`).
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "PREEMPTED",
          "RESV_DEL_HOLD", "SPECIAL_EXIT", "STOPPED"}
RUNNING = {"RUNNING", "CONFIGURING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
FAILED = {"FAILED", "OUT_OF_MEMORY", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}
SACCT_FIELDS = ("JobID", "State", "ExitCode", "Reason", "Elapsed", "TotalCPU", "MaxRSS", "AllocTRES",
                "NodeList", "Start", "End")


class SlurmError(CkError):
    """A SLURM command failed or is not installed."""


@dataclass
class JobInfo:
    """What SLURM says about one job (or array task)."""

    job_id: str
    state: str
    reason: str = ""
    exit_code: str = ""
    queued: bool = False  # seen in squeue (pending or running now)
    usage: dict[str, str] = field(default_factory=dict)
    steps: list[dict[str, str]] = field(default_factory=list)


def require(cmd: str = "sbatch") -> str:
    """Path of a SLURM command, or a SlurmError saying where to run instead."""
    path = shutil.which(cmd)
    if path is None:
        raise SlurmError(f"`{cmd}` is not on PATH: the slurm scheduler submits from a SLURM login node. Run "
                         "there, or choose another scheduler with `ck run SPEC --scheduler local`.")
    return path


def run(args: list[str], *, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a SLURM command; a failure raises SlurmError with its stderr."""
    try:
        res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        require(args[0])
        raise
    except subprocess.TimeoutExpired:
        raise SlurmError(f"`{' '.join(args[:2])} ...` did not answer within {timeout:.0f} s; the SLURM "
                         "controller may be overloaded. Try again in a minute.") from None
    if check and res.returncode != 0:
        raise SlurmError(f"`{' '.join(args)}` failed (exit {res.returncode}): {res.stderr.strip()}")
    return res


def job_of(job_id: str) -> str:
    """The SLURM job (or array task) of a stage's ``job_id``: ``1234_5`` as is; a stage that runs with
    others in one job has ``1234_5/<stage>`` (an id of its own, so its state is told apart) -> ``1234_5``."""
    return str(job_id).split("/", 1)[0]


def stage_job_id(job_id: str, stage: str, grouped: bool) -> str:
    """The ``job_id`` recorded for ``stage`` run by SLURM job ``job_id``: the job's id, or
    ``<job>/<stage>`` when the job runs several stages (see :func:`job_of`)."""
    return f"{job_id}/{stage}" if grouped else job_id


def base_id(job_id: str) -> str:
    """``1234_5`` -> ``1234``."""
    return str(job_id).split("_", 1)[0].split(".", 1)[0]


def sbatch(script: str, extra: list[str] | None = None) -> str:
    """Submit a script; returns the job id (for an array: the array's id)."""
    res = run([require("sbatch"), "--parsable", *(extra or []), script])
    out = res.stdout.strip().splitlines()
    if not out or not out[-1].split(";")[0].strip().isdigit():
        raise SlurmError(f"sbatch gave no job id for {script}: {res.stdout.strip()} {res.stderr.strip()}")
    return out[-1].split(";")[0].strip()


def squeue(job_ids: list[str]) -> dict[str, JobInfo]:
    """Jobs among ``job_ids`` still in the queue (array tasks one by one)."""
    bases = sorted({base_id(j) for j in job_ids})
    if not bases or shutil.which("squeue") is None:
        return {}
    res = run(["squeue", "-h", "-r", "-j", ",".join(bases), "-o", "%i|%T|%r"], check=False)
    if res.returncode != 0:  # every id is gone: "Invalid job id specified"
        return {}
    found: dict[str, JobInfo] = {}
    for line in res.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3:
            continue
        found[parts[0]] = JobInfo(parts[0], parts[1], parts[2], queued=True)
    return found


def _expand(job_id: str) -> list[str]:
    """Ids in one sacct JobID field, pending array ranges expanded (``12_[1-3%2]``)."""
    # Private: submitit's top-level API does not export its job-id parser (pending array ranges);
    # submitit is pinned to 1.5.x (plugin pyproject, constraints.txt).
    from submitit.slurm.slurm import read_job_id

    out: list[str] = []
    for parts in read_job_id(job_id):
        if len(parts) == 1:
            out.append(parts[0])
        elif len(parts) == 2:
            out.append(f"{parts[0]}_{parts[1]}")
        else:
            out.extend(f"{parts[0]}_{i}" for i in range(int(parts[1]), int(parts[2]) + 1))
    return out


def sacct(job_ids: list[str]) -> dict[str, JobInfo]:
    """Accounting records of ``job_ids`` (state, exit code, reason, usage, per-step lines)."""
    bases = sorted({base_id(j) for j in job_ids})
    if not bases or shutil.which("sacct") is None:
        return {}
    res = run(["sacct", "-n", "-P", "-j", ",".join(bases), "-o", ",".join(SACCT_FIELDS)], check=False)
    if res.returncode != 0:
        return {}
    found: dict[str, JobInfo] = {}
    for line in res.stdout.splitlines():
        values = line.split("|")
        if len(values) != len(SACCT_FIELDS):
            continue
        row = dict(zip(SACCT_FIELDS, (v.strip() for v in values), strict=True))
        jid = row["JobID"]
        if "." in jid:  # a step (batch, extern, 0...): usage detail of its job
            info = found.get(jid.split(".", 1)[0])
            if info is not None:
                info.steps.append(row)
            continue
        try:
            ids = _expand(jid)
        except Exception:  # an id format we do not know: skip rather than fail a status call
            continue
        for one in ids:
            state = row["State"].split()[0] if row["State"] else "UNKNOWN"
            usage = {k: row[k] for k in ("Elapsed", "TotalCPU", "AllocTRES", "NodeList", "Start", "End")}
            found[one] = JobInfo(one, state, row["Reason"], row["ExitCode"], usage=usage)
            if row["State"].startswith("CANCELLED by"):
                found[one].usage["CancelledBy"] = row["State"].split("by", 1)[1].strip()
    for info in found.values():
        rss = [s.get("MaxRSS", "") for s in info.steps if s.get("MaxRSS")]
        if rss:
            info.usage["MaxRSS"] = max(rss, key=_rss_bytes)
    return found


def _rss_bytes(text: str) -> float:
    units = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    text = text.strip()
    if text and text[-1].upper() in units:
        return float(text[:-1] or 0) * units[text[-1].upper()]
    try:
        return float(text)
    except ValueError:
        return 0.0


def query(job_ids: list[str]) -> dict[str, JobInfo]:
    """One squeue and one sacct call for all ``job_ids``; squeue wins for jobs still queued."""
    if not job_ids:
        return {}
    queued = squeue(job_ids)
    acct = sacct(job_ids)
    out: dict[str, JobInfo] = {}
    for jid in job_ids:
        a, q = acct.get(jid), queued.get(jid)
        if q is not None and q.state not in QUEUED | RUNNING:
            # squeue shows a job that just ended for a moment; its final word (who cancelled it, the
            # reason) is in sacct once the controller recorded it
            if a is not None and a.state not in QUEUED | RUNNING:
                out[jid] = a
            continue
        if q is not None:
            if a is not None:
                q.usage, q.steps, q.exit_code = a.usage, a.steps, a.exit_code
            out[jid] = q
        elif a is not None:
            out[jid] = a
    return out


def stage_state(info: JobInfo, has_dependency: bool = False) -> str:
    """A SLURM state as a stage state (see the table in the plugin's README).

    ``has_dependency``: the job was submitted with ``--dependency``, so a CANCELLED that no user
    asked for means SLURM removed it because the job it waited for failed.
    """
    s = info.state
    if s in RUNNING:
        return status.RUNNING
    if s in QUEUED:
        return status.SUBMITTED if info.queued or s != "PREEMPTED" else status.INTERRUPTED
    if s == "COMPLETED":
        return status.DONE
    if s in FAILED:
        return status.FAILED
    if s == "CANCELLED":
        return status.PENDING if killed_by_dependency(info, has_dependency) else status.CANCELLED
    return status.FAILED


def killed_by_dependency(info: JobInfo, has_dependency: bool = False) -> bool:
    """A job SLURM removed because a job it depended on failed (``--kill-on-invalid-dep``).

    sacct says ``CANCELLED by <uid>`` when a user cancelled; SLURM's own removal has no "by".
    """
    if info.state != "CANCELLED" or info.queued or "CancelledBy" in info.usage:
        return False
    return info.reason.startswith("Dependency") or has_dependency


def scancel(job_ids: list[str]) -> None:
    """Cancel jobs or array tasks (unknown ids are ignored)."""
    if job_ids:
        run([require("scancel"), *job_ids], check=False)
