"""The multi-turn ``collab`` task: each target in simulated collaboration with a user simulator.

Per held-out task, one conversation: the simulated user (any simulator plugin) opens, the model under
evaluation answers (generated through the eval's model, so a local model answers every open
conversation in one batch), until the user ends the chat with the termination marker or the model
has had ``max_turns`` turns, as in ``ck simulate``. The finished conversation is scored with the
``metrics`` (the :class:`cruijff_kit.collab.Metric` code ``ck simulate`` scores with) and their
combined ``reward``; the sample's messages are the whole conversation, so ``inspect view`` shows it.

Reproducible and resumable: the user's seed is derived per conversation and turn from the run's
seed; its replies are cached per (user, prompt, seed) in ``<experiment>/collab/<eval>/user_replies.jsonl``,
shared by every run and target, so base and checkpoints face the same opening turn; each finished conversation and its
scores are appended to ``eval/<task>/<target>/conversations.jsonl`` as it finishes, and a restarted
stage reuses them instead of holding that conversation again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cruijff_kit import Caller, Simulator, StageError
from cruijff_kit.collab import (
    GRADER_PROMPT,
    INTERACTIVITY_PROMPT,
    JUDGE_METRICS,
    REFERENCE_METRICS,
    REWARD,
    USER_PROMPT,
    Journal,
    Metric,
    ReplyCache,
    Task,
    UserSimulator,
    build_metric,
    build_participant,
    derive_seed,
    final_answer,
    load_tasks,
    needs_model,
    prompt_text,
    score_conversation,
    user_message,
)
from cruijff_kit_inspect.config import InspectConfig

JOURNAL = "conversations.jsonl"
"""Finished conversations of one target, in its eval folder."""
REPLY_CACHE = "user_replies.jsonl"
"""The user's replies, shared by the runs and targets of one eval task (see :func:`reply_cache_path`)."""
MAX_IN_FLIGHT = 16
"""Calls to the user and judges in flight at once."""


def tasks_from_rows(rows: list[dict[str, Any]], split: str, reference_metric: str | None = None) -> list[Task]:
    """Held-out tasks from canonical ``messages`` rows: the last user turn is the task, the final
    assistant turn the reference.

    ``reference_metric`` names a configured metric that compares with the reference (e.g. ``exact_match``):
    then a row that does not end with an assistant turn is a :class:`DataError` naming the split and the row.
    """
    from cruijff_kit import DataError

    tasks = []
    for i, row in enumerate(rows):
        messages = row.get("messages") or []
        users = [m for m in messages if m.get("role") == "user"]
        if not users:
            raise DataError(f"split `{split}`, row {i} has no user turn to hold as the task of a collab "
                            "conversation. Give rows with a user turn, or set `tasks:` to a task file.")
        answer = messages[-1].get("content") if messages[-1].get("role") == "assistant" else None
        tid = str(row.get("id")) if row.get("id") not in (None, "") else f"{split}-{i:05d}"
        if answer is None and reference_metric is not None:
            raise DataError(f"split `{split}`, row {i} (id `{tid}`) does not end with an assistant turn, so it "
                            f"has no reference answer for metric `{reference_metric}` to compare with. End every "
                            "row of the split with the reference answer as an assistant turn, set `tasks:` to a "
                            "task file with an answer_field, or drop the metrics that need a reference.")
        tasks.append(Task(tid, str(users[-1].get("content", "")), None if answer is None else str(answer)))
    if len({t.id for t in tasks}) != len(tasks):
        raise DataError(f"split `{split}` repeats a row id; the collab task needs unique ids.")
    return tasks


@dataclass
class Collaboration:
    """Everything the conversations of one target share: participants, metrics, journal and cache."""

    cfg: InspectConfig
    tasks: list[Task]
    seed: int
    system: str | None
    base_dir: Path
    journal: Journal
    cache: ReplyCache | None
    user_plugin: Simulator
    judges: dict[str, Simulator] = field(default_factory=dict)
    finished: int = 0
    closed: bool = False
    _user: UserSimulator | None = None
    _metrics: list[Metric] | None = None

    def participants(self) -> list[Simulator]:
        """Every distinct simulator object (for open and close)."""
        seen: dict[int, Simulator] = {}
        for p in [self.user_plugin, *self.judges.values()]:
            seen.setdefault(id(p), p)
        return list(seen.values())

    async def one_finished(self) -> None:
        """A conversation is done; after the last one, close the participants inside the eval's loop."""
        self.finished += 1
        if self.finished >= len(self.tasks) and not self.closed:
            self.closed = True
            for p in self.participants():
                await p.aclose()

    def _setup(self) -> None:
        """Callers, the user and the metrics, made inside the eval's event loop."""
        cfg = self.cfg
        limit = asyncio.Semaphore(MAX_IN_FLIGHT)
        rng = random.Random(self.seed)
        callers: dict[int, Caller] = {}

        def caller(p: Simulator) -> Caller:
            if id(p) not in callers:
                callers[id(p)] = Caller(p, cfg.retry, limit, random.Random(rng.random()))
            return callers[id(p)]

        user_call = caller(self.user_plugin)
        label = json.dumps(cfg.user.model_dump(mode="json") if cfg.user else {}, sort_keys=True)

        async def call_user(messages: list[dict[str, str]], **generation: Any) -> str:
            key = ReplyCache.key(label, messages, generation) if self.cache is not None else ""
            if self.cache is not None:
                hit = await asyncio.to_thread(self.cache.get, key)
                if hit is not None:
                    return hit
            text = await user_call(messages, **generation)
            if self.cache is not None:
                await asyncio.to_thread(self.cache.put, key, text)
                text = await asyncio.to_thread(self.cache.get, key) or text  # the first recorded reply wins
            return text

        template = (prompt_text(cfg.user_prompt, self.base_dir, file=None, path="user_prompt")
                    if cfg.user_prompt else USER_PROMPT)
        self._user = UserSimulator(call_user, template, cfg.termination_marker, cfg.json_retries)  # type: ignore[arg-type]
        metrics = []
        for name, spec in cfg.effective_metrics().items():
            judge = self.judges.get(name)
            prompt = None
            if spec.type in JUDGE_METRICS:
                default = GRADER_PROMPT if spec.type == "grader" else INTERACTIVITY_PROMPT
                prompt = (prompt_text(spec.prompt, self.base_dir, file=None, path=f"metrics.{name}.prompt")
                          if spec.prompt else default)
            metrics.append(build_metric(name, spec, self.base_dir, preset=cfg.preset,
                                        caller=caller(judge) if judge else None, prompt=prompt,
                                        json_retries=cfg.json_retries))
        self._metrics = metrics

    async def conversation(self, task: Task, respond: Any) -> dict[str, Any]:
        """One conversation to its end, scored; ``respond(history)`` is the model's next turn."""
        if self._user is None:
            self._setup()
        assert self._user is not None and self._metrics is not None
        user, conv_id = self._user, task.id
        history: list[dict[str, Any]] = []
        turn, ended_by = 0, ""
        while True:
            reply = await user.reply(task.prompt, history, seed=derive_seed(self.seed, conv_id, "user", turn))
            history.append(user_message(reply))
            if user.ends(reply):
                ended_by = "marker"
                break
            text = await respond(history)
            history.append({"role": "assistant", "content": text, "turn_id": turn})
            turn += 1
            if turn >= self.cfg.max_turns:
                ended_by = "max_turns"
                break
        scores = await score_conversation(task, history, self._metrics)
        return {"conv_id": conv_id, "task": task.as_dict(), "system": self.system, "messages": history,
                "num_turns": turn, "ended_by": ended_by, "final_answer": final_answer(history), "scores": scores}


def fingerprint(cfg: InspectConfig, seed: int, system: str | None, target: str, adapter: str | None = None) -> str:
    """Hash of what shapes a target's conversations (the journal ignores rows of another)."""
    data = {"collab": cfg.collab_fingerprint(), "seed": seed, "system": system, "target": target, "adapter": adapter,
            "generation": cfg.generation.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _chat(system: str | None, history: list[dict[str, Any]]) -> list[Any]:
    from inspect_ai.model import ChatMessageAssistant, ChatMessageSystem, ChatMessageUser

    out: list[Any] = [ChatMessageSystem(content=system)] if system else []
    for m in history:
        cls = ChatMessageUser if m["role"] == "user" else ChatMessageAssistant
        out.append(cls(content=str(m["content"])))
    return out


def converse(collab: Collaboration) -> Any:
    """The solver: the sample's conversation (from the journal when it finished before), scored."""
    from inspect_ai.model import ModelOutput
    from inspect_ai.solver import Generate, TaskState, solver

    by_id = {t.id: t for t in collab.tasks}

    @solver(name="collab")
    def _converse() -> Any:
        async def solve(state: TaskState, generate: Generate) -> TaskState:
            task = by_id[str(state.sample_id)]
            row = collab.journal.get(task.id)
            if row is None:
                async def respond(history: list[dict[str, Any]]) -> str:
                    state.messages = _chat(collab.system, history)
                    await generate(state)
                    return state.output.completion

                row = await collab.conversation(task, respond)
                await asyncio.to_thread(collab.journal.add, row)
            state.messages = _chat(collab.system, row["messages"])
            last = next((m["content"] for m in reversed(row["messages"]) if m["role"] == "assistant"), "")
            state.output = ModelOutput.from_content(model=str(state.model), content=str(last))
            state.metadata["collab"] = {k: row[k] for k in ("num_turns", "ended_by", "final_answer", "scores")}
            await collab.one_finished()
            return state

        return solve

    return _converse()


def collab_scorer() -> Any:
    """Each conversation's reward and metric values (``reward`` first), averaged with standard errors."""
    from inspect_ai.scorer import Score, Target, mean, scorer, stderr
    from inspect_ai.solver import TaskState

    @scorer(metrics={"*": [mean(), stderr()]}, name="collab")
    def _collab() -> Any:
        async def score(state: TaskState, target: Target) -> Score:
            info = state.metadata["collab"]
            scores = dict(info["scores"])
            values = {REWARD: scores.pop(REWARD), **scores}
            return Score(value=values, answer=str(info["final_answer"]),
                         metadata={"num_turns": info["num_turns"], "ended_by": info["ended_by"]})

        return score

    return _collab()


def collab_task(collab: Collaboration, name: str) -> Any:
    """The inspect Task: one sample per held-out task, the conversation solver and the collab scorer."""
    from inspect_ai import Task as InspectTask
    from inspect_ai.dataset import Sample

    samples = [Sample(input=t.prompt, target=t.answer or "", id=t.id, metadata={"task_id": t.id})
               for t in collab.tasks]
    return InspectTask(dataset=samples, solver=[converse(collab)], scorer=collab_scorer(), name=name)


# --------------------------------------------------------------------------- plan time and stage set-up
def _judges(cfg: InspectConfig, base_dir: Path) -> dict[str, Simulator]:
    """The model of each metric that calls one (a judge, or the extraction model of bleu and of pass_rate
    under preset collabllm): its own ``model``, else the section's ``judge``."""
    shared = build_participant(cfg.judge, file=None, path="judge", base_dir=base_dir) if cfg.judge is not None else None
    out: dict[str, Simulator] = {}
    for name, spec in cfg.effective_metrics().items():
        if needs_model(spec, cfg.preset):
            model = (build_participant(spec.model, file=None, path=f"metrics.{name}.model", base_dir=base_dir) if spec.model is not None
                     else shared)
            if model is not None:
                out[name] = model
    return out


def check_collab(cfg: InspectConfig, base_dir: Path, splits: list[str] | None) -> None:
    """Plan time: the task source exists and reads, and every participant's options validate."""
    from cruijff_kit import CkError, SpecError

    if cfg.tasks is not None:
        path = (base_dir / Path(cfg.tasks.path).expanduser()).resolve()
        if not path.is_file():
            raise CkError(f"the tasks file {path} does not exist. Give a JSON or JSONL file of task rows "
                          "(relative to the spec's folder).", option="tasks.path")
        try:
            load_tasks(cfg.tasks, path, where="tasks")
        except CkError as exc:
            raise CkError(str(exc), option="tasks") from None
    elif splits is not None and cfg.split not in splits:
        from cruijff_kit import did_you_mean

        raise CkError(f"split `{cfg.split}` does not exist in the dataset (its splits: {', '.join(splits)}); set "
                      f"`split:`, or `tasks:` to a held-out task file. {did_you_mean(cfg.split, splits)}")
    if cfg.tasks is not None and cfg.tasks.answer_field is None:
        for name, m in cfg.effective_metrics().items():
            if m.type in REFERENCE_METRICS:
                raise CkError(f"metric `{name}` ({m.type}) compares with a reference answer, but "
                              "tasks.answer_field is null. Name the row field with the reference answer in "
                              "tasks.answer_field.", option=f"metrics.{name}")
    prompts = [("user_prompt", cfg.user_prompt)] + [
        (f"metrics.{name}.prompt", m.prompt) for name, m in cfg.effective_metrics().items()
        if m.type in JUDGE_METRICS and m.prompt]
    for option, value in prompts:
        if value:
            try:
                prompt_text(value, base_dir, file=None, path=option)
            except SpecError as exc:
                raise CkError(f"{exc.problem} {exc.hint or ''}".strip(), option=option) from None
    if cfg.preset == "collabllm" and any(m.type == "tokens" for m in cfg.effective_metrics().values()):
        import importlib.util

        from cruijff_kit.collab import cl100k_file

        if importlib.util.find_spec("tiktoken") is None:
            raise CkError("preset collabllm counts the model's tokens with tiktoken's cl100k_base, and tiktoken "
                          "is not installed. Install the inspect plugin's collab extra (pip install "
                          "'cruijff-kit-inspect[collab]': tiktoken, and litellm, which ships the table), or set "
                          "`preset: ck` with your own metrics (words and punctuation marks).", option="preset")
        cl100k_file()  # a CkError saying where the table was looked for, and how to provide it
    try:
        assert cfg.user is not None
        build_participant(cfg.user, file=None, path="user", base_dir=base_dir)
        _judges(cfg, base_dir)
    except (SpecError, StageError) as exc:
        raise CkError(str(exc), option="user") from None


def make_collaboration(cfg: InspectConfig, ctx: Any, base_dir: Path) -> Collaboration:
    """The shared state of one target's conversations (participants built, journal and cache opened)."""
    if cfg.tasks is not None:
        tasks = load_tasks(cfg.tasks, (base_dir / Path(cfg.tasks.path).expanduser()).resolve(), where="tasks")
    else:
        data = ctx.dataset()
        if cfg.split not in data:
            raise StageError(f"the dataset has no split `{cfg.split}` (it has {', '.join(data)}).")
        reference = next((name for name, m in cfg.effective_metrics().items() if m.type in REFERENCE_METRICS),
                         None)
        tasks = tasks_from_rows(list(data[cfg.split]), cfg.split, reference)
    if cfg.limit:
        tasks = tasks[: cfg.limit]
    seed = cfg.generation.seed if cfg.generation.seed is not None else int(ctx.seed)
    system = ctx.prompt.system
    assert cfg.user is not None
    out: Path = ctx.eval_dir
    return Collaboration(
        cfg=cfg, tasks=tasks, seed=seed, system=system, base_dir=base_dir,
        journal=Journal(out / JOURNAL, fingerprint(cfg, seed, system, ctx.target.name,
                                                   adapter_identity(ctx.target.adapter))),
        cache=ReplyCache(reply_cache_path(ctx.run_dir, out, cfg.label)) if cfg.cache_user else None,
        user_plugin=build_participant(cfg.user, file=None, path="user", base_dir=base_dir), judges=_judges(cfg, base_dir))


def reply_cache_path(run_dir: Path, eval_dir: Path, label: str) -> Path:
    """``<experiment>/collab/<eval>/user_replies.jsonl``, shared by every run and target of the experiment
    (base evals shared by several runs live in ``shared/``); outside an experiment, beside the eval folder."""
    root = Path(run_dir)
    if root.parent.name in ("runs", "shared"):
        return root.parent.parent / "collab" / label / REPLY_CACHE
    return eval_dir.parent / REPLY_CACHE


def adapter_identity(adapter: Path | None) -> str | None:
    """Name, size and modification time of each file of an adapter folder (a retrained adapter differs)."""
    if adapter is None or not Path(adapter).is_dir():
        return None
    files = sorted(p for p in Path(adapter).iterdir() if p.is_file())
    return json.dumps([[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files])


def close_participants(collab: Collaboration) -> None:
    """Release the participants' clients after the eval (its event loop is gone; errors are ignored)."""
    import contextlib

    if collab.closed:
        return
    collab.closed = True
    for p in collab.participants():
        with contextlib.suppress(Exception):
            asyncio.run(p.aclose())
