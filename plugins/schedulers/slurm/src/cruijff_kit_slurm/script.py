"""The batch scripts: one per stage of a run (complete; ``sbatch`` it by hand), and one per job array.

A stage script runs ``python -m cruijff_kit stage RUN_DIR STAGE`` (under ``srun torchrun`` for
multi-node training; ``STAGE1 STAGE2 ...`` for a run's evaluations grouped into one job, of which a
requeued job runs only those not finished), forwards SLURM's signals to it, requeues the job after
the time-limit warning, retries a train stage that ran out of memory with a smaller batch, samples
GPUs with nvidia-smi when present, and exits with the stage's exit code. Scripts hold no secret values: jobs get secrets from
the environment ``sbatch`` exports, never from the file; a script that would hold one is refused
(:func:`write_script`), and scripts are written readable by their owner only (``0o700``).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from cruijff_kit import Resources, parse_memory, parse_slurm_time
from cruijff_kit.files import atomic_write_text, refuse_secret_values
from cruijff_kit_slurm.config import SlurmConfig, SlurmProfile

#: Columns of ``logs/<stage>.gpu.csv``.
GPU_QUERY = "timestamp,index,name,utilization.gpu,utilization.memory,memory.used,memory.total,power.draw," \
            "temperature.gpu"
GPU_HEADER = "timestamp,index,name,utilization_gpu_pct,utilization_memory_pct,memory_used_mib," \
             "memory_total_mib,power_draw_w,temperature_c"
GPU_SAMPLE_SECONDS = 15
#: Permission bits of every script written: the owner reads, writes and runs it; no one else reads it.
SCRIPT_MODE = 0o700


@dataclass
class StageScript:
    """What one stage's job runs."""

    run_dir: Path
    run_name: str
    experiment: str
    stage: str
    kind: str  # train | eval
    resources: Resources
    #: further stages of the run this job runs after ``stage``, in the same process (grouped evaluations)
    more: tuple[str, ...] = ()

    @property
    def stages(self) -> list[str]:
        """Every stage the job runs, in order."""
        return [self.stage, *self.more]


def q(value: object) -> str:
    """Shell-quote one word."""
    return shlex.quote(str(value))


def gpu_request(resources: Resources, config: SlurmConfig, profile: SlurmProfile) -> list[str]:
    """The GPU part of the header: ``--gres`` when given, else GPUs per node (typed by the profile)."""
    if config.gres:
        return [f"--gres={config.gres}"]
    if resources.gpus <= 0:
        return []
    if profile.gpu_type:
        return [f"--gres=gpu:{profile.gpu_type}:{resources.gpus}"]
    return [f"--gpus-per-node={resources.gpus}"]


def time_minutes(resources: Resources) -> int:
    """``resources.time`` as sbatch books it: whole minutes, rounded up (``"0:30"`` -> 1)."""
    return -(-parse_slurm_time(resources.time) // 60)


def memory_mb(resources: Resources) -> int:
    """``resources.memory`` in whole megabytes (MiB, as ``--mem`` counts them), rounded up."""
    return -(-parse_memory(resources.memory) // 2**20)


def header_options(job_name: str, resources: Resources, config: SlurmConfig, profile: SlurmProfile) -> list[str]:
    """``#SBATCH`` options shared by a stage's own script and the array it is part of."""
    opts = [
        f"--job-name={job_name}",
        f"--nodes={resources.nodes}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={resources.cpus}",
        f"--mem={memory_mb(resources)}M",
        f"--time={time_minutes(resources)}",
        *gpu_request(resources, config, profile),
    ]
    if config.constraint:
        opts.append(f"--constraint={config.constraint}")
    for name in ("account", "partition", "qos", "reservation"):
        value = getattr(profile, name)
        if value:
            opts.append(f"--{name}={value}")
    # the warning comes signal_seconds before the limit, but never in the first half of the job
    warn = min(config.signal_seconds, max(10, time_minutes(resources) * 30))
    opts += ["--requeue", f"--signal=B:USR2@{warn}", "--kill-on-invalid-dep=yes",
             "--open-mode=append"]
    for line in profile.sbatch:
        line = line.strip()
        if line.startswith("#SBATCH"):
            line = line[len("#SBATCH"):].strip()
        if line:
            opts.append(line)
    return opts


def _sbatch_lines(opts: list[str]) -> list[str]:
    return [f"#SBATCH {o}" for o in opts]


def uses_torchrun(job: StageScript, config: SlurmConfig) -> bool:
    """Whether the stage starts under ``srun torchrun`` across the allocation."""
    if job.kind != "train" or config.launcher == "none":
        return False
    return config.launcher == "torchrun" or job.resources.nodes > 1


def processes_per_node(resources: Resources) -> int:
    """Training processes per node: ``resources.processes``, else one per GPU, else one."""
    return resources.processes or max(1, resources.gpus)


def stage_command(job: StageScript, config: SlurmConfig, python: str) -> list[str]:
    """The shell lines that run the stage once."""
    ck = '-m cruijff_kit stage "$RUN_DIR" ' + ('"${STAGES[@]}"' if job.more else '"$STAGE"')
    if not uses_torchrun(job, config):
        return [f'ck_run "$PY" {ck}']
    nproc = processes_per_node(job.resources)
    return [
        'CK_HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "CK_PORT=$(( 20000 + ${SLURM_JOB_ID:-0} % 20000 ))",
        'ck_run srun --ntasks-per-node=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" --kill-on-bad-exit=1 \\',
        f'    "$PY" -m torch.distributed.run --nnodes="$SLURM_JOB_NUM_NODES" --nproc-per-node={nproc} \\',
        '    --rdzv-backend=c10d --rdzv-endpoint="$CK_HEAD:$CK_PORT" --rdzv-id="$SLURM_JOB_ID" \\',
        f"    {ck}",
    ]


def stage_script(job: StageScript, config: SlurmConfig, profile: SlurmProfile, python: str,
                 array_parallelism: int) -> str:
    """The complete batch script of one stage (also what each array task runs)."""
    logs = job.run_dir / "logs"
    label = "evals" if job.more else job.stage
    opts = header_options(f"ck.{job.experiment}.{job.run_name}.{label}", job.resources, config, profile)
    opts[1:1] = [f"--output={logs / (job.stage + '.out')}", f"--error={logs / (job.stage + '.err')}"]
    stagger_ms = int(round(config.stagger_seconds * 1000))
    oom = config.oom_retries if job.kind == "train" else 0
    if job.more:
        what = (f"stages {', '.join(f'`{s}`' for s in job.stages)} of run {job.run_name} (experiment "
                f"{job.experiment}),\n# one after another in one process (the base model loads once); those "
                "done when the job starts (requeued) are skipped.")
    else:
        what = f"stage `{job.stage}` of run {job.run_name} (experiment {job.experiment})."
    signal_stages = '"${STAGES[@]}"' if job.more else '"$STAGE"'
    lines = [
        "#!/bin/bash",
        f"# cruijff-kit: {what}",
        "# Written by the slurm scheduler of `ck run`; submit it again by hand with `sbatch <this file>`.",
        *_sbatch_lines(opts),
        "",
        "set -uo pipefail",
        f"RUN_DIR={q(job.run_dir)}",
        f"STAGE={q(job.stage)}",
        *([f"STAGES=({' '.join(q(s) for s in job.stages)})"] if job.more else []),
        'LOGS="$RUN_DIR/logs"',
        'mkdir -p "$LOGS"',
        'exec >>"$LOGS/$STAGE.out" 2>>"$LOGS/$STAGE.err"',
        'echo "[ck-slurm] job ${SLURM_JOB_ID:-?}${SLURM_ARRAY_JOB_ID:+ (array task ${SLURM_ARRAY_JOB_ID}_'
        '${SLURM_ARRAY_TASK_ID:-})} on $(hostname), restart ${SLURM_RESTART_COUNT:-0}, $(date -u +%FT%TZ)" >&2',
        "",
        "# environment (profile `slurm.setup`)",
        *(profile.setup or ["# (none)"]),
        "",
        "export PYTHONUNBUFFERED=1",
        *(["export HF_HUB_OFFLINE=1"] if config.hf_offline else []),
        f"PY={python if python.startswith('$') else q(python)}",
        f"CK_OOM_RETRIES={oom}",
        f"CK_MAX_REQUEUES={config.max_requeues}",
        "",
        *(_unfinished_lines() if job.more else []),
        "# parallel array tasks start a little apart (shared caches)",
        'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ] && [ -n "${CK_ARRAY_POS:-}" ]; then',
        f"  ck_ms=$(( (CK_ARRAY_POS % {max(1, array_parallelism)}) * {stagger_ms} ))",
        '  [ "$ck_ms" -gt 0 ] && sleep "$((ck_ms / 1000)).$(printf %03d $((ck_ms % 1000)))"',
        "fi",
        "",
        "# SLURM's signals go to this shell: pass them on to the stage, which saves its state and stops",
        'ck_child=""; ck_signal=""',
        'ck_forward() { ck_signal=$1; [ -n "$ck_child" ] && kill -TERM "$ck_child" 2>/dev/null; }',
        "trap 'ck_forward USR2' USR2",
        "trap 'ck_forward TERM' TERM INT",
        'ck_run() {  # run a command in the background and wait for it through signals; returns its code',
        '  "$@" & ck_child=$!',
        '  while kill -0 "$ck_child" 2>/dev/null; do wait "$ck_child"; done',
        '  wait "$ck_child"; local code=$?',
        '  ck_child=""; return $code',
        "}",
        "",
        "# GPU telemetry",
        'ck_smi=""',
        "if command -v nvidia-smi >/dev/null 2>&1; then",
        f'  [ -s "$LOGS/$STAGE.gpu.csv" ] || echo {q(GPU_HEADER)} >"$LOGS/$STAGE.gpu.csv"',
        f"  nvidia-smi --query-gpu={GPU_QUERY} --format=csv,noheader,nounits -l {GPU_SAMPLE_SECONDS} \\",
        '    >>"$LOGS/$STAGE.gpu.csv" 2>/dev/null &',
        "  ck_smi=$!",
        "fi",
        "",
        "# the stage; a train stage that runs out of memory is retried with half the batch size",
        "while :; do",
        '  ck_out0=$(stat -c %s "$LOGS/$STAGE.out" 2>/dev/null || echo 0)',
        '  ck_err0=$(stat -c %s "$LOGS/$STAGE.err" 2>/dev/null || echo 0)',
        *("  " + line for line in stage_command(job, config, python)),
        "  code=$?",
        '  [ "$code" = 0 ] || [ -n "$ck_signal" ] || [ "$CK_OOM_RETRIES" = 0 ] && break',
        '  "$PY" -m cruijff_kit_slurm.recover "$RUN_DIR" "$STAGE" --exit-code "$code" \\',
        '    --out-offset "$ck_out0" --err-offset "$ck_err0" --max-retries "$CK_OOM_RETRIES" || break',
        "done",
        '[ -n "$ck_smi" ] && kill "$ck_smi" 2>/dev/null',
        "",
        "# time limit near: requeue (the stage resumes from its saved state)",
        'if [ "$ck_signal" = USR2 ] && [ "$code" != 0 ]; then',
        '  if [ "${SLURM_RESTART_COUNT:-0}" -lt "$CK_MAX_REQUEUES" ]; then',
        '    echo "[ck-slurm] time limit near: state saved, requeueing job $SLURM_JOB_ID" >&2',
        f'    "$PY" -m cruijff_kit_slurm.recover "$RUN_DIR" {signal_stages} --requeued',
        '    scontrol requeue "$SLURM_JOB_ID" && exit 0',
        "  fi",
        '  echo "[ck-slurm] time limit near and $CK_MAX_REQUEUES requeues used: not requeued" >&2',
        "fi",
        ('echo "[ck-slurm] stages ${STAGES[*]} exited with code $code" >&2' if job.more else
         'echo "[ck-slurm] stage $STAGE exited with code $code" >&2'),
        'exit "$code"',
        "",
    ]
    return "\n".join(lines)


def _unfinished_lines() -> list[str]:
    """Shell lines of a grouped job: keep in ``STAGES`` only the stages not finished (a requeued job,
    or the script submitted again, skips those done; a requeued one also those that failed), and
    write to the first one's logs."""
    return [
        "# the stages still to do (all of them, unless this job was requeued or submitted again)",
        'if ck_left=$("$PY" -m cruijff_kit_slurm.recover "$RUN_DIR" "${STAGES[@]}" --unfinished \\',
        '    --restart-count "${SLURM_RESTART_COUNT:-0}"); then',
        '  read -r -a STAGES <<<"$ck_left"',
        "fi",
        'if [ "${#STAGES[@]}" = 0 ]; then',
        '  echo "[ck-slurm] every stage of this job is finished; nothing to run" >&2',
        "  exit 0",
        "fi",
        'if [ "${STAGES[0]}" != "$STAGE" ]; then',
        '  STAGE=${STAGES[0]}',
        '  exec >>"$LOGS/$STAGE.out" 2>>"$LOGS/$STAGE.err"',
        "fi",
        "",
    ]


def array_script(stage: str, experiment: str, tasks: list[tuple[int, Path]], resources: Resources,
                 config: SlurmConfig, profile: SlurmProfile, log_dir: Path, parallelism: int) -> str:
    """A job array over runs: task ``i`` runs the stage script of the run with index ``i``."""
    indices = ",".join(str(i) for i, _ in tasks)
    opts = header_options(f"ck.{experiment}.{stage}", resources, config, profile)
    opts[1:1] = [f"--array={indices}%{max(1, min(parallelism, len(tasks)))}",
                 f"--output={log_dir / '%A_%a.out'}", f"--error={log_dir / '%A_%a.err'}"]
    cases = [f"  {i}) ck_script={q(path)}; export CK_ARRAY_POS={pos} ;;" for pos, (i, path) in enumerate(tasks)]
    lines = [
        "#!/bin/bash",
        f"# cruijff-kit: stage `{stage}` of {len(tasks)} runs of experiment {experiment}, as one job array.",
        "# Task i runs the stage script of one run (listed below); each can be submitted alone with sbatch.",
        *_sbatch_lines(opts),
        "",
        'case "${SLURM_ARRAY_TASK_ID:-}" in',
        *cases,
        '  *) echo "no run for array task ${SLURM_ARRAY_TASK_ID:-?}" >&2; exit 2 ;;',
        "esac",
        'exec bash "$ck_script"',
        "",
    ]
    return "\n".join(lines)


def write_script(path: Path, text: str) -> None:
    """Write a batch script with mode ``0o700`` (whatever the umask), refusing one that holds a secret.

    A secret's value can only get into a script through a name or a path the user chose (an account
    named like a password); replacing it would break the job, so the script is refused instead.
    """
    refuse_secret_values(text, file=str(path), what="job script")
    atomic_write_text(path, text, mode=SCRIPT_MODE)
