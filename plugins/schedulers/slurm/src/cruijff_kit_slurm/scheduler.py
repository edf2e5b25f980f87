"""The ``slurm`` scheduler: stages as batch jobs, a sweep's stages as job arrays, states from squeue/sacct."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cruijff_kit import (
    CkError,
    ExperimentLayout,
    PluginConfig,
    Resources,
    RunLayout,
    Scheduler,
    StageJob,
    status,
)
from cruijff_kit_slurm import slurmcli
from cruijff_kit_slurm.config import SlurmConfig, SlurmProfile
from cruijff_kit_slurm.script import StageScript, array_script, stage_script, write_script

NAME = "slurm"


def _say(message: str) -> None:
    print(f"[slurm] {message}", file=sys.stderr, flush=True)


#: The label of a job that runs several evaluations of one run (its job name, its arrays' names).
GROUP_LABEL = "evals"


@dataclass
class _Task:
    """One stage of one run (or, grouped, several evaluations of it), as one SLURM job or one array task."""

    job: StageJob  # its (first) stage
    index: int  # the run's array index (the same in every array of this submission)
    resources: Resources
    script: Path
    cfg: SlurmConfig  # the scheduler section of the task's own run
    after: _Part | None = None  # the train part this eval waits for (submitted in this call)
    after_id: str | None = None  # ... or the id of a train job submitted earlier
    job_id: str | None = None
    more: list[StageJob] = field(default_factory=list)  # further evaluations the same job runs, in order

    @property
    def jobs(self) -> list[StageJob]:
        """Every stage this task runs, in order."""
        return [self.job, *self.more]

    @property
    def label(self) -> str:
        """The stage's name, or :data:`GROUP_LABEL` for several."""
        return GROUP_LABEL if self.more else self.job.stage

    def stage_job_id(self, job: StageJob) -> str:
        """The ``job_id`` recorded for one of its stages (see :func:`slurmcli.stage_job_id`)."""
        assert self.job_id is not None
        return slurmcli.stage_job_id(self.job_id, job.stage, bool(self.more))


@dataclass
class _Part:
    """Tasks submitted with one sbatch call: one job, or one job array."""

    stage: str
    resources: Resources
    cfg: SlurmConfig  # its first task's run's section; every task has the same HEADER_OPTIONS
    tasks: list[_Task] = field(default_factory=list)
    array_id: str | None = None  # set once submitted (the job id when it is a single job)

    def task_id(self, task: _Task) -> str:
        assert self.array_id is not None
        return self.array_id if len(self.tasks) == 1 else f"{self.array_id}_{task.index}"


def _stage_target(stage: str) -> str | None:
    return stage.split(".", 2)[2] if stage.startswith("eval.") else None


#: Options of the scheduler section that go into a job array's own header (each task runs its own
#: run's stage script, which holds the rest).
HEADER_OPTIONS = ("gres", "constraint", "signal_seconds", "array_parallelism")


def _header_key(res: Resources, cfg: SlurmConfig) -> str:
    """Tasks with equal keys can share one array: the same resources and header options."""
    return json.dumps([res.model_dump(), {k: getattr(cfg, k) for k in HEADER_OPTIONS}], sort_keys=True)


class SlurmScheduler(Scheduler):
    """Submits each stage as a SLURM job running ``ck stage RUN_DIR STAGE``; sweeps as job arrays."""

    name = NAME
    Config = SlurmConfig
    Profile = SlurmProfile
    description = "Submit stages to a SLURM cluster: job arrays per stage, afterok dependencies, requeue."
    retry_failed_default = False

    @property
    def cfg(self) -> SlurmConfig:
        """This object's own section: the first run's, when ``ck run`` built it. Jobs use :meth:`run_config`."""
        return self.config  # type: ignore[return-value]

    def run_config(self, job: StageJob) -> SlurmConfig:
        """The ``scheduler:`` section of the job's own run (runs may differ in it)."""
        return job.scheduler(type(self)).config  # type: ignore[return-value]

    def _run_configs(self, jobs: list[StageJob]) -> dict[Path, SlurmConfig]:
        """Each run folder's own section, read once per run."""
        return {d: self.run_config(j) for d, j in {Path(j.run_dir): j for j in jobs}.items()}

    # ------------------------------------------------------------------ submit
    def submit(self, jobs: list[StageJob], experiment_dir: Any, profile: PluginConfig | None) -> None:
        """Write every stage's script and submit them: arrays per stage, evals after their train."""
        self._submit(jobs, Path(experiment_dir), profile, dry=False)

    def dry_run(self, jobs: list[StageJob], experiment_dir: Any, profile: PluginConfig | None) -> None:
        """Write the scripts ``submit`` would submit, and submit nothing."""
        self._submit(jobs, Path(experiment_dir), profile, dry=True)

    def _submit(self, jobs: list[StageJob], exp_dir: Path, profile: PluginConfig | None, *, dry: bool) -> None:
        prof = profile if isinstance(profile, SlurmProfile) else SlurmProfile()
        if not dry:
            slurmcli.require("sbatch")
        python = prof.python or sys.executable
        pending = list(jobs)
        try:
            own = self._run_configs(jobs)
            if not dry:
                self._oom_adjust(jobs, own)
                self._prepare_data([j for j in jobs if own[Path(j.run_dir)].prepare_data])
            parts = self._plan(jobs, prof, python, own)
            if dry:
                self._write_arrays(parts, exp_dir, prof, dry=True)
                where = "runs/<run>/slurm/" + (", shared/<name>/slurm/" if any(
                    Path(j.run_dir).parent.name == "shared" for j in jobs) else "")
                _say(f"dry run: wrote the job scripts of {len(jobs)} stage(s) ({where}, "
                     f"{exp_dir / 'slurm'}); nothing was submitted.")
                return
            submitted = self._send(parts, exp_dir, prof, min(c.poll_seconds for c in own.values()))
            pending = [j for j in jobs if j.key not in submitted]
        except BaseException:
            for job in pending:
                entry = status.read(job.run_dir)["stages"].get(job.stage, {})
                if entry.get("state") == status.SUBMITTED and not entry.get("job_id"):
                    status.update_stage(job.run_dir, job.stage, state=status.PENDING,
                                        error="not submitted: `ck run` stopped before submitting it")
            raise

    def _oom_adjust(self, jobs: list[StageJob], own: dict[Path, SlurmConfig]) -> None:
        """A train stage SLURM stopped for memory (OUT_OF_MEMORY) restarts with half the batch."""
        from cruijff_kit_slurm.recover import halve_batch

        for job in jobs:
            entry = status.read(job.run_dir)["stages"].get(job.stage, {})
            if job.kind == "train" and entry.get("oom"):
                change = halve_batch(job.run_dir, job.stage, own[Path(job.run_dir)].oom_retries,
                                     f"out of memory ({entry.get('slurm_state') or 'log'})")
                if change:
                    _say(f"{job.run_name}: out of memory last time; batch_size {change['batch_size'][0]} -> "
                         f"{change['batch_size'][1]}, gradient_accumulation {change['gradient_accumulation'][0]}"
                         f" -> {change['gradient_accumulation'][1]}")

    def _prepare_data(self, jobs: list[StageJob]) -> None:
        """Load each distinct dataset once here, so the jobs find its caches ready."""
        from cruijff_kit import Prompt
        from cruijff_kit.engine import load_run

        seen: set[str] = set()
        for run_dir in dict.fromkeys(j.run_dir for j in jobs):
            run = load_run(run_dir)
            key = json.dumps([run.spec["dataset"], run.spec["prompt"]], sort_keys=True, default=str)
            if key in seen:
                continue
            seen.add(key)
            _say(f"preparing dataset `{run.spec['dataset'].get('plugin')}` before submitting")
            run.dataset().load(Prompt.model_validate(run.spec["prompt"]))

    # ------------------------------------------------------------------ planning

    def _plan(self, jobs: list[StageJob], prof: SlurmProfile, python: str,
              own: dict[Path, SlurmConfig]) -> list[_Part]:
        """Write each job's script; group tasks into parts (arrays) honouring dependencies and the cap.

        With ``group_evals`` (each run's own section), the evaluations of one run folder that ask the
        same resources and wait for the same job become one task (one job runs them in turn)."""
        index = {d: i for i, d in enumerate(dict.fromkeys(j.run_dir for j in jobs))}
        keys = {(j.run_dir, j.stage) for j in jobs}
        tasks: list[_Task] = []
        for job in jobs:
            cfg = own[Path(job.run_dir)]
            res = job.resources  # the planner applied eval_resources (SchedulerConfig.stage_resources)
            task = _Task(job, index[job.run_dir], res, job.run_dir / "slurm" / f"{job.stage}.sbatch", cfg)
            target = _stage_target(job.stage)
            if target and target.startswith("epoch_") and (job.run_dir, "train") not in keys:
                train = status.read(job.run_dir)["stages"].get("train", {})
                if train.get("state") in status.ACTIVE_STATES and train.get("job_id") and \
                        train.get("scheduler") == NAME:
                    task.after_id = slurmcli.job_of(str(train["job_id"]))
                elif train.get("state") != status.DONE:
                    self._write_task(task, prof, python)
                    status.update_stage(job.run_dir, job.stage, state=status.PENDING,
                                        error=f"not run: its train stage is {train.get('state', 'pending')}; "
                                        "`ck run --retry-failed` runs both")
                    continue
            tasks.append(task)
        cap = prof.max_queued or 0
        size = min(cap, 10**9) if cap else 10**9
        parts: list[_Part] = []
        train_part: dict[Path, _Part] = {}
        # trains first; then evals grouped by stage (or group), resources and the train part they wait for
        for is_train in (True, False):
            chosen = [t for t in tasks if (t.job.kind == "train") == is_train]
            if not is_train:
                for t in chosen:
                    if (t.job.run_dir, "train") in keys and "train" in t.job.depends_on:
                        t.after = train_part.get(t.job.run_dir)
                chosen = self._group(chosen)
            groups: dict[tuple[str, str, int], list[_Task]] = {}
            for t in chosen:
                self._write_task(t, prof, python)
                dep = id(t.after) if t.after is not None else 0
                if t.after_id:
                    dep = hash(t.after_id)
                # one array per stage (or per group label), header (resources and the run's header
                # options) and dependency
                groups.setdefault((t.label, _header_key(t.resources, t.cfg), dep), []).append(t)
            for (stage, _, _), group in groups.items():
                for start in range(0, len(group), size):
                    part = _Part(stage, group[start].resources, group[start].cfg, group[start:start + size])
                    parts.append(part)
                    if is_train:
                        for t in part.tasks:
                            train_part[t.job.run_dir] = part
        return parts

    @staticmethod
    def _group(tasks: list[_Task]) -> list[_Task]:
        """Evaluation tasks, those of one run folder whose section has ``group_evals`` merged into one
        task when they ask the same resources and header options and wait for the same job (plan order
        kept). A shared stage's folder is its own: it joins only stages of that folder."""
        out: list[_Task] = []
        lead: dict[tuple[Path, str, int, str | None], _Task] = {}
        for t in tasks:
            if t.job.kind != "eval" or not t.cfg.group_evals:
                out.append(t)
                continue
            key = (Path(t.job.run_dir), _header_key(t.resources, t.cfg), id(t.after) if t.after else 0, t.after_id)
            first = lead.get(key)
            if first is None:
                lead[key] = t
                out.append(t)
            else:
                first.more.append(t.job)
        return out

    @staticmethod
    def _write_task(task: _Task, prof: SlurmProfile, python: str) -> None:
        """Write the task's own batch script (one stage's, or a group's) and record it on its stages."""
        job = task.job
        more = tuple(j.stage for j in task.more)
        spec = StageScript(job.run_dir, job.run_name, job.experiment, job.stage, job.kind, task.resources, more)
        name = f"{job.stage}+{len(more)}.sbatch" if more else f"{job.stage}.sbatch"
        task.script = job.run_dir / "slurm" / name
        RunLayout(job.run_dir).logs_dir.mkdir(parents=True, exist_ok=True)  # sbatch opens the logs there
        write_script(task.script, stage_script(spec, task.cfg, prof, python, task.cfg.array_parallelism))
        for j in task.jobs:
            status.update_stage(j.run_dir, j.stage, script=str(task.script))

    def _write_arrays(self, parts: list[_Part], exp_dir: Path, prof: SlurmProfile, *, dry: bool) -> None:
        for n, part in enumerate(parts):
            if len(part.tasks) > 1:
                self._array_file(part, exp_dir, prof, n)
            if dry:
                for t in part.tasks:
                    dep = None
                    if t.after is not None:
                        dep = "afterok: its train job"
                    elif t.after_id:
                        dep = f"afterok:{t.after_id}"
                    for j in t.jobs:
                        status.update_stage(j.run_dir, j.stage, dependency=dep)

    def _array_file(self, part: _Part, exp_dir: Path, prof: SlurmProfile, n: int) -> Path:
        folder = exp_dir / "slurm"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = folder / f"{stamp}-{n:03d}-{part.stage}.sbatch"
        text = array_script(part.stage, part.tasks[0].job.experiment, [(t.index, t.script) for t in part.tasks],
                            part.resources, part.cfg, prof, folder / "logs", part.cfg.array_parallelism)
        (folder / "logs").mkdir(parents=True, exist_ok=True)
        write_script(path, text)
        return path

    # ------------------------------------------------------------------ sending
    def _send(self, parts: list[_Part], exp_dir: Path, prof: SlurmProfile, poll_seconds: float) -> set[str]:
        submitted: set[str] = set()
        mine: list[str] = []
        for n, part in enumerate(parts):
            waited = self._wait_for_room(exp_dir, mine, len(part.tasks), prof.max_queued, poll_seconds)
            for sub in self._settle_dependencies(part, waited):
                self._sbatch(sub, exp_dir, prof, n)
                for t in sub.tasks:
                    t.job_id = sub.task_id(t)
                    mine.append(t.job_id)
                    together = [j.stage for j in t.jobs] if t.more else None
                    for j in t.jobs:
                        submitted.add(j.key)
                        status.update_stage(j.run_dir, j.stage, state=status.SUBMITTED, scheduler=NAME,
                                            job_id=t.stage_job_id(j), job_stages=together,
                                            slurm_array=sub.array_id if len(sub.tasks) > 1 else None,
                                            dependency=self._dependency(sub, t), slurm_state="PENDING",
                                            slurm_reason=None, error=None, usage=None, submitted=status.now())
                n_tasks = len(sub.tasks)
                what = sub.stage if sub.stage != GROUP_LABEL else \
                    f"{GROUP_LABEL} ({max(len(t.jobs) for t in sub.tasks)} evaluations per job at most)"
                _say(f"submitted {what}: " + (f"job {sub.array_id}" if n_tasks == 1 else
                                              f"array {sub.array_id} ({n_tasks} runs)"))
        return submitted

    def _dependency(self, part: _Part, task: _Task | None = None) -> str | None:
        """``--dependency`` of a part (or of one of its tasks): per-task afterok for arrays."""
        first = part.tasks[0]
        if first.after_id:
            return f"afterok:{first.after_id}"
        if first.after is None:
            return None
        train = first.after
        assert train.array_id is not None
        if len(part.tasks) > 1 and len(train.tasks) > 1:
            return f"aftercorr:{train.array_id}"  # task i after task i of the train array (afterok per run)
        t = task or first
        match = next(x for x in train.tasks if x.job.run_dir == t.job.run_dir)
        return f"afterok:{train.task_id(match)}"

    def _settle_dependencies(self, part: _Part, waited: bool) -> list[_Part]:
        """Parts to submit: when we waited, a train may have ended; drop or skip its evals accordingly."""
        deps = {t.after.array_id if t.after is not None else t.after_id for t in part.tasks} - {None}
        if not waited or not deps:
            return [part]
        queued = slurmcli.squeue([str(d) for d in deps])
        if any(slurmcli.base_id(j) in {slurmcli.base_id(str(d)) for d in deps} for j in queued):
            return [part]
        ready: list[_Task] = []
        for t in part.tasks:
            train = status.stage_state(t.job.run_dir, "train")
            if train == status.DONE:
                t.after, t.after_id = None, None
                ready.append(t)
            else:
                for j in t.jobs:
                    status.update_stage(j.run_dir, j.stage, state=status.PENDING,
                                        error=f"not run: its train stage is {train}")
        return [_Part(part.stage, part.resources, part.cfg, ready)] if ready else []

    def _sbatch(self, part: _Part, exp_dir: Path, prof: SlurmProfile, n: int) -> None:
        dep = self._dependency(part)
        extra = [f"--dependency={dep}"] if dep else []
        if len(part.tasks) == 1:
            script = part.tasks[0].script
        else:
            script = self._array_file(part, exp_dir, prof, n)
            for t in part.tasks:
                for j in t.jobs:
                    status.update_stage(j.run_dir, j.stage, array_script=str(script))
        part.array_id = slurmcli.sbatch(str(script), extra)

    def _wait_for_room(self, exp_dir: Path, mine: list[str], n: int, cap: int | None, poll_seconds: float) -> bool:
        """Back-pressure: wait until this experiment's queued jobs plus ``n`` fit under ``cap``."""
        if not cap:
            return False
        waited = False
        said = False
        while True:
            ids = sorted(set(mine) | set(self._experiment_job_ids(exp_dir)))
            queued = len(slurmcli.squeue(ids)) if ids else 0
            if queued == 0 or queued + n <= cap:
                return waited
            if not said:
                _say(f"{queued} job(s) of this experiment queued (max_queued {cap}); waiting for room "
                     f"for {n} more")
                said = True
            waited = True
            time.sleep(poll_seconds)

    @staticmethod
    def _experiment_job_ids(exp_dir: Path) -> list[str]:
        """Ids of this experiment's SLURM jobs still active: every run's, and every shared stage's."""
        exp = ExperimentLayout(exp_dir)
        shared = sorted(p for p in exp.shared_dir.glob("*/status.json")) if exp.shared_dir.is_dir() else []
        ids: dict[str, None] = {}
        for layout in [*exp.run_layouts(), *(RunLayout(p.parent) for p in shared)]:
            for entry in status.read(layout.root)["stages"].values():
                if entry.get("scheduler") == NAME and entry.get("job_id") and \
                        entry.get("state") in status.ACTIVE_STATES:
                    ids[slurmcli.job_of(str(entry["job_id"]))] = None  # a job of several stages once
        return list(ids)

    # ------------------------------------------------------------------ reading back
    def wants_refresh(self, entry: dict[str, Any]) -> bool:
        """Active and requeued stages, and finished ones whose usage is not recorded yet."""
        if not entry.get("job_id"):
            return False
        state = entry.get("state")
        if state in status.ACTIVE_STATES or state == status.INTERRUPTED:
            return True
        return state in (status.DONE, status.FAILED, status.CANCELLED) and not entry.get("usage")

    def refresh(self, jobs: list[StageJob]) -> dict[str, str]:
        """One squeue and one sacct call for every job of ``jobs``; fixes status entries SLURM ended.

        Each run's ``status.json`` is read once before asking SLURM, and changed with one locked write
        per run after (every stage of the run at once; the files of many runs synced to disk together,
        see :func:`cruijff_kit.status.update_runs`). An entry is reconciled as read under that lock:
        a stage that ended before SLURM said so has recorded its end by then."""
        asked: dict[Path, dict[str, tuple[StageJob, str]]] = {}  # run folder -> stage -> (job, its job id)
        read: dict[Path, dict[str, Any]] = {}
        for job in jobs:
            run_dir = Path(job.run_dir)
            if run_dir not in read:
                read[run_dir] = status.read(run_dir)["stages"]
            entry = read[run_dir].get(job.stage, {})
            if entry.get("scheduler") == NAME and entry.get("job_id"):
                asked.setdefault(run_dir, {})[job.stage] = (job, str(entry["job_id"]))
        # a job that runs several stages is asked about once; each stage is reconciled on its own
        ids = list(dict.fromkeys(slurmcli.job_of(jid) for stages in asked.values() for _, jid in stages.values()))
        if not ids:
            return {}
        infos = slurmcli.query(ids)
        out: dict[str, str] = {}

        def change(run_dir: Path, stages: dict[str, dict[str, Any]], files: dict[Path, Any]) -> dict[str, Any]:
            changes: dict[str, Any] = {}
            for stage, (job, jid) in asked[run_dir].items():
                entry = stages.get(stage, {})
                info = infos.get(slurmcli.job_of(jid))
                if info is not None and str(entry.get("job_id")) == jid:  # still the job SLURM was asked about
                    out[jid], fields = self._reconcile(job, entry, info, files)
                    if fields:
                        changes[stage] = fields
            return changes

        status.update_runs([d for d, stages in asked.items()
                            if any(slurmcli.job_of(jid) in infos for _, jid in stages.values())], change)
        return out

    def _reconcile(self, job: StageJob, entry: dict[str, Any], info: slurmcli.JobInfo,
                   files: dict[Path, Any]) -> tuple[str, dict[str, Any]]:
        """What brings a stage's status entry in line with what SLURM says: the stage state and the
        fields to change (a finished job's full sacct record is added to ``files``)."""
        mapped = slurmcli.stage_state(info, has_dependency=bool(entry.get("dependency")))
        cur = entry.get("state", status.PENDING)
        reason = info.reason if info.reason not in ("", "None") else None
        fields: dict[str, Any] = {}
        if info.state != entry.get("slurm_state"):
            fields["slurm_state"] = info.state
        if mapped == status.DONE:
            reason = None  # the last reason it waited for (e.g. Dependency) no longer matters
        if reason != entry.get("slurm_reason"):
            fields["slurm_reason"] = reason
        state = cur
        if mapped in status.ACTIVE_STATES:
            if cur == status.INTERRUPTED and info.state in slurmcli.QUEUED:  # requeued after the warning
                state = status.SUBMITTED
                fields.update(state=state, error=None)
            elif cur in status.ACTIVE_STATES and not (entry.get("job_stages") and cur == status.SUBMITTED
                                                      and mapped == status.RUNNING):
                state = mapped  # (a stage of a running job of several waits its turn: it says when it starts)
        else:
            finished = info.usage.get("End") not in (None, "", "Unknown")
            if mapped == status.DONE:
                if cur in status.ACTIVE_STATES:
                    state = status.FAILED
                    fields.update(state=state, error=f"SLURM job {info.job_id} ended without the stage "
                                  "recording its end", error_tail=self._log_tail(job, entry))
            elif mapped == status.FAILED:
                if cur != status.DONE:
                    state = status.FAILED
                    if cur != status.FAILED or not entry.get("error"):
                        fields["error"] = self._failure_message(info, reason)
                    fields.update(state=state, exit_code=self._exit_code(info, entry))
                    if not entry.get("error_tail"):
                        fields["error_tail"] = self._log_tail(job, entry)
                    if cur in status.ACTIVE_STATES or cur == status.INTERRUPTED:
                        fields["ended"] = info.usage.get("End") if finished else status.now()
                    if info.state == "OUT_OF_MEMORY" and job.stage == "train":
                        fields["oom"] = True
            elif mapped == status.CANCELLED:
                if cur not in (status.DONE, status.FAILED):
                    state = status.CANCELLED
                    fields["state"] = state
            elif mapped == status.PENDING:  # removed because the train it waited for failed
                if cur in status.ACTIVE_STATES:
                    state = status.PENDING
                    fields.update(state=state, job_id=None, last_job_id=info.job_id,
                                  error="not run: the train stage it waits for did not finish",
                                  usage=self._record_usage(job, info, files))  # no later refresh: no job id
            elif mapped == status.INTERRUPTED and cur in status.ACTIVE_STATES:
                state = status.INTERRUPTED
                fields.update(state=state, error=f"SLURM job {info.job_id} was preempted; `ck run` resumes it")
            if finished and not entry.get("usage") and "usage" not in fields:
                fields["usage"] = self._record_usage(job, info, files)
        return state, fields

    @staticmethod
    def _exit_code(info: slurmcli.JobInfo, entry: dict[str, Any]) -> int | None:
        if entry.get("exit_code") not in (None, 0):
            return int(entry["exit_code"])
        code = info.exit_code.split(":", 1)[0] if info.exit_code else ""
        return int(code) if code.isdigit() else None

    @staticmethod
    def _failure_message(info: slurmcli.JobInfo, reason: str | None) -> str:
        text = f"SLURM job {info.job_id} ended {info.state}"
        if reason:
            text += f" (reason: {reason})"
        if info.exit_code:
            text += f", exit code {info.exit_code}"
        if info.state == "TIMEOUT":
            text += "; it reached its time limit. `ck run --retry-failed` resumes it from its saved state, " \
                    "or raise scheduler.resources.time"
        elif info.state == "OUT_OF_MEMORY":
            text += "; `ck run --retry-failed` retries a train stage with half the batch size, or raise " \
                    "scheduler.resources.memory"
        elif info.state == "NODE_FAIL":
            text += "; the node failed. `ck run --retry-failed` submits it again"
        return text + "."

    @staticmethod
    def _log_tail(job: StageJob, entry: dict[str, Any] | None = None, lines: int = 20) -> str:
        """The end of the stage's logs; for a stage of a job of several that never started, of the
        job's first stage (where the job wrote)."""
        layout = RunLayout(job.run_dir)
        stages = [job.stage, *((entry or {}).get("job_stages") or [])[:1]]
        for stage in dict.fromkeys(stages):
            text = status.tail(layout.log(stage, "err"), lines) or status.tail(layout.log(stage, "out"), lines)
            if text:
                return text
        return ""

    @staticmethod
    def _record_usage(job: StageJob, info: slurmcli.JobInfo, files: dict[Path, Any]) -> dict[str, Any]:
        """sacct's usage of a finished job: for the status entry (returned), and in full for
        ``slurm/<stage>.sacct.json`` (added to ``files``, written with the status entry)."""
        usage: dict[str, Any] = {"job_id": info.job_id, "state": info.state, "exit_code": info.exit_code,
                                 **{k.lower(): v for k, v in info.usage.items()}}
        files[Path(job.run_dir) / "slurm" / f"{job.stage}.sacct.json"] = {"job": usage, "steps": info.steps}
        return usage

    # ------------------------------------------------------------------ cancel
    def _cancel_wait(self, job: StageJob) -> float:
        """The job's own run's ``cancel_wait_seconds``; this object's when its spec cannot be read
        (``ck cancel`` still cancels a run whose spec.yaml is damaged)."""
        try:
            return self.run_config(job).cancel_wait_seconds
        except CkError:
            return self.cfg.cancel_wait_seconds

    def cancel(self, jobs: list[StageJob]) -> None:
        """``scancel`` the jobs of the given stages (a job of several stages once), then wait (briefly)
        until they left the queue."""
        found: dict[str, None] = {}
        waits: dict[Path, float] = {}
        for job in jobs:
            entry = status.read(job.run_dir)["stages"].get(job.stage, {})
            if entry.get("scheduler") == NAME and entry.get("job_id"):
                found[slurmcli.job_of(str(entry["job_id"]))] = None
                if Path(job.run_dir) not in waits:
                    waits[Path(job.run_dir)] = self._cancel_wait(job)
        ids = list(found)
        if not ids:
            return
        slurmcli.scancel(ids)
        deadline = time.monotonic() + max(waits.values())
        while time.monotonic() < deadline and slurmcli.squeue(ids):
            time.sleep(0.5)
