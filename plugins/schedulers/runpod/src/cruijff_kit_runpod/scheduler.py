"""The ``runpod`` scheduler: each run (or stage) on its own RunPod pod, results back through a bucket."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from cruijff_kit import CkError, PlannedRun, PluginConfig, Scheduler, StageJob, status
from cruijff_kit.files import atomic_write_json, locked
from cruijff_kit_runpod.api import RunPodApi, api_key_from_env
from cruijff_kit_runpod.config import RunpodConfig, RunpodProfile, format_hms, require_store
from cruijff_kit_runpod.store import MAX_PRESIGN_SECONDS

SYNC_LOCK = "runpod.sync"


def _echo(msg: str) -> None:
    click.echo(msg)


def _terminate_failed(run_dir: Path) -> bool:
    from cruijff_kit_runpod.pods import read_record

    return any(p.get("terminate_error") for p in read_record(run_dir)["pods"])


class RunpodScheduler(Scheduler):
    """Creates a pod per run (``pod_per: run``, default) or per stage; the pod runs ``ck stage`` for
    each of its stages (its ready evaluations in one process with ``group_evals``), sends the run
    folder back to the profile's bucket and terminates itself.
    ``ck status`` brings finished runs back, terminates their pods and shows pods still billed."""

    name = "runpod"
    Config = RunpodConfig
    Profile = RunpodProfile
    description = "Run stages on RunPod GPU pods; results come back through an S3-compatible bucket."

    @property  # type: ignore[override]
    def blocking(self) -> bool:  # type: ignore[override]
        """With ``wait: true``, ``ck run`` returns once every pod is back (and reports failed stages)."""
        return bool(self.config.wait)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ settings
    def _own(self, jobs: list[StageJob]) -> dict[Path, RunpodScheduler]:
        """Each run folder's own scheduler (its ``scheduler:`` section: runs may differ in it), read once."""
        return {d: j.scheduler(type(self)) for d, j in {Path(j.run_dir): j for j in jobs}.items()}  # type: ignore[misc]

    def _require_gpu(self) -> None:
        if self.config.resources.gpus < 1:  # type: ignore[attr-defined]
            raise CkError("a RunPod pod needs at least one GPU: set scheduler.resources.gpus (e.g. 1).")

    def _profile(self) -> tuple[RunpodProfile, str]:
        from cruijff_kit.engine import find_profile, scheduler_profile

        where = find_profile(self.base_dir)
        return scheduler_profile(type(self), self.base_dir), str(where or "(no profile file)")

    def _settings(self, profile: RunpodProfile | None) -> Any:
        from cruijff_kit_runpod.pods import PodSettings

        where = "(profile)"
        if profile is None:
            profile, where = self._profile()
        require_store(profile, where)
        return PodSettings.resolve(self.config, profile, self.base_dir)  # type: ignore[arg-type]

    def check(self, run: PlannedRun) -> None:
        """Plan-time: a GPU is asked for, RUNPOD_API_KEY is set, the profile names a bucket, limits fit.

        The spend limit is checked by ``ck run`` (``ck plan`` shows the estimate and flags it).
        """
        self._require_gpu()
        api_key_from_env()
        settings = self._settings(None)
        if settings.pod_seconds(len(run.stages)) > MAX_PRESIGN_SECONDS - 6 * 3600:
            raise CkError(f"a pod time limit of {format_hms(settings.pod_seconds(len(run.stages)))} is longer "
                          "than the 6.75 days a pod can upload its results for; lower resources.time or "
                          "scheduler.time_limit.")

    def _run_seconds(self, settings: Any, n_stages: int) -> int:
        cfg: RunpodConfig = self.config  # type: ignore[assignment]
        if cfg.pod_per == "run":
            return settings.pod_seconds(n_stages)
        return settings.pod_seconds(1) * n_stages

    @staticmethod
    def _over_budget(run: str, cost: float, settings: Any, price: float, seconds: int) -> str:
        return (f"run {run} could cost up to ${cost:.2f} ({settings.describe()} at ${price:.2f}/GPU-hour for "
                f"{format_hms(seconds)}), more than max_spend_per_run = ${settings.max_spend_per_run:.2f}. "
                "Nothing was started. Lower scheduler.time_limit or resources.time, use fewer or cheaper GPUs, "
                "or raise max_spend_per_run.")

    def plan_columns(self, run: PlannedRun) -> dict[str, str]:
        """``ck plan``: the pod, its price (RunPod API when reachable, else the profile) and the run's cost."""
        from cruijff_kit_runpod.pods import price_per_gpu_hour

        settings = self._settings(None)
        try:
            api = RunPodApi(quick=True) if settings.prices_from_api else None
        except CkError:
            api = None
        price, source = price_per_gpu_hour(settings, api)
        seconds = self._run_seconds(settings, len(run.stages))
        cols = {"pod": f"{settings.describe()}, one per {self.config.pod_per}",  # type: ignore[attr-defined]
                "time limit": format_hms(seconds)}
        if price is None:
            cols["est. cost"] = "? (no price: add runpod.prices to the profile)"
            return cols
        cost = price * settings.gpu_count * seconds / 3600
        text = f"${cost:.2f} at ${price:.2f}/GPU-h ({source})"
        if settings.max_spend_per_run and cost > settings.max_spend_per_run:
            text += f"; OVER max_spend_per_run ${settings.max_spend_per_run:.2f}"
        cols["est. cost"] = text
        return cols

    # ------------------------------------------------------------------ submit
    def _pods(self, jobs: list[StageJob], profile: PluginConfig | None,
              api: RunPodApi | None) -> list[tuple[Any, Any, float | None, str]]:
        """(group of stages, its pod's settings, price per GPU-hour, where the price came from) for every
        pod to start, each from its own run's ``scheduler:`` section over the profile."""
        from cruijff_kit_runpod.pods import group_jobs, price_per_gpu_hour

        out = []
        for run_dir, sched in self._own(jobs).items():
            sched._require_gpu()
            settings = sched._settings(profile)  # type: ignore[arg-type]
            price, source = price_per_gpu_hour(settings, api)
            for g in group_jobs([j for j in jobs if Path(j.run_dir) == run_dir], sched.config.pod_per):  # type: ignore[attr-defined]
                out.append((g, settings, price, source))
        return out

    def submit(self, jobs: list[StageJob], experiment_dir: Any, profile: PluginConfig | None) -> None:
        """Start a pod for every group of stages whose dependencies are met; the rest wait for them.

        Each pod gets its own run's settings (GPU type and count, time limit, disks, spend limit...)."""
        from cruijff_kit_runpod.pods import launch, missing_secrets

        api = RunPodApi()
        pods = self._pods(jobs, profile, api)
        for gpu in dict.fromkeys((settings.gpu_type, settings.gpu_count) for _, settings, _, _ in pods):
            api.gpu(*gpu)  # the key works and the GPU type exists
        self._check_spend(pods)
        for name in dict.fromkeys(n for _, settings, _, _ in pods for n in missing_secrets(settings)):
            _echo(f"runpod: {name} is not set here; the pods get no {name}.")
        created: list[tuple[Any, dict[str, Any]]] = []
        try:
            for g, settings, price, _ in pods:
                if g.needs:
                    self._wait_for(g, settings, price)
                else:
                    created.append((g, launch(g, settings, api, price, echo=_echo)))
        except (CkError, KeyboardInterrupt) as exc:
            self._rollback(created, [g for g, _, _, _ in pods], api, exc)
            raise
        _echo("runpod: `ck status` follows the pods, brings results back and terminates finished pods; "
              "`ck cancel` terminates them.")
        own = self._own(jobs)
        followed = [j for j in jobs if own[Path(j.run_dir)].config.wait]  # type: ignore[attr-defined]
        if followed:
            self.follow(followed)

    def _check_spend(self, pods: list[tuple[Any, Any, float | None, str]]) -> None:
        """Refuse (before starting any pod) a run whose pods could cost more than its max_spend_per_run."""
        per_run: dict[str, tuple[int, Any, float | None]] = {}
        for g, settings, price, _ in pods:
            seconds = per_run.get(g.run_name, (0, settings, price))[0]
            per_run[g.run_name] = (seconds + settings.pod_seconds(len(g.stages)), settings, price)
        for run, (seconds, settings, price) in per_run.items():
            if not settings.max_spend_per_run:
                continue
            if price is None:
                raise CkError(f"max_spend_per_run is set but the price of {settings.gpu_type} is unknown (RunPod "
                              "gave none); add `prices: {\"" + settings.gpu_type + "\": USD_PER_GPU_HOUR}` under "
                              "`runpod:` in your profile. Nothing was started.")
            cost = price * settings.gpu_count * seconds / 3600
            if cost > settings.max_spend_per_run:
                raise CkError(self._over_budget(run, cost, settings, price, seconds))

    def _wait_for(self, g: Any, settings: Any, price: float | None) -> None:
        from cruijff_kit_runpod.pods import change_record

        entry = {"stages": g.stage_names, "needs": g.needs, "experiment": g.experiment, "run_name": g.run_name,
                 "settings": settings.to_dict(), "price": price}
        change_record(g.run_dir, lambda d: d["waiting"].append(entry))
        for s in g.stage_names:
            status.update_stage(g.run_dir, s, state=status.SUBMITTED, scheduler=self.name, job_id=f"waiting/{s}",
                                live=None, error=None)
        _echo(f"runpod: {g.run_name} {', '.join(g.stage_names)} waits for {', '.join(g.needs)}; `ck status` "
              "starts its pod once they are done.")

    def _rollback(self, created: list[tuple[Any, dict[str, Any]]], groups: list[Any], api: RunPodApi,
                  exc: BaseException) -> None:
        """A pod could not be started: terminate the pods this call started, put every stage back."""
        from cruijff_kit_runpod.pods import change_record, terminate

        for g, rec in created:
            terminate(g.run_dir, rec, api, rec["stages"])
            if rec.get("terminated"):
                change_record(g.run_dir, lambda d, pid=rec["id"]: d.__setitem__(
                    "pods", [p for p in d["pods"] if p["id"] != pid]))
            else:
                change_record(g.run_dir, lambda d, r=rec: d.__setitem__(
                    "pods", [r if p["id"] == r["id"] else p for p in d["pods"]]))
        note = str(exc) if isinstance(exc, CkError) else "interrupted"
        for g in groups:
            change_record(g.run_dir, lambda d, names=set(g.stage_names): d.__setitem__(
                "waiting", [w for w in d["waiting"] if not names & set(w["stages"])]))
            for s in g.stage_names:
                entry = status.read(g.run_dir)["stages"].get(s, {})
                if entry.get("live"):
                    continue  # its pod could not be terminated: keep it visible
                status.update_stage(g.run_dir, s, state=status.PENDING, job_id=None, pod_id=None, live=None,
                                    error=f"not started: {note}")

    # ------------------------------------------------------------------ follow
    def refresh(self, jobs: list[StageJob]) -> dict[str, str]:
        """Ask RunPod and the bucket about this experiment's pods; bring finished runs back."""
        from cruijff_kit_runpod.pods import RECORD, needs_attention

        run_dirs = list(dict.fromkeys(Path(j.run_dir) for j in jobs))
        todo = [d for d in run_dirs if (d / RECORD).exists() and needs_attention(d)]
        if todo:
            api = RunPodApi()
            for d in todo:
                self._sync_run(d, api)
        out: dict[str, str] = {}
        for d in run_dirs:
            for entry in status.read(d)["stages"].values():
                if entry.get("scheduler") == self.name and entry.get("job_id"):
                    out[str(entry["job_id"])] = entry.get("state", status.PENDING)
        return out

    def _sync_run(self, run_dir: Path, api: RunPodApi) -> None:
        from cruijff_kit_runpod.pods import change_record, read_record, sync_pod

        with locked(run_dir / SYNC_LOCK):
            for rec in read_record(run_dir)["pods"]:
                if rec.get("synced") and rec.get("terminated"):
                    continue
                new = sync_pod(run_dir, rec, api)
                change_record(run_dir, lambda d, r=new: d.__setitem__(
                    "pods", [r if p["id"] == r["id"] else p for p in d["pods"]]))
            self._start_waiting(run_dir, api)

    def _start_waiting(self, run_dir: Path, api: RunPodApi) -> None:
        from cruijff_kit_runpod.pods import Group, PodSettings, change_record, launch, read_record

        for w in read_record(run_dir)["waiting"]:
            states = {n: status.stage_state(run_dir, n) for n in w["needs"]}
            if any(s in status.ACTIVE_STATES for s in states.values()):
                continue
            change_record(run_dir, lambda d, names=set(w["stages"]): d.__setitem__(
                "waiting", [x for x in d["waiting"] if not names & set(x["stages"])]))
            failed = [n for n, s in states.items() if s != status.DONE]
            if failed:
                for s in w["stages"]:
                    status.update_stage(run_dir, s, state=status.PENDING, job_id=None,
                                        error=f"not run: {', '.join(failed)} did not finish")
                continue
            group = Group(w["experiment"], w["run_name"], run_dir, [(s, []) for s in w["stages"]], [])
            try:
                launch(group, PodSettings.from_dict(w["settings"]), api, w.get("price"), echo=_echo)
            except CkError as exc:
                for s in w["stages"]:
                    status.update_stage(run_dir, s, state=status.FAILED, error=f"could not start its pod: {exc}")

    def follow(self, jobs: list[StageJob]) -> None:
        """Poll until every pod of these jobs is back and terminated (``wait: true``)."""
        from cruijff_kit_runpod.pods import needs_attention

        poll = min(s.config.poll_seconds for s in self._own(jobs).values())  # type: ignore[attr-defined]
        run_dirs = list(dict.fromkeys(Path(j.run_dir) for j in jobs))
        seen: dict[str, str] = {}
        try:
            while True:
                self.refresh(jobs)
                active = False
                for j in jobs:
                    st = status.stage_state(j.run_dir, j.stage)
                    active = active or st in status.ACTIVE_STATES
                    if seen.get(j.key) != st:
                        seen[j.key] = st
                        _echo(f"  {j.run_name} {j.stage}: {st}")
                if not active:
                    left = [d for d in run_dirs if needs_attention(d)]
                    if not left:
                        return
                    if any(_terminate_failed(d) for d in left):  # say so loudly, and stop following
                        for d in left:
                            lives = {e.get("live") for e in status.read(d)["stages"].values() if e.get("live")}
                            for line in sorted(lives):
                                _echo(f"runpod: STILL RUNNING AND BILLED: {line}")
                        return
                time.sleep(poll)
        except KeyboardInterrupt:
            _echo("runpod: stopped following; the pods keep running. `ck status` follows them, `ck cancel` "
                  "terminates them.")
            raise

    # ------------------------------------------------------------------ cancel
    def cancel(self, jobs: list[StageJob]) -> None:
        """Terminate the pods running these stages (finished stages' results still come back)."""
        from cruijff_kit_runpod.pods import change_record, read_record, sync_pod, terminate

        by_run: dict[Path, set[str]] = {}
        for j in jobs:
            by_run.setdefault(Path(j.run_dir), set()).add(j.stage)
        api: RunPodApi | None = None
        failures: list[str] = []
        for run_dir, names in by_run.items():
            with locked(run_dir / SYNC_LOCK):
                change_record(run_dir, lambda d, n=names: d.__setitem__(
                    "waiting", [w for w in d["waiting"] if not n & set(w["stages"])]))
                for rec in read_record(run_dir)["pods"]:
                    if (rec.get("terminated") and rec.get("synced")) or not names & set(rec["stages"]):
                        continue
                    api = api or RunPodApi()
                    rec = dict(rec)
                    if not rec.get("terminated"):
                        terminate(run_dir, rec, api, rec["stages"])
                    if rec.get("terminate_error"):
                        failures.append(f"pod {rec['id']}: {rec['terminate_error']}")
                    if not rec.get("synced"):
                        rec = sync_pod(run_dir, rec, api, cancelling=True)
                    change_record(run_dir, lambda d, r=rec: d.__setitem__(
                        "pods", [r if p["id"] == r["id"] else p for p in d["pods"]]))
        if failures:
            raise CkError("could not terminate " + "; ".join(failures) + ". Run `ck cancel` again, or terminate "
                          "the pod in the RunPod console; `ck status` keeps showing it until it is gone.")

    # ------------------------------------------------------------------ dry run
    def dry_run(self, jobs: list[StageJob], experiment_dir: Any, profile: PluginConfig | None) -> None:
        """Write what each pod would be created with to ``logs/runpod-dry-run.json``; start nothing."""
        from cruijff_kit import RunLayout
        from cruijff_kit.engine import load_run
        from cruijff_kit_runpod.bundle import POD_COMMAND, find_inputs
        from cruijff_kit_runpod.pods import install_list, secret_ref

        try:
            api = RunPodApi()
        except CkError:
            api = None
        for g, settings, price, source in self._pods(jobs, profile, api):
            spec = load_run(g.run_dir).spec
            install = install_list(settings, spec)
            seconds = settings.pod_seconds(len(g.stages))
            env = {k: f"<value of ${k} at submit>" for k in settings.secrets if k not in settings.secret_refs}
            env.update({k: secret_ref(v) for k, v in settings.secret_refs.items()})
            env.update(settings.env)
            env.update({k: "<set at submit>" for k in ("CK_POD_ROOT", "CK_POD_AGENT", "CK_BUNDLE_URL",
                                                        "CK_RESULTS_URL", "CK_STATUS_URL", "CK_DONE_URL",
                                                        "CK_DEADLINE", "CK_RESERVE_SECONDS")})
            inputs = find_inputs(spec, g.run_dir, settings.upload_paths(), install)
            cost = price * settings.gpu_count * seconds / 3600 if price else None
            layout = RunLayout(g.run_dir)
            out = layout.logs_dir / "runpod-dry-run.json"
            atomic_write_json(out, {
                "stages": g.stage_names, "waits_for": g.needs, "gpu_type": settings.gpu_type,
                "gpu_count": settings.gpu_count, "cloud_type": settings.cloud_type, "image": settings.image,
                "container_disk_gb": settings.container_disk_gb, "volume_gb": settings.volume_gb,
                "docker_args": POD_COMMAND, "env": env, "install": install,
                "inputs": [str(p) for p in inputs.paths], "time_limit": format_hms(seconds),
                "price_per_gpu_hour": price, "price_source": source, "max_cost": cost,
            })
            _echo(f"runpod (dry run): {g.run_name} [{', '.join(g.stage_names)}] -> {settings.describe()}, "
                  f"time limit {format_hms(seconds)}" + (f", at most ${cost:.2f}" if cost else "") + f"; see {out}")
