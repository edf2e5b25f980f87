"""Expand a spec's sweep into runs, resolve each run, and lay out its stages.

spec file -> :class:`LoadedSpec` -> :func:`make_plan` -> :class:`Plan` of :class:`PlannedRun` s,
each with a fully resolved spec (defaults filled), a deterministic name and its stages.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cruijff_kit._api.kinds import (
    EPOCHS_WITHOUT_CONFIRMATION,
    Estimate,
    EvalConfig,
    Plugin,
    Prompt,
    SchedulerConfig,
    TrainConfig,
)
from cruijff_kit._api.records import PlannedRun, StageDef, StageJob
from cruijff_kit._api.registry import registry
from cruijff_kit._api.sections import dump_section, validate_section
from cruijff_kit._base.errors import SpecError, clip
from cruijff_kit._base.layout import ExperimentLayout
from cruijff_kit._base.naming import run_name, spec_hash
from cruijff_kit._engine.spec import (
    MAX_RUNS,
    RUNS_WITHOUT_CONFIRMATION,
    LoadedSpec,
    apply_overrides,
    split_path,
    validate_top,
)

if TYPE_CHECKING:  # pragma: no cover
    from cruijff_kit.training import TruncationCheck

FINETUNE, CONTROL, EVAL_ONLY = "finetune", "control", "eval-only"
#: Keys of the resolved spec that do not change what a run computes, so not in its name's hash.
NOT_HASHED = ("run", "scheduler", "output_dir", "description", "simulate")
#: ``train`` options that change no result (where metrics are reported, where the adapter is uploaded,
#: whether cut rows are allowed): changing one keeps the run's name, so nothing retrains.
TRAIN_NOT_HASHED = ("allow_truncation", "report_to", "trackers", "push_to_hub", "hub_private")


@dataclass
class Plan:
    """All runs of an experiment."""

    loaded: LoadedSpec
    runs: list[PlannedRun]
    #: Run name -> the count of target tokens ``max_seq_length`` cuts (runs that train), by :func:`check_truncation`.
    truncation: dict[str, TruncationCheck] = field(default_factory=dict)
    #: Things to know that are not errors (a hub model not downloaded yet), by :func:`plan_notes`.
    notes: list[str] = field(default_factory=list)
    #: Stages several runs share (same identity), each as a one-stage run in ``shared/<name>``, by :func:`share_stages`.
    shared: list[PlannedRun] = field(default_factory=list)
    #: (run name, stage name) -> the name of the shared folder that runs it for that run.
    pointers: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def layout(self) -> ExperimentLayout:
        return ExperimentLayout(self.loaded.experiment_dir)

    @property
    def experiment(self) -> str:
        return self.loaded.model.experiment

    def jobs(self) -> list[StageJob]:
        """Every stage to execute as a scheduler job: each run's own stages, and each shared stage once."""
        out = []
        for run in [*self.runs, *self.shared]:
            section = run.spec["scheduler"]
            for st in run.stages:
                if (run.name, st.name) in self.pointers:
                    continue  # executed once, in its shared folder
                out.append(StageJob(self.experiment, run.name, run.layout.root, st.name, list(st.depends_on),
                                    SchedulerConfig.stage_resources_of(section, st.kind), st.kind))
        return out

    def swept_keys(self) -> list[str]:
        """Dotted paths that vary across runs, in spec order."""
        keys: list[str] = []
        for run in self.runs:
            for k in run.sweep_values:
                if k not in keys:
                    keys.append(k)
        return keys


# --------------------------------------------------------------------------- expansion
def sweep_size(loaded: LoadedSpec) -> int:
    """How many runs the sweep expands to (the product of the axes' lengths times the variants),
    counted without expanding anything (``--set`` may still collapse some into one run)."""
    return math.prod(len(values) for values in loaded.model.sweep.values()) * max(len(loaded.model.variants), 1)


def check_sweep_size(loaded: LoadedSpec, *, allow_large_sweep: bool = False) -> int:
    """The sweep's run count; SpecError past :data:`RUNS_WITHOUT_CONFIRMATION` unless confirmed, and
    always past :data:`MAX_RUNS`. Runs before any expansion, so planning never builds more than it lists."""
    count = sweep_size(loaded)
    if count <= RUNS_WITHOUT_CONFIRMATION:
        return count
    axes = " x ".join(str(len(v)) for v in loaded.model.sweep.values()) or "1"
    shape = f"{axes}{f' x {len(loaded.model.variants)} variants' if loaded.model.variants else ''}"
    if count > MAX_RUNS:
        raise SpecError(f"the sweep expands to {count:,} runs ({shape}), more than the {MAX_RUNS:,} one plan can "
                        "hold.", file=str(loaded.file), path="sweep",
                        hint="Sweep fewer values, or split the experiment into several specs.")
    if not allow_large_sweep:
        raise SpecError(f"the sweep expands to {count:,} runs ({shape}), more than {RUNS_WITHOUT_CONFIRMATION:,}.",
                        file=str(loaded.file), path="sweep",
                        hint="If you mean it, pass --allow-large-sweep (to ck validate, plan and run); "
                             "else sweep fewer values.")
    return count


def combinations(loaded: LoadedSpec) -> Iterator[dict[str, Any]]:
    """Cartesian product of the sweep, crossed with the explicit variants (each a dotted-path dict).

    A generator: one combination at a time, so a plan holds its resolved runs and nothing more.
    """
    if loaded.model.dataset is None:  # a simulate-only spec: no runs (load_spec allows nothing else)
        return
    sweep = loaded.model.sweep
    keys = list(sweep)
    variants = loaded.model.variants or [{}]
    for values in itertools.product(*(sweep[k] for k in keys)):
        combo = dict(zip(keys, values, strict=True))
        for variant in variants:
            yield {**combo, **variant}


def check_epochs(train: TrainConfig, *, allow_many_epochs: bool, file: str) -> None:
    """SpecError when ``train.epochs`` is past :data:`EPOCHS_WITHOUT_CONFIRMATION` and not confirmed."""
    if train.epochs > EPOCHS_WITHOUT_CONFIRMATION and not allow_many_epochs:
        raise SpecError(f"{train.epochs:,} epochs is more than {EPOCHS_WITHOUT_CONFIRMATION:,}.", file=file,
                        path="train.epochs",
                        hint="If you mean it, pass --allow-many-epochs (to ck validate, plan and run); else "
                             "lower train.epochs (train.max_steps stops by steps instead).")


def _cached_hub_model(model: dict[str, Any], base_dir: Path | None = None) -> str | None:
    """The cached snapshot of a model named by hub id (reads the cache layout only), else None."""
    from cruijff_kit._engine.hubcache import find_cached, looks_like_hub_id, models_cache

    if not looks_like_hub_id(str(model["path"])):
        return None
    snap = find_cached(str(model["path"]), models_cache(base_dir), model.get("revision"))
    return str(snap) if snap is not None else None


#: A name the hub may hold: ``org/name``, or a bare ``name`` (the hub's oldest models, e.g. ``gpt2``).
_HUB_NAME = re.compile(r"^[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9])?$")


def could_be_hub_id(path: str) -> bool:
    """True when ``path`` may name a hub model (``org/name`` or a bare ``name``, without ``--`` or ``..``);
    False for what can only be a local path (``./x``, ``../x``, ``/x``, ``~/x``, ``a/b/c``)."""
    from cruijff_kit._engine.hubcache import looks_like_hub_id

    parts = path.split("/")
    if "--" in path or ".." in path or not 1 <= len(parts) <= 2:
        return False
    return (len(parts) == 1 or looks_like_hub_id(path)) and all(_HUB_NAME.match(p) for p in parts)


def _resolve_model(model: dict[str, Any], base_dir: Path, file: str) -> dict[str, Any]:
    """``model`` with ``local_path`` (the folder, or the cached snapshot of a hub id, or None when the hub
    id is not downloaded yet) and ``adapter`` made absolute. SpecError, naming the field, for a local
    path or an adapter folder that does not exist."""
    out = dict(model)
    local = (base_dir / Path(model["path"]).expanduser())
    out["local_path"] = str(local.resolve()) if local.exists() else _cached_hub_model(model, base_dir)
    if out["local_path"] is None and not could_be_hub_id(str(model["path"])):
        raise SpecError(f"the model folder {local.resolve()} does not exist, and `{clip(model['path'], 200)}` "
                        "cannot be a hub id (hub ids look like org/name).", file=file, path="model.path",
                        hint="Fix the path (a relative path is relative to the spec's folder), or name a hub "
                             "model as org/name (`ck models download org/name` fetches one).")
    if model.get("adapter"):
        adapter = (base_dir / Path(model["adapter"]).expanduser()).resolve()
        if not adapter.is_dir():
            what = "is a file, not a folder" if adapter.exists() else "does not exist"
            raise SpecError(f"the adapter folder {adapter} {what}.", file=file, path="model.adapter",
                            hint="Give the folder a trainer wrote (train/epoch_<N>/adapter of a run; a "
                                 "relative path is relative to the spec's folder).")
        out["adapter"] = str(adapter)
    return out


def plan_notes(plan: Plan) -> list[str]:
    """One note per model named by hub id that is neither a local folder nor in the hub cache: valid,
    and downloaded by the first stage that loads it (where the machine may reach the hub)."""
    notes: dict[str, None] = {}
    for run in plan.runs:
        model = run.spec["model"]
        if model.get("local_path") is None:
            rev = f" --revision {model['revision']}" if model.get("revision") else ""
            notes[f"model.path `{model['path']}` is not a folder here and not in the hub cache; the first stage "
                  f"that loads it downloads it from the hub (`ck models download {model['path']}{rev}` fetches "
                  "it now, for machines that cannot reach the hub)."] = None
    return list(notes)


def _eval_targets(i: int, cfg: EvalConfig, run_type: str, train: TrainConfig | None, file: str,
                  ) -> list[str]:
    where = f"eval[{i}].checkpoints"
    if run_type == CONTROL:
        return ["base"]
    if run_type == EVAL_ONLY:
        return ["adapter"] + (["base"] if cfg.include_base else [])
    assert train is not None
    saved = train.saved_epochs()
    ck = cfg.checkpoints
    if ck == "none":
        epochs: list[int] = []
    elif ck == "last":
        epochs = [saved[-1]]
    elif ck == "all":
        epochs = saved
    else:
        missing = [e for e in ck if e not in saved]
        if missing:
            raise SpecError(
                f"checkpoint(s) {missing} are never saved: train.save_epochs keeps epochs {saved} "
                f"(0-based, train.epochs = {train.epochs}).", file=file, path=where,
                hint="Evaluate saved epochs only, or set train.save_epochs to include them.")
        epochs = sorted(set(ck))
    targets = (["base"] if cfg.include_base else []) + [f"epoch_{e}" for e in epochs]
    if not targets:
        raise SpecError("selects nothing to evaluate (no checkpoints and include_base is false).",
                        file=file, path=where, hint="Set checkpoints: last or include_base: true.")
    return targets


def resolve_run(loaded: LoadedSpec, combo: dict[str, Any], layout: ExperimentLayout,
                cache: dict[str, Any] | None = None, *, allow_many_epochs: bool = False) -> PlannedRun:
    """Resolve one combination of sweep values into a planned run."""
    cache = {} if cache is None else cache
    try:
        return _resolve_run(loaded, combo, layout, cache, allow_many_epochs=allow_many_epochs)
    except SpecError as exc:
        raise attributed(exc, loaded, combo) from None


def value_origins(loaded: LoadedSpec, combo: dict[str, Any]) -> dict[tuple[str | int, ...], str]:
    """Where each value that did not come from the spec's body came from: the sweep, a variant or
    ``--set`` (which wins over both), keyed by its path as a tuple."""
    variant_keys = {k for v in loaded.model.variants or [] for k in v}
    origins: dict[tuple[str | int, ...], str] = {}
    for key in combo:
        origins[tuple(split_path(key))] = "a variant" if key in variant_keys else "the sweep"
    for key in loaded.overrides:
        origins[tuple(split_path(key))] = "--set"
    return origins


def attributed(exc: SpecError, loaded: LoadedSpec, combo: dict[str, Any]) -> SpecError:
    """``exc`` with ``(set by the sweep)`` (or a variant, or ``--set``) added when, and only when, that
    origin set the value at the error's path or a mapping holding it."""
    if not exc.path:
        return exc
    where = tuple(split_path(exc.path))
    setters = [(key, who) for key, who in value_origins(loaded, combo).items() if where[:len(key)] == key]
    if not setters:
        return exc
    key, who = max(setters, key=lambda item: len(item[0]))
    shown = ".".join(str(k) for k in key)
    return SpecError(f"{exc.problem} (`{shown}` set by {who})", file=exc.file, path=exc.path, hint=exc.hint)


def _resolve_run(loaded: LoadedSpec, combo: dict[str, Any], layout: ExperimentLayout, cache: dict[str, Any],
                 *, allow_many_epochs: bool) -> PlannedRun:
    file = str(loaded.file)
    base = {k: v for k, v in loaded.raw.items() if k not in ("sweep", "variants")}
    data = apply_overrides(base, combo, "set by the sweep", file)
    data = apply_overrides(data, loaded.overrides, "--set", file)  # the command line always wins
    top = validate_top(data, file)
    base_dir = loaded.spec_dir

    def section(kind: str, sec: dict[str, Any], path: str):
        key = kind + json.dumps(sec, sort_keys=True, default=str)
        if key not in cache:
            cache[key] = validate_section(kind, sec, path=path, file=file)
        return cache[key]

    if top.dataset is None:  # a variant cannot remove it; load_spec refused a spec without one
        raise SpecError("required key `dataset` is missing.", file=file, path="dataset")
    _, ds_cfg = section("dataset", top.dataset.model_dump(), "dataset")
    resolved: dict[str, Any] = {
        "experiment": top.experiment,
        "seed": top.seed,
        "model": top.model.model_dump(),
        "prompt": top.prompt.model_dump(),
        "dataset": dump_section(top.dataset.plugin, ds_cfg),
        "train": None,
        "eval": [],
    }
    train_cfg: TrainConfig | None = None
    if top.train is not None:
        _, train_cfg = section("trainer", top.train.model_dump(), "train")
        check_epochs(train_cfg, allow_many_epochs=allow_many_epochs, file=file)
        resolved["train"] = dump_section(top.train.plugin, train_cfg)
    run_type = FINETUNE if top.train is not None else (EVAL_ONLY if top.model.adapter else CONTROL)
    if run_type == EVAL_ONLY and top.train is not None:
        raise SpecError("a run cannot both train and evaluate an existing adapter.", file=file,
                        path="model.adapter", hint="Remove model.adapter, or remove the train section.")

    stages: list[StageDef] = [StageDef("train", "train")] if run_type == FINETUNE else []
    labels: set[str] = set()
    for i, ev in enumerate(top.eval):
        _, ev_cfg = section("evaluator", ev.model_dump(), f"eval[{i}]")
        assert isinstance(ev_cfg, EvalConfig)
        label = ev_cfg.label
        if label in labels:
            raise SpecError(f"two evaluations are named `{label}`.", file=file, path=f"eval[{i}]",
                            hint="Give each a distinct `name:`.")
        labels.add(label)
        dumped = dump_section(ev.plugin, ev_cfg)
        prompt = {**top.prompt.model_dump(), **(ev_cfg.prompt.model_dump(exclude_unset=True) if ev_cfg.prompt else {})}
        dumped["prompt"] = Prompt.model_validate(prompt).model_dump()
        resolved["eval"].append(dumped)
        for target in _eval_targets(i, ev_cfg, run_type, train_cfg, file):
            deps = ["train"] if target.startswith("epoch_") else []
            stages.append(StageDef(f"eval.{label}.{target}", "eval", deps, i, label, target))
    if not stages:
        raise SpecError("this run has nothing to do: no train section and no eval entries.", file=file,
                        hint="Add a `train:` section, or an `eval:` list to evaluate the base model.")

    _, sched_cfg = section("scheduler", top.scheduler.model_dump(), "scheduler")
    resolved["scheduler"] = dump_section(top.scheduler.plugin, sched_cfg)
    hashed = {k: v for k, v in resolved.items() if k not in NOT_HASHED}
    if resolved["train"] is not None:
        hashed["train"] = {k: v for k, v in resolved["train"].items() if k not in TRAIN_NOT_HASHED}
    name = run_name(hashed)
    resolved["model"] = _resolve_model(resolved["model"], base_dir, file)
    for key, owner in registry().spec_sections.items():  # not hashed (e.g. a simulation's output path)
        if getattr(top, key, None) is not None:
            resolved[key] = owner.resolve(getattr(top, key), loaded)
    resolved["run"] = {
        "name": name,
        "type": run_type,
        "sweep": combo,
        "spec_hash": spec_hash(hashed),
        "spec_file": file,
        "spec_dir": str(base_dir),
        "experiment_dir": str(layout.root),
        "stages": [s.name for s in stages],
    }
    return PlannedRun(name, run_type, resolved, dict(combo), stages, layout.run(name), base_dir)


def make_plan(loaded: LoadedSpec, *, estimate: bool = False, check: bool = True, allow_large_sweep: bool = False,
              allow_many_epochs: bool = False) -> Plan:
    """Expand and resolve every run; optionally run plugins' plan-time checks and estimates.

    The sweep's size is checked first, from the axes' lengths (:func:`check_sweep_size`), and each
    run's epochs as it is resolved: past the limits without ``allow_large_sweep`` or
    ``allow_many_epochs`` (the ``ck`` flags of the same names) it raises SpecError before any work.
    """
    check_sweep_size(loaded, allow_large_sweep=allow_large_sweep)
    layout = ExperimentLayout(loaded.experiment_dir)
    cache: dict[str, Any] = {}
    runs: dict[str, PlannedRun] = {}
    collapsed: list[tuple[PlannedRun, PlannedRun]] = []
    for combo in combinations(loaded):
        run = resolve_run(loaded, combo, layout, cache, allow_many_epochs=allow_many_epochs)
        if run.name in runs:  # --set may collapse sweep points into one run; nothing else may
            collapsed.append((runs[run.name], run))
            continue
        runs[run.name] = run
    section_notes = check_sections(loaded) if check else []  # a section's own rule says it best
    for first, again in collapsed:
        check_collapse(loaded, first, again)
    plan = Plan(loaded, list(runs.values()))
    share_stages(plan)
    plan.notes = list(dict.fromkeys([*plan_notes(plan), *section_notes]))
    if check:
        check_plan(plan)
        check_truncation(plan)
    if estimate:
        estimate_plan(plan)
    return plan


def check_collapse(loaded: LoadedSpec, first: PlannedRun, again: PlannedRun) -> None:
    """SpecError when two sweep points make the same run (same name) but their resolved specs differ:
    they differ only in what a run's name does not hash (``NOT_HASHED``: the scheduler, ``output_dir``,
    ``description``, ``simulate``; ``TRAIN_NOT_HASHED``: ``train.allow_truncation``, the trackers, the hub
    upload), so one would be dropped without a word.
    Points that ``--set`` made equal are one run, as asked."""
    def body(run: PlannedRun) -> dict[str, Any]:
        return {k: v for k, v in run.spec.items() if k != "run"}

    if body(first) == body(again):
        return
    overridden = {tuple(split_path(k)) for k in loaded.overrides}
    keys = [k for k in dict.fromkeys([*first.sweep_values, *again.sweep_values])
            if first.sweep_values.get(k) != again.sweep_values.get(k)
            and not any(tuple(split_path(k))[:len(o)] == o for o in overridden)]
    shown = ", ".join(f"`{k}`" for k in keys) or "settings a run's name does not hash"
    points = "; ".join(f"{{{', '.join(f'{k}: {run.sweep_values.get(k)!r}' for k in keys)}}}" for run in (first, again))
    raise SpecError(f"two sweep points ({points}) make the same run {first.name}: they differ only in {shown}, which "
                    "changes where or how a run is scheduled (or what ck simulate does), not what it computes. A run's "
                    "name hashes its resolved spec without " + ", ".join(
                        [f"`{k}`" for k in NOT_HASHED[1:]] + [f"`train.{k}`" for k in TRAIN_NOT_HASHED]) +
                    ", so one of them would be dropped.", file=str(loaded.file), path="sweep",
                    hint="Sweep settings that change the result. To compare scheduler settings, run the spec once per "
                         "setting with --set and a different `experiment:` name.")


def share_stages(plan: Plan) -> None:
    """Give each stage that several runs would compute identically (equal ``Evaluator.identity``, typically
    the base-model eval of every run of a sweep) one shared folder, ``shared/<task>-<target>-<hash8>``:
    a one-stage run whose spec is the first user's, with ``run.shared`` naming every run it serves."""
    groups: dict[str, list[tuple[PlannedRun, StageDef]]] = {}
    for run in plan.runs:
        for st in run.stages:
            if st.kind != "eval" or st.eval_index is None:
                continue
            ident = run.evaluator(st.eval_index).identity(run, st)
            if ident is not None:
                groups.setdefault(spec_hash(ident), []).append((run, st))
    for digest, users in groups.items():
        if len(users) < 2:
            continue
        first, st = users[0]
        name = f"{st.task}-{st.target}-{digest[:8]}"
        spec = copy.deepcopy(first.spec)
        spec["run"] = {**spec["run"], "name": name, "sweep": {}, "stages": [st.name], "spec_hash": digest,
                       "shared": {"identity": digest, "stage": st.name, "used_by": [r.name for r, _ in users]}}
        stage = StageDef(st.name, "eval", [], st.eval_index, st.task, st.target)
        plan.shared.append(PlannedRun(name, first.type, spec, {}, [stage], plan.layout.shared(name), first.base_dir))
        for run, s in users:
            plan.pointers[(run.name, s.name)] = name


def _plugin_key(section: dict[str, Any] | None, extra: Any = None) -> str:
    return json.dumps([section, extra], sort_keys=True, default=str)


def check_sections(loaded: LoadedSpec) -> list[str]:
    """Each spec section owner's plan-time ``check`` (e.g. the ``simulate`` section's); the notes they return."""
    notes: list[str] = []
    for key, owner in registry().spec_sections.items():
        if getattr(loaded.model, key, None) is not None:
            notes += owner.check(loaded) or []
    return notes


def check_plan(plan: Plan) -> None:
    """Run each distinct plugin configuration's plan-time ``check`` once (errors name the spec); the spec
    sections' own checks (:func:`check_sections`) ran before, in :func:`make_plan`."""
    seen: set[str] = set()
    schedulers = list(dict.fromkeys(str(r.spec["scheduler"].get("plugin")) for r in plan.runs))
    if len(schedulers) > 1:
        raise SpecError(f"the runs of this experiment name {len(schedulers)} schedulers ({', '.join(schedulers)}); "
                        "one `ck run` hands every stage to one scheduler.", file=str(plan.loaded.file),
                        path="scheduler.plugin", hint="Give every run the same scheduler.plugin, or run the spec "
                                                      "once per scheduler with --set scheduler.plugin=NAME.")
    for run in plan.runs:
        objs: list[tuple[str, Plugin]] = [("dataset", run.dataset()), ("scheduler", run.scheduler())]
        tr = run.trainer()
        if tr is not None:
            objs.append(("train", tr))
        objs += [(f"eval[{i}]", run.evaluator(i)) for i in range(len(run.spec["eval"]))]
        for where, obj in objs:
            # what a check may look at: its own config and the rest of the resolved run
            key = _plugin_key({"w": where, "c": obj.config.model_dump(mode="json")},
                              {k: v for k, v in run.spec.items() if k not in ("run", "scheduler")})
            if key in seen:
                continue
            seen.add(key)
            try:
                for note in obj.check(run) or []:
                    if note not in plan.notes:
                        plan.notes.append(note)
            except SpecError:
                raise
            except Exception as exc:
                from cruijff_kit._base.errors import CkError

                if isinstance(exc, CkError):  # named by the plugin's option, when the check says which
                    option = getattr(exc, "option", None)
                    raise SpecError(str(exc), file=str(plan.loaded.file),
                                    path=f"{where}.{option}" if option else where) from None
                raise


#: Shared train options that change neither how a trainer tokenizes rows nor where it cuts them.
NOT_TOKENIZING = ("method", "epochs", "learning_rate", "lr_scheduler", "warmup_ratio", "weight_decay", "batch_size",
                  "gradient_accumulation", "lora", "save_epochs", "eval_steps", "precision", "gradient_checkpointing",
                  "max_steps", "keep_state", "allow_truncation")


def check_truncation(plan: Plan) -> None:
    """Count, for each run that trains, the target tokens ``train.max_seq_length`` cuts, tokenized by the
    run's trainer (once per distinct model, data, prompt and train section), into ``plan.truncation``.

    Cut rows raise DataError (file, split, rows, tokens lost, the fix) unless ``train.allow_truncation``
    or the dataset's own option allows them.
    """
    from cruijff_kit.training import plan_truncation
    from cruijff_kit.training._truncation import truncation_allowed

    memo: dict[str, TruncationCheck] = {}
    for run in plan.runs:
        tr = run.trainer()
        if tr is None:
            continue
        # options that change how rows are tokenized or cut (a sweep of learning rates counts once)
        train = {k: v for k, v in run.spec["train"].items() if k not in NOT_TOKENIZING}
        key = _plugin_key(train, [run.spec["model"], run.spec["dataset"], run.spec["prompt"]])
        if key not in memo:
            memo[key] = plan_truncation(run, tr)
        plan.truncation[run.name] = memo[key]
        if memo[key].cut and not truncation_allowed(run, tr):
            raise memo[key].error()


def estimate_plan(plan: Plan) -> None:
    """Ask each run's trainer for its estimate, once per distinct (model, data, train) combination."""
    memo: dict[str, Estimate] = {}
    for run in plan.runs:
        tr = run.trainer()
        if tr is None:
            continue
        key = _plugin_key(run.spec["train"], [run.spec["model"], run.spec["dataset"], run.spec["prompt"]])
        if key not in memo:
            memo[key] = tr.estimate(run)
        run.estimate = memo[key]
    for run in plan.runs:
        run.plan_columns = dict(run.scheduler().plan_columns(run) or {})


def copy_spec(run: PlannedRun) -> dict[str, Any]:
    """A deep copy of a run's resolved spec."""
    return copy.deepcopy(run.spec)
