"""Options of the ``runpod`` scheduler: the spec's ``scheduler:`` section and the user profile's ``runpod:``.

What differs per user (GPU type, image, bucket, secrets to pass) lives in the profile; the spec may
override the pod shape (``gpu_type``, ``image``, disks, ``cloud_type``) when an experiment needs it.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from cruijff_kit import PluginConfig, SchedulerConfig, SpecError, parse_slurm_time

CloudType = Literal["SECURE", "COMMUNITY", "ALL"]
DEFAULT_IMAGE = "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04"
DEFAULT_SECRETS = ["HF_TOKEN", "WANDB_API_KEY"]
#: Credentials of this machine that reach beyond one run; never passed to a pod.
ACCOUNT_CREDENTIALS = frozenset({"RUNPOD_API_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"})
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def format_hms(seconds: float) -> str:
    """Seconds -> ``"3h05m"`` (or ``"42s"``), for messages."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


class RunpodConfig(SchedulerConfig):
    """The spec's ``scheduler:`` section when ``plugin: runpod``; unset values come from the profile."""

    gpu_type: str | None = Field(None, description="RunPod GPU type id, e.g. 'NVIDIA A100 80GB PCIe' "
                                 "(default: the profile's).")
    cloud_type: CloudType | None = Field(None, description="SECURE, COMMUNITY or ALL (default: the profile's).")
    image: str | None = Field(None, description="Container image of the pod (default: the profile's).")
    container_disk_gb: int | None = Field(None, gt=0, description="Container disk in GB (default: the profile's).")
    volume_gb: int | None = Field(None, ge=0, description="Pod volume in GB (default: the profile's).")
    pod_per: Literal["run", "stage"] = Field(
        "run", description="run: one pod does a run's train and evals in a row; stage: one pod per stage.")
    group_evals: bool = Field(
        True, description="With pod_per: run, a pod runs the evaluations of its run that follow one another and "
        "whose dependencies are done in one process, one after another (the libraries and the base model load "
        "once; each target keeps its own state, results and logs).")
    time_limit: str | None = Field(
        None, description="Wall-time limit of one pod, in sbatch's --time formats as resources.time (MM, MM:SS, "
        "HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS); default resources.time x its stages. "
        "The pod stops its stages and terminates itself when it is reached.")
    max_spend_per_run: float | None = Field(
        None, gt=0, description="Refuse to start a run whose pods could cost more (USD; price x GPUs x time limit).")
    wait: bool = Field(False, description="`ck run` follows the pods until they finish, brings results back "
                       "and terminates them (otherwise `ck status` does that when you run it).")
    poll_seconds: float = Field(30.0, gt=0, description="How often `wait` asks RunPod and the bucket.")
    upload: list[str] = Field(default_factory=list, description="Extra files or folders the pod needs "
                              "(paths the spec names are found and sent without listing them).")
    public_access: bool = Field(False, description="Give the pod a public IP and start SSH, for debugging only "
                                "(batch stages need neither; off keeps the pod unreachable from outside).")

    @field_validator("time_limit", mode="before")
    @classmethod
    def _time(cls, v: Any) -> Any:
        if v is not None:
            parse_slurm_time(v)
        return str(v) if isinstance(v, int) else v


class StoreProfile(PluginConfig):
    """An S3-compatible bucket that carries inputs to the pod and the run folder back.

    Credentials come from the usual AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or
    ``aws_profile``; the pod itself gets only pre-signed URLs for its own objects.
    """

    bucket: str = Field(..., min_length=1, description="Bucket name.")
    prefix: str = Field("cruijff-kit", description="Key prefix under which runs are stored.")
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (R2, B2, MinIO...); omit for AWS.")
    region: str | None = Field(None, description="Bucket region (e.g. us-east-1, or auto for R2).")
    aws_profile: str | None = Field(None, description="Named AWS credentials profile to use.")
    addressing_style: Literal["auto", "path", "virtual"] = Field("auto", description="S3 URL style.")


class RunpodProfile(PluginConfig):
    """The profile's ``runpod:`` section: where and how pods run for this user."""

    gpu_type: str = Field("NVIDIA A100 80GB PCIe", description="RunPod GPU type id.")
    cloud_type: CloudType = Field("SECURE", description="SECURE, COMMUNITY or ALL.")
    image: str = Field(DEFAULT_IMAGE, description="Container image (needs python3, bash, base64 and gunzip).")
    container_disk_gb: int = Field(50, gt=0)
    volume_gb: int = Field(0, ge=0, description="Pod volume (kept while the pod exists).")
    volume_mount_path: str = Field("/workspace")
    network_volume_id: str | None = Field(None, description="Attach this network volume (e.g. for a model cache).")
    data_center_id: str | None = None
    install: list[str] | None = Field(
        None, description="pip requirements installed on the pod before the stages; default: the cruijff-kit "
        "distributions this run uses, at the versions installed here. [] when the image has them. Local "
        "wheel files or source folders are sent along.")
    pip_args: list[str] = Field(default_factory=list, description="Extra pip arguments (e.g. an index URL).")
    secrets: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SECRETS),
        description="Environment variables passed to the pod, read here at submit time (skipped when unset).")
    secret_refs: dict[str, str] = Field(
        default_factory=dict, description="VAR: name of a RunPod secret; the pod gets "
        "{{ RUNPOD_SECRET_name }} and the value never leaves RunPod.")
    env: dict[str, str] = Field(default_factory=dict, description="Other (non-secret) pod environment variables.")
    pod_root: str = Field("/ck", pattern=r"^/[A-Za-z0-9_./-]*$", description="Working folder on the pod.")
    store: StoreProfile | None = Field(None, description="Bucket for inputs and results (required to run).",
                                       json_schema_extra={"required_to_run": True})
    prices: dict[str, float] = Field(
        default_factory=dict, description="USD per GPU-hour by GPU type, used when the RunPod API gives none.")
    prices_from_api: bool = Field(True, description="Ask RunPod for current prices (ck plan and ck run).")
    max_spend_per_run: float | None = Field(None, gt=0, description="USD; the spec may set a lower one.")
    max_upload_gb: float = Field(20.0, gt=0, description="Refuse to send more than this to a pod.")

    @field_validator("secrets")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        bad = [n for n in v if not _ENV_NAME.match(n)]
        if bad:
            raise ValueError(f"not environment variable names: {bad}")
        wide = [n for n in v if n in ACCOUNT_CREDENTIALS]
        if wide:
            raise ValueError(f"{', '.join(wide)} would give the pod a credential that reaches every run and "
                             "every object of your account, not only this run's: RunPod gives each pod its own "
                             "pod-scoped RUNPOD_API_KEY, and the pod reads and writes the bucket only through "
                             "short-lived links to this run's objects. Remove it from `runpod.secrets`")
        return v

    @field_validator("secret_refs")
    @classmethod
    def _refs(cls, v: dict[str, str]) -> dict[str, str]:
        for var, name in v.items():
            if not _ENV_NAME.match(var) or not re.match(r"^[A-Za-z_][A-Za-z0-9_.\-/]*$", name):
                raise ValueError(f"secret_refs entry {var}: {name} needs a variable name and a RunPod secret name")
            if var in ACCOUNT_CREDENTIALS:
                raise ValueError(f"secret_refs entry {var}: the pod must not get a credential that reaches other "
                                 "runs (RunPod gives each pod its own pod-scoped RUNPOD_API_KEY; the bucket is "
                                 "reached only through this run's short-lived links)")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        from cruijff_kit.files import is_secret_name

        for k in v:
            if not _ENV_NAME.match(k):
                raise ValueError(f"{k!r} is not an environment variable name")
            if is_secret_name(k):
                raise ValueError(f"{k} looks like a secret: list it under `secrets:` (its value is then read "
                                 "from your environment) or `secret_refs:`, never in the profile")
            if k.startswith("CK_"):
                raise ValueError(f"{k}: CK_* variables are set by cruijff-kit itself")
        return v


def require_store(profile: RunpodProfile, where: str) -> StoreProfile:
    """The profile's bucket, or a SpecError saying how to name one."""
    if profile.store is None:
        raise SpecError(
            "the runpod scheduler needs a bucket to send inputs to the pod and bring the run folder back.",
            file=where, path="runpod.store",
            hint="Add `store: {bucket: NAME, endpoint_url: ..., region: ...}` under `runpod:` in your profile "
                 "(`ck init --scheduler runpod`); credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.")
    return profile.store
