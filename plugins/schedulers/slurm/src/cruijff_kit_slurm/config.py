"""Options of the ``slurm`` scheduler: the spec's ``scheduler:`` section and the user's profile section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from cruijff_kit import PluginConfig, SchedulerConfig
from cruijff_kit.files import literal_secret


class SlurmConfig(SchedulerConfig):
    """The spec's ``scheduler:`` section for ``plugin: slurm`` (what the experiment needs)."""

    constraint: str | None = Field(None, description="sbatch --constraint, e.g. a100|h100.")
    gres: str | None = Field(None, description="sbatch --gres, e.g. gpu:a100:2; replaces the GPU request "
                             "made from resources.gpus.")
    array_parallelism: int = Field(8, gt=0, description="Array tasks of one stage running at once (%N).")
    group_evals: bool = Field(
        True, description="Run the evaluations of one run that wait for the same stage in one job, one after "
        "another in one process (the libraries and the base model load once; each target keeps its own state, "
        "results and logs; resources.time is the whole job's limit); a sweep's such jobs form one array.")
    launcher: Literal["auto", "torchrun", "none"] = Field(
        "auto", description="auto: train stages with nodes > 1 start `srun torchrun` across the allocation; "
        "torchrun: always (also on one node); none: never.")
    oom_retries: int = Field(2, ge=0, description="Times a train stage that ran out of memory is retried "
                             "with half the per-device batch size and twice the gradient accumulation.")
    max_requeues: int = Field(3, ge=0, description="Requeues after SLURM's time-limit warning before the "
                              "stage is left to time out.")
    signal_seconds: int = Field(120, ge=10, description="SLURM sends the warning signal this long before the "
                                "time limit; the stage saves its state and the job is requeued.")
    hf_offline: bool = Field(True, description="Set HF_HUB_OFFLINE=1 in jobs (models and data are local or "
                             "cached before submitting).")
    prepare_data: bool = Field(True, description="Load each dataset once before submitting so parallel jobs "
                               "find its cache ready instead of racing to build it.")
    stagger_seconds: float = Field(2.0, ge=0, description="Array tasks starting together wait this many "
                                   "seconds apart (shared caches, shared file systems).")
    poll_seconds: float = Field(30.0, gt=0, description="How often `ck run` checks the queue while waiting "
                                "for room under the profile's max_queued.")
    cancel_wait_seconds: float = Field(30.0, ge=0, description="`ck cancel` waits up to this long for "
                                       "cancelled jobs to leave the queue.")

    @field_validator("constraint", "gres")
    @classmethod
    def _one_line(cls, v: str | None) -> str | None:
        if v is not None and ("\n" in v or not v.strip()):
            raise ValueError("must be one non-empty line")
        return v


class SlurmProfile(PluginConfig):
    """The ``slurm:`` section of the user profile: who you are on the cluster and how jobs start."""

    account: str | None = Field(None, description="sbatch --account")
    partition: str | None = Field(None, description="sbatch --partition")
    qos: str | None = Field(None, description="sbatch --qos")
    reservation: str | None = Field(None, description="sbatch --reservation")
    gpu_type: str | None = Field(None, description="GPU type for --gres=gpu:<type>:<n>, e.g. a100")
    setup: list[str] = Field([], description="Shell lines run before each stage, e.g. "
                             "`module load cuda/12.4` or `source ~/venvs/ck/bin/activate`.")
    sbatch: list[str] = Field([], description="Extra sbatch options, one per item, e.g. "
                              "`--mail-type=FAIL` (a leading `#SBATCH` is allowed).")
    python: str | None = Field(None, description="Python on the compute nodes; default: the one running ck.")
    max_queued: int | None = Field(None, gt=0, description="Most jobs of one experiment in the queue at once "
                                   "(array tasks count one each); `ck run` waits for room.")

    @field_validator("account", "partition", "qos", "reservation", "gpu_type", "python")
    @classmethod
    def _one_word(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or any(c in v for c in "\n\r")):
            raise ValueError("must be one non-empty line")
        return v

    @field_validator("setup", "sbatch")
    @classmethod
    def _lines(cls, v: list[str]) -> list[str]:
        for line in v:
            if "\n" in line or "\r" in line:
                raise ValueError("each item must be one line (make it a list of lines)")
            why = literal_secret(line)
            if why:
                raise ValueError(f"this item {why}, which would be written into every "
                                 "job script; name the environment variable instead (`export HF_TOKEN=$HF_TOKEN`, "
                                 "or set it in your shell before `ck run`: sbatch passes the environment to the "
                                 "jobs without writing it)")
        return v
