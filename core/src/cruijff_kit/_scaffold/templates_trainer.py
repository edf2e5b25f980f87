"""The trainer template of ``ck new plugin trainer``: a minimal LoRA loop a researcher copies.

Plain PyTorch on transformers + peft, through the public helpers of :mod:`cruijff_kit.training`
(precision, the truncation check, metrics rows, the nan/inf stop, adapter folders the evaluators load).
"""

from __future__ import annotations

TRAINER = '''"""The __NAME__ trainer: a minimal LoRA loop in plain PyTorch (transformers + peft). Change it freely.

Each epoch is one pass over the ``train`` split (shuffled with the run's seed) in batches of
``batch_size`` rows; the loss is on the last assistant turn of each conversation. AdamW steps every
``gradient_accumulation`` batches, with the spec's learning-rate schedule. Every optimizer step logs a
metrics row; the validation loss is logged at the end of each epoch (and every ``eval_steps``). The
adapter of each saved epoch goes to ``ctx.adapter_dir(epoch)``, written by
``cruijff_kit.training.save_adapter``, so evaluators (``inspect``) load it as any other trainer's.

Options every trainer shares come from ``TrainConfig``; the few this loop does not implement
(``method: qlora``, ``precision: fp16``, ``keep_state``, several processes) are refused by ``check``
at plan time, never ignored. torch, transformers and peft are imported inside ``train`` only.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import Field

from cruijff_kit import CkError, DataError, Estimate, Resources, StageError, TrainConfig, Trainer

Messages = list[dict[str, Any]]


class __CLASS__Config(TrainConfig):
    """Options of __NAME__ (unknown keys are errors)."""

    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip gradients to this norm (null: no clipping).")


def unsupported(config: TrainConfig, resources: Resources) -> list[tuple[str, str]]:
    """(option, why) for every setting this loop does not implement: ``check`` refuses them."""
    found = []
    if config.method != "lora":
        found.append(("method", f"method is {config.method}; this trainer trains plain LoRA only (method: lora)"))
    if config.precision == "fp16":
        found.append(("precision", "precision fp16 needs loss scaling, which this loop does not do; "
                                   "use auto, fp32 or bf16"))
    if config.keep_state:
        found.append(("keep_state", "this loop keeps no resumable state (a new attempt starts again); "
                                    "set keep_state: false"))
    if resources.gpus > 1 or (resources.processes or 1) > 1 or resources.nodes > 1:
        found.append(("scheduler.resources", "this loop trains in one process on at most one GPU; ask "
                                             "for gpus <= 1, one process and one node"))
    return found


def encode(tokenizer: Any, messages: Messages) -> tuple[list[int], list[int]]:
    """(token ids of the conversation, labels): labels are the ids of the last assistant turn, -100 elsewhere."""
    if not messages or messages[-1]["role"] != "assistant":
        raise DataError("a conversation does not end with an assistant message, so it has nothing to train on")

    def ids(turns: Messages, **kwargs: Any) -> list[int]:
        return list(tokenizer.apply_chat_template(turns, tokenize=True, return_dict=True, **kwargs)["input_ids"])

    prompt, full = ids(messages[:-1], add_generation_prompt=True), ids(messages)
    start = 0
    while start < min(len(prompt), len(full)) and prompt[start] == full[start]:
        start += 1
    return full, [-100] * start + full[start:]


def batches(rows: list[Any], size: int) -> list[list[Any]]:
    """``rows`` in consecutive batches of ``size`` (the last may be shorter)."""
    return [rows[i:i + size] for i in range(0, len(rows), size)]


class __CLASS__(Trainer):
    """LoRA fine-tuning in a plain PyTorch loop."""

    name = "__NAME__"
    description = "A minimal LoRA loop in plain PyTorch (transformers + peft)."
    Config = __CLASS__Config
    config: __CLASS__Config

    # -- plan time (cheap: no torch)
    def check(self, run: Any) -> None:
        """Refuse settings the loop does not implement, unknown LoRA targets and a missing validation split."""
        from cruijff_kit.training import check_targets, check_validation_split

        resources = Resources.model_validate(run.spec.get("scheduler", {}).get("resources") or {})
        problems = unsupported(self.config, resources)
        if problems:  # the planner names the field (train.<option>) and the spec file
            option, why = problems[0]
            raise CkError(f"{why} (plugin __NAME__).", option=None if "." in option else option)
        check_targets(run, self.config)
        check_validation_split(run, self.config)

    def estimate(self, run: Any) -> Estimate:
        """Parameters, memory and tokens per epoch from the model's config.json (never imports torch)."""
        from cruijff_kit.training import estimate_run

        return estimate_run(run, self.config)

    def chat_template(self) -> str | None:
        """The spec's ``chat_template``: inline Jinja, or the text of the .jinja file it names."""
        from cruijff_kit.training import chat_template_text

        return chat_template_text(self.config.chat_template, self.path)

    def tokenizer(self, model_path: str, revision: str | None = None) -> Any:
        """The model's tokenizer with the spec's chat template and a pad token."""
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_path, revision=revision)
        tok.chat_template = self.chat_template() or tok.chat_template
        if not tok.chat_template:
            raise StageError(f"the tokenizer of {model_path} has no chat template, so conversations cannot be "
                             "rendered. Set train.chat_template to a Jinja template (or a .jinja file).")
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok

    def target_masker(self, model_path: str, revision: str | None = None) -> Callable[[Messages], Sequence[bool]]:
        """One flag per token, True where the loss is (as :func:`encode` tokenizes): lets `ck plan` and the
        stage count what ``max_seq_length`` cuts."""
        tok = self.tokenizer(model_path, revision)
        return lambda messages: [label != -100 for label in encode(tok, messages)[1]]

    # -- the stage
    def train(self, ctx: Any) -> None:
        """Train on ``ctx.dataset()["train"]``; write ``ctx.adapter_dir(epoch)`` for every saved epoch."""
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, get_scheduler

        from cruijff_kit import training

        cfg = self.config
        data = ctx.dataset()
        training.require_truncation_allowed(ctx, self, data)
        training.truncate_metrics(ctx.layout.metrics, 0)  # no resumable state: a new attempt starts over
        device = training.run_device()
        precision = training.resolve_precision(cfg.precision, device)
        revision = ctx.spec["model"].get("revision")
        torch.manual_seed(ctx.seed)

        tok = self.tokenizer(ctx.model_path, revision)
        model = AutoModelForCausalLM.from_pretrained(ctx.model_path, revision=revision,
                                                     dtype=training.torch_dtype(precision)).to(device)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
        lora = cfg.lora
        model = get_peft_model(model, LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=list(lora.targets), task_type="CAUSAL_LM"))

        def encoded(split: str) -> list[tuple[list[int], list[int]]]:
            return [tuple(x[: cfg.max_seq_length] for x in encode(tok, row["messages"]))  # type: ignore[misc]
                    for row in data[split]]

        if cfg.validation and "validation" not in data:
            raise DataError(f"train.validation is true, but the dataset has no `validation` split (it has "
                            f"{sorted(data)}). Add one, or set train.validation: false.")
        train_rows = encoded("train")
        val_rows = encoded("validation") if cfg.validation else []
        per_epoch = math.ceil(math.ceil(len(train_rows) / cfg.batch_size) / cfg.gradient_accumulation)
        total = min(per_epoch * cfg.epochs, cfg.max_steps or per_epoch * cfg.epochs)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        kind = {"constant": "constant_with_warmup"}.get(cfg.lr_scheduler, cfg.lr_scheduler)
        schedule = get_scheduler(kind, optimizer, num_warmup_steps=math.ceil(cfg.warmup_ratio * total),
                                 num_training_steps=total)
        watch = training.LossWatch(ctx, precision=precision)

        def forward(batch: list[tuple[list[int], list[int]]]) -> Any:
            width = max(len(ids) for ids, _ in batch)
            pad = tok.pad_token_id

            def padded(seq: list[int], value: int) -> list[int]:
                return seq + [value] * (width - len(seq))

            ids = torch.tensor([padded(i, pad) for i, _ in batch], device=device)
            mask = torch.tensor([padded([1] * len(i), 0) for i, _ in batch], device=device)
            labels = torch.tensor([padded(lab, -100) for _, lab in batch], device=device)
            return model(input_ids=ids, attention_mask=mask, labels=labels).loss

        def validation_loss() -> float | None:
            if not val_rows:
                return None
            model.eval()
            with torch.no_grad():
                losses = [float(forward(b)) for b in batches(val_rows, cfg.batch_size)]
            model.train()
            return sum(losses) / len(losses)

        step, epoch = 0, 0
        model.train()
        for epoch in range(cfg.epochs):
            order = list(train_rows)
            random.Random(ctx.seed + epoch).shuffle(order)
            groups = batches(batches(order, cfg.batch_size), cfg.gradient_accumulation)
            for index, group in enumerate(groups):
                started, tokens, losses = time.perf_counter(), 0, []
                for batch in group:
                    loss = forward(batch) / len(group)
                    watch.observe(loss)
                    loss.backward()
                    losses.append(float(loss))
                    tokens += sum(len(ids) for ids, _ in batch)
                watch.check(step=step + 1, epoch=epoch)  # a nan/inf loss stops here, before the weights change
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
                rate = schedule.get_last_lr()[0]
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
                step += 1
                val = validation_loss() if cfg.eval_steps and step % cfg.eval_steps == 0 else None
                training.MetricsRow(step=step, epoch=epoch + (index + 1) / len(groups), train_loss=sum(losses),
                                    val_loss=val, learning_rate=rate,
                                    tokens_per_second=tokens / max(time.perf_counter() - started, 1e-9),
                                    peak_memory_mb=training.peak_memory_mb(device)).log(ctx)
                if cfg.max_steps and step >= cfg.max_steps:
                    break
            val = validation_loss()
            watch.check_value(val, step=step, epoch=epoch)
            if val is not None:
                training.MetricsRow(step=step, epoch=float(epoch + 1), val_loss=val).log(ctx)
            if epoch in cfg.saved_epochs():
                training.save_adapter(model, tok, ctx.adapter_dir(epoch), base_model=ctx.spec["model"]["path"],
                                      base_model_path=ctx.spec["model"].get("local_path"),
                                      extra={"epoch": epoch, "step": step, "trainer": self.name, "run": ctx.run.name,
                                             **training.method_info("lora", precision)})
            if cfg.max_steps and step >= cfg.max_steps:
                training.require_saved_epochs(ctx, cfg.saved_epochs(), step=step, epoch=epoch,
                                              max_steps=cfg.max_steps)
                return
'''

TRAINER_TESTS = '''
MINIMAL = {"epochs": 2}


class CharTokenizer:
    """A stand-in tokenizer: each message is its role's first letter, its characters, then "|"."""

    def apply_chat_template(self, turns, tokenize=True, return_dict=True, add_generation_prompt=False):
        text = "".join(t["role"][0] + t["content"] + "|" for t in turns) + ("a" if add_generation_prompt else "")
        return {"input_ids": [ord(c) for c in text]}


def test_loss_is_on_the_answer_only() -> None:
    from __PACKAGE__.plugin import encode

    ids, labels = encode(CharTokenizer(), [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "HO"}])
    assert ids == [ord(c) for c in "uhi|aHO|"]
    assert labels == [-100] * 5 + [ord("H"), ord("O"), ord("|")]


def test_refuses_what_the_loop_does_not_implement() -> None:
    from cruijff_kit import Resources

    from __PACKAGE__.plugin import unsupported

    config = __CLASS__.Config.model_validate({**MINIMAL, "method": "qlora", "precision": "fp16"})
    assert [option for option, _ in unsupported(config, Resources(gpus=2))] == \\
        ["method", "precision", "scheduler.resources"]
    assert unsupported(__CLASS__.Config.model_validate(MINIMAL), Resources()) == []


def test_batches() -> None:
    from __PACKAGE__.plugin import batches

    assert batches([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
'''
