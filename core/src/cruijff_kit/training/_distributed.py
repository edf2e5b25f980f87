"""Data-parallel training: how many processes a stage uses, and the command that starts them.

A trainer whose run asks for more than one process relaunches its own stage under a distributed
launcher (``torchrun`` or ``accelerate launch``)::

    python -m torch.distributed.run --nproc_per_node 2 ... -m cruijff_kit stage RUN_DIR train

The workers get ``CK_STAGE_CHILD=1``, so only the launching ``ck stage`` process does the stage's
bookkeeping (see :func:`cruijff_kit._engine.stage.is_primary_process`) and no worker relaunches again.
A worker that fails with a user-facing error (a nan loss, say) leaves its message in
``logs/<stage>.worker-error``, and the launching process fails the stage with that message.
On CPU the workers also get ``ACCELERATE_USE_CPU=true``: without it the HF Trainer would start
independent, unsynchronised copies instead of DDP over gloo.

Multi-node runs take their rendezvous from SLURM (``SLURM_JOB_NODELIST``, ``SLURM_NODEID``,
``SLURM_JOB_ID``) or from ``MASTER_ADDR``, ``MASTER_PORT`` and ``NODE_RANK``; one ``ck stage``
process runs per node and launches that node's workers.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cruijff_kit._api.kinds import Resources
from cruijff_kit._base.errors import StageError

Launcher = Literal["torchrun", "accelerate"]
CHILD_ENV = "CK_STAGE_CHILD"
DEFAULT_PORT = 29500


def processes_per_node(resources: Resources) -> int:
    """Training processes on each node: ``resources.processes``, else one per GPU, else one."""
    if resources.processes:
        return int(resources.processes)
    return max(int(resources.gpus), 1)


def world_size(resources: Resources) -> int:
    """Total data-parallel processes: processes per node times ``resources.nodes``."""
    return processes_per_node(resources) * int(resources.nodes)


def is_worker(env: Mapping[str, str] | None = None) -> bool:
    """True inside a process started by a distributed launcher (or relaunched by ``ck stage``)."""
    env = os.environ if env is None else env
    return env.get(CHILD_ENV) == "1" or "LOCAL_RANK" in env


def needs_launch(resources: Resources, env: Mapping[str, str] | None = None) -> bool:
    """True when this stage should relaunch itself under a launcher (more than one process, not a worker)."""
    return world_size(resources) > 1 and not is_worker(env)


@dataclass(frozen=True)
class Rendezvous:
    """Where the processes of a multi-node job meet."""

    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int
    run_id: str


def first_host(nodelist: str) -> str:
    """First host of a SLURM node list: ``gpu[03-05,07],cpu1`` -> ``gpu03``."""
    nodelist = nodelist.strip()
    m = re.match(r"([^\[,]+)(?:\[([^\]]+)\])?", nodelist)
    if not m:
        raise StageError(f"cannot read the SLURM node list {nodelist!r}.")
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    first = ranges.split(",", 1)[0].split("-", 1)[0]
    return prefix + first


def rendezvous(resources: Resources, env: Mapping[str, str] | None = None) -> Rendezvous | None:
    """The multi-node rendezvous from SLURM or ``MASTER_ADDR``/``NODE_RANK``; None on one node."""
    env = os.environ if env is None else env
    nnodes = int(resources.nodes)
    if nnodes <= 1:
        return None
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if nodelist and "SLURM_NODEID" in env:
        job = env.get("SLURM_JOB_ID", "0")
        port = int(env.get("MASTER_PORT") or 20000 + int(re.sub(r"\D", "", job) or 0) % 20000)
        return Rendezvous(nnodes, int(env["SLURM_NODEID"]), env.get("MASTER_ADDR") or first_host(nodelist),
                          port, f"ck-{job}")
    if "MASTER_ADDR" in env and "NODE_RANK" in env:
        return Rendezvous(nnodes, int(env["NODE_RANK"]), env["MASTER_ADDR"],
                          int(env.get("MASTER_PORT", DEFAULT_PORT)), env.get("CK_RDZV_ID", "ck"))
    raise StageError(
        f"resources.nodes is {nnodes}, but this process does not know where the other nodes are: run the "
        "stage through the slurm scheduler (one `ck stage` per node under srun), or set MASTER_ADDR, "
        "MASTER_PORT and NODE_RANK on every node.")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LaunchCommand:
    """A command line plus the environment changes its workers need."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    world_size: int = 1
    #: files the launcher reads, to write before it starts (the accelerate configuration), path -> text
    files: dict[Path, str] = field(default_factory=dict)

    def full_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) with :attr:`env` applied."""
        return {**(os.environ if base is None else base), **self.env}


def accelerate_config(resources: Resources, total: int, machines: int, rank: int, ip: str, port: int) -> dict[str, Any]:
    """The whole ``accelerate launch`` configuration of a stage, from its resources: given with
    ``--config_file``, so the user's default accelerate configuration (its ``gpu_ids``, mixed
    precision, process count...) is never read. Precision is the trainer's own setting (its
    training arguments), so the launcher adds none; the devices are those the scheduler made visible."""
    gpus = int(resources.gpus) > 0
    return {"compute_environment": "LOCAL_MACHINE", "distributed_type": "MULTI_GPU" if gpus else "MULTI_CPU",
            "num_processes": total, "num_machines": machines, "machine_rank": rank,
            "main_process_ip": ip, "main_process_port": port, "rdzv_backend": "static", "same_network": True,
            "mixed_precision": "no", "gpu_ids": "all", "use_cpu": not gpus, "dynamo_config": {},
            "downcast_bf16": "no", "enable_cpu_affinity": False, "main_training_function": "main",
            "tpu_env": [], "tpu_use_cluster": False, "tpu_use_sudo": False}


def launch_command(run_dir: str | Path, stage: str, resources: Resources, *,
                   launcher: Launcher = "torchrun", python: str | None = None,
                   env: Mapping[str, str] | None = None, port: int | None = None) -> LaunchCommand:
    """The command that reruns ``ck stage RUN_DIR STAGE`` as ``world_size(resources)`` processes.

    With ``accelerate`` it also carries the launcher's configuration (:func:`accelerate_config`) as
    ``logs/<stage>.accelerate.yaml``, which :func:`relaunch` writes before starting it."""
    python = python or sys.executable
    nproc = processes_per_node(resources)
    total = world_size(resources)
    rdzv = rendezvous(resources, env)
    target = ["-m", "cruijff_kit", "stage", str(Path(run_dir).resolve()), stage]
    child_env = {CHILD_ENV: "1"}
    if int(resources.gpus) == 0:
        child_env["ACCELERATE_USE_CPU"] = "true"
    if launcher == "torchrun":
        argv = [python, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
        if rdzv is None:
            argv += ["--nnodes", "1", "--rdzv_backend", "c10d",
                     "--rdzv_endpoint", f"127.0.0.1:{port or free_port()}", "--rdzv_id", "ck-local"]
        else:
            argv += ["--nnodes", str(rdzv.nnodes), "--node_rank", str(rdzv.node_rank),
                     "--rdzv_backend", "c10d", "--rdzv_endpoint", f"{rdzv.master_addr}:{rdzv.master_port}",
                     "--rdzv_id", rdzv.run_id]
        argv += ["--max_restarts", "0"]
    elif launcher == "accelerate":
        # `--multi_gpu` is accelerate's torchrun path; with ACCELERATE_USE_CPU it gives DDP over gloo.
        # (`--cpu --num_processes N` would silently start one process.)
        if rdzv is None:
            machines, rank, ip, main_port = 1, 0, "127.0.0.1", port or free_port()
        else:
            machines, rank, ip, main_port = rdzv.nnodes, rdzv.node_rank, rdzv.master_addr, rdzv.master_port
        config_file = Path(run_dir).resolve() / "logs" / f"{stage}.accelerate.yaml"
        files = {config_file: yaml.safe_dump(accelerate_config(resources, total, machines, rank, ip, main_port),
                                             sort_keys=False)}
        argv = [python, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(total),
                "--config_file", str(config_file), "--num_machines", str(machines), "--machine_rank", str(rank),
                "--main_process_ip", ip, "--main_process_port", str(main_port), "--mixed_precision", "no",
                "--gpu_ids", "all"]
    else:  # pragma: no cover - guarded by the Literal
        raise ValueError(f"unknown launcher {launcher!r}")
    if total > 1 and nproc > 1:
        child_env.setdefault("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    return LaunchCommand(argv + target, child_env, total, files if launcher == "accelerate" else {})


def worker_error_file(run_dir: str | Path, stage: str) -> Path:
    """Where a failing worker leaves its error for the launching process: ``logs/<stage>.worker-error``."""
    return Path(run_dir) / "logs" / f"{stage}.worker-error"


def leave_worker_error(run_dir: str | Path, stage: str, message: str) -> None:
    """In a worker: record why it failed, for :func:`relaunch` to raise (the first worker's message wins)."""
    path = worker_error_file(run_dir, stage)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("x", encoding="utf-8") as fh:
            fh.write(message)
    except OSError:  # another worker was first, or the folder is not writable: the log has it
        pass


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the launcher when the ``ck stage`` process that started it dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def relaunch(run_dir: str | Path, stage: str, resources: Resources, *, launcher: Launcher = "torchrun",
             python: str | None = None) -> None:
    """Run this stage as a distributed job and wait; raise :class:`StageError` when a worker failed.

    Output of the workers goes to this process's stdout/stderr (the stage's log files). When this
    process is interrupted, the launcher (and with it every worker) is terminated.
    """
    cmd = launch_command(run_dir, stage, resources, launcher=launcher, python=python)
    note = worker_error_file(run_dir, stage)
    note.unlink(missing_ok=True)  # left by an earlier attempt
    for path, text in cmd.files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    print(f"[ck] launching {cmd.world_size} processes: {' '.join(cmd.argv)}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    proc = subprocess.Popen(cmd.argv, env=cmd.full_env(),
                            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    try:
        code = proc.wait()
    except BaseException:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
    if code != 0:
        if note.is_file():  # a worker failed with an error meant for the user (a nan loss, bad data...)
            message = note.read_text(encoding="utf-8", errors="replace")
            note.unlink(missing_ok=True)
            raise StageError(message)
        raise StageError(f"the distributed {stage} stage of {Path(run_dir).name} failed: `{cmd.argv[2]}` "
                         f"exited with code {code} (see the stage's log for the failing worker's traceback).")
