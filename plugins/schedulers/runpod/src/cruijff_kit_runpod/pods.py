"""A pod's life as seen from this machine: settings, launch, the record in the run folder, sync back.

Each run folder holds ``runpod.json``: the pods started for the run (id, stages, GPU, cost per hour,
deadline, the bucket keys of its objects) and stage groups waiting for a dependency (``pod_per:
stage``). It holds no secret and no URL. Stage entries in ``status.json`` get ``job_id`` =
``<pod id>/<stage>``, ``pod_id`` and, while the pod exists, a ``live`` line with its state and cost.
"""

from __future__ import annotations

import dataclasses
import os
import secrets as _secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cruijff_kit import CkError, PlannedRun, RunLayout, parse_slurm_time, status
from cruijff_kit.files import human_bytes, read_json, update_json
from cruijff_kit_runpod.api import AmbiguousError, PodRequest, RunPodApi, RunPodError
from cruijff_kit_runpod.bundle import (
    POD_COMMAND,
    Inputs,
    agent_env_value,
    apply_stage_entries,
    find_inputs,
    manifest_for,
    merge_results,
    size_of,
    write_bundle,
)
from cruijff_kit_runpod.config import RunpodConfig, RunpodProfile, format_hms
from cruijff_kit_runpod.store import MAX_PRESIGN_SECONDS, ObjectStore

RECORD = "runpod.json"
#: A pod still alive this long after its deadline is terminated by the next refresh.
OVERDUE_SECONDS = 15 * 60
#: Pre-signed URLs outlive the pod's deadline by this much (uploads at the very end still work); a pod
#: still alive then is terminated by the next refresh (OVERDUE_SECONDS), so no link outlives its use.
URL_MARGIN_SECONDS = OVERDUE_SECONDS
#: The bundle is read once, when the pod starts: its link is valid at most this long (plus the margin).
BUNDLE_LINK_SECONDS = 3600
#: A pod that reported its stages done gets this long to terminate itself before it is terminated.
SELF_TERMINATE_GRACE = 120.0
MAX_ENV_VARS = 50
_PRICE_CACHE: dict[tuple[str, str, int], float | None] = {}


# --------------------------------------------------------------------------- settings
@dataclass
class PodSettings:
    """Everything a pod is created with, resolved from the spec's section over the profile's."""

    gpu_type: str
    gpu_count: int
    cloud_type: str
    image: str
    container_disk_gb: int
    volume_gb: int
    volume_mount_path: str
    network_volume_id: str | None
    data_center_id: str | None
    install: list[str] | None
    pip_args: list[str]
    secrets: list[str]
    secret_refs: dict[str, str]
    env: dict[str, str]
    pod_root: str
    store: dict[str, Any] | None
    stage_seconds: int
    time_limit_seconds: int | None
    max_spend_per_run: float | None
    prices: dict[str, float]
    prices_from_api: bool
    max_upload_gb: float
    upload: list[str] = field(default_factory=list)
    spec_dir: str = ""
    public_access: bool = False
    group_evals: bool = True

    @classmethod
    def resolve(cls, cfg: RunpodConfig, profile: RunpodProfile, spec_dir: Path | str = "") -> PodSettings:
        spends = [s for s in (cfg.max_spend_per_run, profile.max_spend_per_run) if s]
        return cls(
            gpu_type=cfg.gpu_type or profile.gpu_type, gpu_count=cfg.resources.gpus,
            cloud_type=cfg.cloud_type or profile.cloud_type, image=cfg.image or profile.image,
            container_disk_gb=cfg.container_disk_gb or profile.container_disk_gb,
            volume_gb=profile.volume_gb if cfg.volume_gb is None else cfg.volume_gb,
            volume_mount_path=profile.volume_mount_path, network_volume_id=profile.network_volume_id,
            data_center_id=profile.data_center_id, install=profile.install, pip_args=list(profile.pip_args),
            secrets=list(profile.secrets), secret_refs=dict(profile.secret_refs), env=dict(profile.env),
            pod_root=profile.pod_root, store=profile.store.model_dump() if profile.store else None,
            stage_seconds=parse_slurm_time(cfg.resources.time),
            time_limit_seconds=parse_slurm_time(cfg.time_limit) if cfg.time_limit else None,
            max_spend_per_run=min(spends) if spends else None, prices=dict(profile.prices),
            prices_from_api=profile.prices_from_api, max_upload_gb=profile.max_upload_gb,
            upload=list(cfg.upload), spec_dir=str(spec_dir), public_access=cfg.public_access,
            group_evals=cfg.group_evals)

    def pod_seconds(self, n_stages: int) -> int:
        """The wall-time limit of a pod that runs ``n_stages`` stages."""
        return self.time_limit_seconds or self.stage_seconds * max(1, n_stages)

    def upload_paths(self) -> list[str]:
        """``scheduler.upload`` entries as absolute paths (relative ones are relative to the spec)."""
        out = []
        for value in self.upload:
            p = Path(value).expanduser()
            out.append(str(p if p.is_absolute() or not self.spec_dir else Path(self.spec_dir) / p))
        return out

    def describe(self) -> str:
        return f"{self.gpu_count}x {self.gpu_type} ({self.cloud_type})"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PodSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def price_per_gpu_hour(settings: PodSettings, api: RunPodApi | None) -> tuple[float | None, str]:
    """(USD per GPU-hour, where it came from): the RunPod API when reachable, else the profile's table."""
    key = (settings.gpu_type, settings.cloud_type, settings.gpu_count)
    if settings.prices_from_api and api is not None:
        if key not in _PRICE_CACHE:
            try:
                _PRICE_CACHE[key] = api.price_per_gpu_hour(*key)
            except AmbiguousError:  # unreachable or busy: the profile's table answers
                _PRICE_CACHE[key] = None
        if _PRICE_CACHE[key]:
            return _PRICE_CACHE[key], "RunPod API"
    if settings.gpu_type in settings.prices:
        return float(settings.prices[settings.gpu_type]), "profile"
    return None, "unknown"


# --------------------------------------------------------------------------- groups of stages
@dataclass
class Group:
    """The stages one pod runs (all of a run's, or one), and stages of other pods it must wait for."""

    experiment: str
    run_name: str
    run_dir: Path
    stages: list[tuple[str, list[str]]]  # (stage, dependencies inside this pod)
    needs: list[str]  # stages of the same run on other pods that must be done first

    @property
    def stage_names(self) -> list[str]:
        return [s for s, _ in self.stages]


def group_jobs(jobs: list[Any], pod_per: str) -> list[Group]:
    """One group per run (stages in plan order), or one per stage."""
    by_run: dict[Path, list[Any]] = {}
    for job in jobs:
        by_run.setdefault(Path(job.run_dir), []).append(job)
    groups: list[Group] = []
    for run_dir, run_jobs in by_run.items():
        first = run_jobs[0]
        if pod_per == "run":
            names = {j.stage for j in run_jobs}
            stages = [(j.stage, [d for d in j.depends_on if d in names]) for j in run_jobs]
            groups.append(Group(first.experiment, first.run_name, run_dir, stages, []))
        else:
            for j in run_jobs:
                groups.append(Group(first.experiment, first.run_name, run_dir, [(j.stage, [])], list(j.depends_on)))
    return groups


# --------------------------------------------------------------------------- the record
def read_record(run_dir: Path) -> dict[str, Any]:
    """``runpod.json`` of a run (``{"pods": [...], "waiting": [...]}``)."""
    data = read_json(Path(run_dir) / RECORD, default={}) or {}
    data.setdefault("pods", [])
    data.setdefault("waiting", [])
    return data


def change_record(run_dir: Path, change: Any) -> dict[str, Any]:
    """Locked read-modify-write of ``runpod.json``."""

    def fn(data: dict[str, Any]) -> None:
        data.setdefault("pods", [])
        data.setdefault("waiting", [])
        change(data)

    return update_json(Path(run_dir) / RECORD, fn)


def needs_attention(run_dir: Path) -> bool:
    """True when the run has a pod not yet brought back or terminated, or a waiting group."""
    rec = read_record(run_dir)
    return bool(rec["waiting"]) or any(not p.get("synced") or not p.get("terminated") for p in rec["pods"])


# --------------------------------------------------------------------------- launch
def install_list(settings: PodSettings, spec: dict[str, Any]) -> list[str]:
    """The profile's list, or the cruijff-kit distributions this run's plugins come from."""
    if settings.install is not None:
        return list(settings.install)
    from importlib import metadata

    from cruijff_kit import registry

    reg = registry()
    wanted: dict[str, str] = {}
    try:
        wanted["cruijff-kit"] = metadata.version("cruijff-kit")
    except metadata.PackageNotFoundError:
        wanted["cruijff-kit"] = "?"
    sections = [("dataset", spec.get("dataset")), ("trainer", spec.get("train"))]
    sections += [("evaluator", ev) for ev in spec.get("eval") or []]
    for kind, sec in sections:
        if not sec:
            continue
        found = reg.plugins[kind].get(sec.get("plugin", ""))
        if found is not None and found.distribution not in ("?", "(in process)"):
            wanted[found.distribution] = found.version
    return [f"{d}=={v}" if v and v != "?" else d for d, v in wanted.items()]


def secret_ref(name: str) -> str:
    """How a pod's environment names a RunPod secret (RunPod substitutes it when the pod starts)."""
    return "{{ RUNPOD_SECRET_" + name + " }}"


def pod_env(settings: PodSettings, urls: dict[str, str], deadline: float, seconds: int) -> dict[str, str]:
    """The pod's environment: the agent, its URLs and deadline, the profile's env, and the secrets."""
    env: dict[str, str] = dict(settings.env)
    for name in settings.secrets:
        value = os.environ.get(name)
        if value and name not in settings.secret_refs:
            env[name] = value
    for name, ref in settings.secret_refs.items():
        env[name] = secret_ref(ref)
    env.update({
        "CK_POD_ROOT": settings.pod_root,
        "CK_POD_AGENT": agent_env_value(),
        "CK_BUNDLE_URL": urls["bundle"],
        "CK_RESULTS_URL": urls["results"],
        "CK_STATUS_URL": urls["status"],
        "CK_DONE_URL": urls["done"],
        "CK_DEADLINE": f"{deadline:.0f}",
        "CK_RESERVE_SECONDS": f"{min(300.0, max(1.0, seconds * 0.1)):g}",
    })
    if len(env) > MAX_ENV_VARS:
        raise CkError(f"a RunPod pod takes at most {MAX_ENV_VARS} environment variables; this one would get "
                      f"{len(env)}. Pass fewer under runpod.env / secrets in your profile.")
    return env


def missing_secrets(settings: PodSettings) -> list[str]:
    """Secrets the profile names that are not set here (the pod runs without them)."""
    return [n for n in settings.secrets if n not in settings.secret_refs and not os.environ.get(n)]


def link_seconds(seconds: int) -> dict[str, int]:
    """How long each of a pod's links is valid, for a pod with a time limit of ``seconds``.

    The bundle's GET link covers the pod's start (at most :data:`BUNDLE_LINK_SECONDS`); the PUT links
    of results, status and done marker last until the pod's deadline; each gets
    :data:`URL_MARGIN_SECONDS` more, all within S3's limit.
    """
    start = min(seconds, BUNDLE_LINK_SECONDS) + URL_MARGIN_SECONDS
    work = seconds + URL_MARGIN_SECONDS
    return {"bundle": min(start, MAX_PRESIGN_SECONDS),
            **{k: min(work, MAX_PRESIGN_SECONDS) for k in ("results", "status", "done")}}


def pod_links(store: ObjectStore, keys: dict[str, str], seconds: int) -> dict[str, str]:
    """Pre-signed links, one per object of this pod launch (GET the bundle; PUT results, status, done)."""
    valid = link_seconds(seconds)
    return {k: store.presign("GET" if k == "bundle" else "PUT", keys[k], valid[k]) for k in valid}


def pod_manifest(run: PlannedRun, group: Group, settings: PodSettings, inputs: Inputs,
                 install: list[str]) -> dict[str, Any]:
    """What the pod's agent reads: the bundle's manifest, each stage with its kind (``train`` or
    ``eval``), and ``group_evals`` (the agent runs consecutive ready evaluations in one process)."""
    manifest = manifest_for(run.spec, group.run_dir, group.stages, inputs, install, settings.pip_args)
    kinds = {s.name: s.kind for s in run.stages}
    for entry in manifest["stages"]:
        entry["kind"] = kinds.get(entry["name"], "")
    manifest["group_evals"] = bool(settings.group_evals)
    return manifest


def launch(group: Group, settings: PodSettings, api: RunPodApi, price: float | None,
           echo: Any = None) -> dict[str, Any]:
    """Upload the group's bundle, create its pod, and record it. Returns the pod record."""
    from cruijff_kit.engine import load_run

    if settings.store is None:
        raise CkError("the runpod scheduler needs `store` (a bucket) under `runpod:` in your profile.")
    run = load_run(group.run_dir)
    spec = run.spec
    install = install_list(settings, spec)
    inputs = find_inputs(spec, group.run_dir, settings.upload_paths(), install)
    total = sum(size_of(p) for p in [group.run_dir, *inputs.paths])
    if total > settings.max_upload_gb * 1e9:
        biggest = sorted(inputs.paths, key=size_of, reverse=True)[:3]
        limit = settings.max_upload_gb * 1e9  # the option counts decimal gigabytes
        raise CkError(f"run {group.run_name} would send {human_bytes(total)} to its pod (more than max_upload_gb = "
                      f"{settings.max_upload_gb:g}, i.e. {human_bytes(limit)}); largest inputs: "
                      + ", ".join(map(str, biggest)) + ". Use a model id the pod downloads itself, or raise "
                      "runpod.max_upload_gb.")
    store = ObjectStore(settings.store)
    token = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{_secrets.token_hex(3)}"
    keys = {k: store.key(group.experiment, group.run_name, token, name) for k, name in
            (("bundle", "bundle.tar.gz"), ("results", "results.tar.gz"), ("status", "status.json"),
             ("done", "done.json"))}
    seconds = settings.pod_seconds(len(group.stages))
    manifest = pod_manifest(run, group, settings, inputs, install)
    with tempfile.TemporaryDirectory(prefix="ck-runpod-") as tmp:
        archive = Path(tmp) / "bundle.tar.gz"
        size = write_bundle(archive, group.run_dir, manifest, inputs)
        store.put_file(keys["bundle"], archive)
    urls = pod_links(store, keys, seconds)
    store.refuse_public(keys["bundle"], urls["bundle"])
    created = time.time()
    deadline = created + seconds
    name = f"ck-{group.run_name}-{token.rsplit('-', 1)[1]}"
    req = PodRequest(name=name, image=settings.image, gpu_type=settings.gpu_type, gpu_count=settings.gpu_count,
                     cloud_type=settings.cloud_type, container_disk_gb=settings.container_disk_gb,
                     volume_gb=settings.volume_gb, volume_mount_path=settings.volume_mount_path,
                     docker_args=POD_COMMAND, env=pod_env(settings, urls, deadline, seconds),
                     network_volume_id=settings.network_volume_id, data_center_id=settings.data_center_id,
                     public_access=settings.public_access)
    pod = api.create_pod(req)
    cost = price * settings.gpu_count if price else None
    record = {"id": pod["id"], "name": name, "stages": group.stage_names, "created": created, "deadline": deadline,
              "gpu_type": settings.gpu_type, "gpu_count": settings.gpu_count, "cloud_type": settings.cloud_type,
              "image": settings.image, "cost_per_hr": cost, "store": settings.store, "keys": keys,
              "state": "CREATED", "synced": False, "terminated": False, "bundle_bytes": size}
    try:
        change_record(group.run_dir, lambda d: d["pods"].append(record))
        live = live_line(record, None)
        for stage in group.stage_names:
            status.update_stage(group.run_dir, stage, state=status.SUBMITTED, scheduler="runpod",
                                job_id=f"{pod['id']}/{stage}", pod_id=pod["id"], gpu_type=settings.gpu_type,
                                gpu_count=settings.gpu_count, cost_per_hr=cost, live=live, error=None)
    except BaseException:  # a pod nobody knows about must not keep running
        try:
            api.terminate_pod(pod["id"])
        except RunPodError:
            pass
        raise
    if echo:
        limit = f"time limit {format_hms(seconds)}"
        money = f", ${cost:.2f}/h, at most ${cost * seconds / 3600:.2f}" if cost else ", price unknown"
        echo(f"runpod: pod {pod['id']} for {group.run_name} [{', '.join(group.stage_names)}]: "
             f"{settings.describe()}{money}, {limit}; sent {human_bytes(size)}.")
    return record


# --------------------------------------------------------------------------- following a pod
def live_line(rec: dict[str, Any], info: dict[str, Any] | None) -> str:
    """One line that makes a billed pod impossible to miss: id, state, GPUs, $/h, time up, cost so far."""
    cost = (info or {}).get("costPerHr") or rec.get("cost_per_hr")
    state = (info or {}).get("desiredStatus") or rec.get("state") or "CREATED"
    up = max(0.0, time.time() - float(rec.get("created") or time.time()))
    money = f"${float(cost):.2f}/h, up {format_hms(up)} (~${float(cost) * up / 3600:.2f} so far)" if cost else \
        f"price unknown, up {format_hms(up)}"
    return (f"RunPod pod {rec['id']} {state}: {rec.get('gpu_count')}x {rec.get('gpu_type')}, {money}; "
            f"checked {time.strftime('%H:%M', time.localtime())}")


def _set_live(run_dir: Path, stages: list[str], live: str | None) -> None:
    for s in stages:
        status.update_stage(run_dir, s, live=live)


def sync_pod(run_dir: Path, rec: dict[str, Any], api: RunPodApi, *, cancelling: bool = False) -> dict[str, Any]:
    """Follow one pod: show progress, and once it ended bring its results back and terminate it.

    Returns the updated record (the caller stores it).
    """
    rec = dict(rec)
    stages = list(rec["stages"])
    if rec.get("synced"):
        if not rec.get("terminated"):
            try:
                info = api.get_pod(rec["id"])
            except RunPodError:
                info = {}
            _end(run_dir, rec, info, api, stages)
        return rec
    store = ObjectStore(rec["store"])
    done = store.get_json(rec["keys"]["done"])
    desired = None
    overdue = time.time() > float(rec["deadline"]) + OVERDUE_SECONDS
    if not cancelling:  # (cancel terminates the pod itself first)
        try:
            info = api.get_pod(rec["id"])
        except RunPodError as exc:
            _set_live(run_dir, stages, f"{live_line(rec, None)} (could not ask RunPod: {str(exc)[:120]})")
            return rec
        desired = (info or {}).get("desiredStatus")
        if info and done is None and desired not in ("EXITED", "TERMINATED") and not overdue:
            rec["state"] = desired or rec.get("state")
            if info.get("costPerHr"):
                rec["cost_per_hr"] = float(info["costPerHr"])
            _progress(run_dir, store, rec, stages)
            _set_live(run_dir, stages, live_line(rec, info))
            return rec
        if done is not None:
            rec.setdefault("done_seen", time.time())
        _end(run_dir, rec, info, api, stages)
    with tempfile.TemporaryDirectory(prefix="ck-runpod-") as tmp:
        archive = Path(tmp) / "results.tar.gz"
        entries = merge_results(run_dir, archive, stages) if store.download(rec["keys"]["results"], archive) else {}
    apply_stage_entries(run_dir, entries)
    if not cancelling:
        _settle_leftovers(run_dir, rec, done, overdue, stages)
    rec["synced"] = True
    rec["state"] = "TERMINATED" if rec.get("terminated") else (desired or rec.get("state"))
    rec["done"] = done
    return rec


def _end(run_dir: Path, rec: dict[str, Any], info: dict[str, Any] | None, api: RunPodApi,
         stages: list[str]) -> None:
    """A pod whose work is over: gone already, terminating itself (give it a moment), or terminate it."""
    if info is None:
        rec["terminated"] = True
        _set_live(run_dir, stages, None)
        return
    seen = rec.get("done_seen")
    if info.get("desiredStatus") == "RUNNING" and seen and time.time() - seen < SELF_TERMINATE_GRACE:
        _set_live(run_dir, stages, f"{live_line(rec, info)} (finished; removing itself)")
        return
    terminate(run_dir, rec, api, stages)


def terminate(run_dir: Path, rec: dict[str, Any], api: RunPodApi, stages: list[str]) -> None:
    """Terminate the pod of ``rec`` (updated in place); on failure its stages keep a loud ``live`` line."""
    try:
        api.terminate_pod(rec["id"])
    except RunPodError as exc:
        rec["terminate_error"] = str(exc)
        _set_live(run_dir, stages, f"{live_line(rec, None)}: TERMINATING IT FAILED ({str(exc)[:160]}); run "
                  "`ck cancel` again or terminate it in the RunPod console")
        return
    rec["terminated"] = True
    rec.pop("terminate_error", None)
    _set_live(run_dir, stages, None)


def _progress(run_dir: Path, store: ObjectStore, rec: dict[str, Any], stages: list[str]) -> None:
    """While the pod works: show which of its stages runs, and bring back stages it finished.

    A stage counts as finished here only as the results archive's own ``status.json`` says, so its
    files are always back before its state is.
    """
    theirs = (store.get_json(rec["keys"]["status"]) or {}).get("stages") or {}
    ended = (status.DONE, status.FAILED, status.INTERRUPTED)
    for s in stages:
        entry = theirs.get(s) or {}
        if entry.get("state") == status.RUNNING and status.stage_state(run_dir, s) == status.SUBMITTED:
            status.update_stage(run_dir, s, state=status.RUNNING, started=entry.get("started"))
    news = [s for s in stages if (theirs.get(s) or {}).get("state") in ended
            and status.stage_state(run_dir, s) in status.ACTIVE_STATES]
    if not news:
        return
    with tempfile.TemporaryDirectory(prefix="ck-runpod-") as tmp:
        archive = Path(tmp) / "results.tar.gz"
        if store.download(rec["keys"]["results"], archive):
            entries = merge_results(run_dir, archive, stages)
            apply_stage_entries(run_dir, {s: e for s, e in entries.items() if e.get("state") in ended})


def _settle_leftovers(run_dir: Path, rec: dict[str, Any], done: dict[str, Any] | None, overdue: bool,
                      stages: list[str]) -> None:
    """Stages the pod's own status did not finish: skipped, crashed, or cut off."""
    codes = (done or {}).get("codes") or {}
    reason = (done or {}).get("reason") or ""
    layout = RunLayout(run_dir)
    for s in stages:
        if status.stage_state(run_dir, s) not in status.ACTIVE_STATES:
            continue
        now = status.now()
        if done is None:
            why = "passed its time limit and was terminated" if overdue else "ended without sending its results"
            status.update_stage(run_dir, s, state=status.INTERRUPTED, ended=now,
                                error=f"RunPod pod {rec['id']} {why}; `ck run` starts the stage again.")
        elif codes.get(s) is None:
            status.update_stage(run_dir, s, state=status.PENDING,
                                error=f"not run on pod {rec['id']}: {reason or 'an earlier stage did not finish'}")
        elif codes[s] != 0:
            status.update_stage(run_dir, s, state=status.FAILED, ended=now, exit_code=codes[s],
                                error=f"stage process on pod {rec['id']} exited with code {codes[s]}",
                                error_tail=status.tail(layout.log(s, "err"), 15))
        else:
            status.update_stage(run_dir, s, state=status.FAILED, ended=now,
                                error=f"the stage finished on pod {rec['id']} but its results did not come back "
                                      "(upload from the pod failed?); `ck run` runs it again.")
