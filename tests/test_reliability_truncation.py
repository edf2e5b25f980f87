"""Data that would be silently cut: rows whose target tokens ``train.max_seq_length`` cuts are counted at
plan time with the run's own tokenizer (and again at stage start) and refused unless allowed; broken
chat rows are refused by ``ck validate`` with their file and line.

Token lengths are computed by hand for the tiny Llama-3 tokenizer and template (``tiny_llama``):

- a conversation renders as ``<|begin_of_text|>``, then per turn ``<|start_header_id|>ROLE<|end_header_id|>``
  ``\\n`` ``\\n`` (5 tokens), the content, ``<|eot_id|>``;
- ``the`` is one token and so is `` the``: ``n`` words ``the the ... the`` are ``n`` tokens;
- so a row with user ``the`` and assistant ``n`` words has ``1 + 5 + 1 + 1 = 8`` tokens of user turn,
  ``5`` of assistant header, and ``n + 1`` target tokens (the answer and its ``<|eot_id|>``): ``14 + n``.

With ``max_seq_length = 20`` a row keeps ``20 - 13 = 7`` target tokens, so an answer of ``n`` words loses
``max(0, n + 1 - 7)`` tokens. A user turn of 20 words gives ``1 + 5 + 20 + 1 + 5 = 32`` tokens before the
answer: its whole answer is cut.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest

from cruijff_kit._base.errors import DataError

LIMIT = 20


def row(n: int, user: str = "the") -> dict[str, Any]:
    """User ``user``; assistant ``n`` words ``the``."""
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": " ".join(["the"] * n)}]}


#: Answers of 4, 10, 30 and 5 words, and a 20-word question with a 2-word answer.
TRAIN = [row(4), row(10), row(30), row(2, user=" ".join(["the"] * 20)), row(5)]
#: Answers of 3 and 12 words.
VALIDATION = [row(3), row(12)]
# By hand (targets n + 1; kept 7 each unless the question alone is too long):
#   train: 5 + 11 + 31 + 3 + 6 = 56 target tokens; lost 0 + 4 + 24 + 3 + 0 = 31 in rows 1, 2, 3; row 3 keeps none
#   validation: 4 + 13 = 17 target tokens; lost 0 + 6 = 6 in row 1
TRAIN_LOST, TRAIN_TARGETS, VAL_LOST, VAL_TARGETS = 31, 56, 6, 17


def write_jsonl(path: Path, rows: list[Any], *, blank_first: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_text(("\n" if blank_first else "") + text)
    return path


def write_chat(folder: Path, train: list[Any], validation: list[Any] | None = None, **kw: Any) -> Path:
    data = folder / "data"
    write_jsonl(data / "train.jsonl", train, **kw)
    if validation is not None:
        write_jsonl(data / "validation.jsonl", validation)
    return data


def write_spec(folder: Path, model: Path | str, train: str, *, sweep: str = "") -> Path:
    spec = folder / "spec.yaml"
    spec.write_text(textwrap.dedent(f"""\
        experiment: cut
        output_dir: out
        model: {{path: {model}}}
        dataset: {{plugin: json-chat, path: data}}
        train: {{{train}}}
        scheduler: {{plugin: local}}
        """) + sweep)
    return spec


def assert_clean_error(res: Any) -> str:
    """A failed ``ck`` call with one clear message and no traceback; returns the output."""
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "Traceback" not in out, out
    return " ".join(out.split())


# --------------------------------------------------------------------------- ck plan
def test_ck_plan_refuses_cut_rows_naming_file_split_rows_and_tokens(tmp_path: Path, tiny_llama: Path, ck) -> None:
    write_chat(tmp_path, TRAIN, VALIDATION)
    spec = write_spec(tmp_path, tiny_llama, f"plugin: trl, max_seq_length: {LIMIT}")
    out = assert_clean_error(ck("plan", str(spec)))
    assert (f"data/train.jsonl: split `train`: 3 of 5 rows are longer than train.max_seq_length = {LIMIT} tokens "
            f"and would lose {TRAIN_LOST} of {TRAIN_TARGETS} target (assistant) tokens (rows 1, 2, 3, 0-based); "
            "row 3 would keep no target token at all") in out
    assert (f"data/validation.jsonl: split `validation`: 1 of 2 rows are longer than train.max_seq_length = "
            f"{LIMIT} tokens and would lose {VAL_LOST} of {VAL_TARGETS} target (assistant) tokens (row 1") in out
    assert "Raise train.max_seq_length (now 20), shorten or remove the rows, or set `train.allow_truncation: true`" \
        in out
    assert not (tmp_path / "out" / "cut" / "plan.md").exists()


def test_ck_plan_with_the_allow_flag_prints_the_count_for_trl_and_torchtune(tmp_path: Path, tiny_llama: Path,
                                                                           ck) -> None:
    write_chat(tmp_path, TRAIN, VALIDATION)
    spec = write_spec(tmp_path, tiny_llama, f"plugin: trl, max_seq_length: {LIMIT}, allow_truncation: true",
                      sweep="sweep:\n  train.plugin: [trl, torchtune]\n")
    res = ck("plan", str(spec))
    assert res.returncode == 0, res.stdout + res.stderr
    plan_md = (tmp_path / "out" / "cut" / "plan.md").read_text()
    expected = (f"max_seq_length {LIMIT}: train: 3 of 5 rows lose {TRAIN_LOST} of {TRAIN_TARGETS} target tokens, "
                f"1 keeps none; validation: 1 of 2 rows lose {VAL_LOST} of {VAL_TARGETS} target tokens")
    lines = [line for line in plan_md.splitlines() if expected in line]
    assert len(lines) == 2, plan_md  # one run per trainer, the same count
    assert "target tokens cut" in plan_md and f"4 rows, {TRAIN_LOST + VAL_LOST} tokens" in plan_md
    assert expected in " ".join(res.stdout.split())


def test_run_names_do_not_change_with_the_allow_flag(tmp_path: Path) -> None:
    from cruijff_kit._engine.planner import make_plan
    from cruijff_kit._engine.spec import load_spec

    write_chat(tmp_path, [row(2)])
    spec = write_spec(tmp_path, "org/not-downloaded", "plugin: trl, validation: false")
    plain = make_plan(load_spec(spec))
    allowed = make_plan(load_spec(spec, {"train.allow_truncation": True}))
    assert plain.runs[0].name == allowed.runs[0].name
    assert allowed.runs[0].spec["train"]["allow_truncation"] is True
    assert plain.truncation[plain.runs[0].name].summary().startswith("not checked: tokenizer not available")


# --------------------------------------------------------------------------- agreement with the trainers
def conversations() -> list[list[dict[str, str]]]:
    return [r["messages"] for r in TRAIN]


#: A template TRL cannot mark assistant turns in: the trl trainer trains on the last turn (prompt/completion).
PLAIN = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


def trl_labels(model: Path, rows: list[list[dict[str, str]]], max_length: int | None, *, mode: str,
               out: Path) -> list[list[int]]:
    """The labels of SFTTrainer's own prepared train dataset, configured as the trl plugin does per loss mode."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(str(model))
    if mode == "completion":
        tok.chat_template = PLAIN
        data = [{"prompt": r[:-1], "completion": r[-1:]} for r in rows]
    else:
        data = [{"messages": r} for r in rows]
    args = SFTConfig(output_dir=str(out), max_length=max_length, assistant_only_loss=mode == "assistant",
                     completion_only_loss=True if mode == "completion" else None, use_cpu=True, report_to="none")
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(str(model)), args=args,
                         train_dataset=Dataset.from_list(data), processing_class=tok)
    return [list(x) for x in trainer.train_dataset["labels"]]


@pytest.mark.parametrize("mode", ["assistant", "all", "completion"])
def test_trl_count_agrees_with_sft_trainers_own_truncation(tmp_path: Path, tiny_llama: Path, mode: str) -> None:
    from cruijff_kit_trl.config import TrlConfig
    from cruijff_kit_trl.masks import sft_masker

    from cruijff_kit.training import count_truncation

    rows = conversations()
    full = trl_labels(tiny_llama, rows, None, mode=mode, out=tmp_path / "full")
    cut = trl_labels(tiny_llama, rows, LIMIT, mode=mode, out=tmp_path / "cut")
    trained = [sum(label != -100 for label in labels) for labels in full]
    kept = sum(sum(label != -100 for label in labels) for labels in cut)
    config = TrlConfig(assistant_only_loss=mode != "all")
    masker = sft_masker(str(tiny_llama), config, PLAIN if mode == "completion" else None)
    assert masker is not None
    count = count_truncation(rows, masker, LIMIT, split="train", file="train.jsonl")
    assert count.target_tokens == sum(trained)
    assert count.tokens_lost == sum(trained) - kept
    assert len(count.emptied_rows) == len(rows) - len(cut)  # TRL drops the rows left with no label
    if mode == "assistant":  # the hand count
        assert (count.tokens_lost, count.target_tokens, count.cut_rows, count.emptied_rows) == \
            (TRAIN_LOST, TRAIN_TARGETS, (1, 2, 3), (3,))
    elif mode == "all":  # every token is a target: 14 + n for answers of 4, 10, 30, 5 words; 32 + 2 + 1 for row 3
        totals = [18, 24, 44, 35, 19]
        assert count.target_tokens == sum(totals)
        assert count.tokens_lost == sum(max(0, t - LIMIT) for t in totals)


def test_torchtune_count_agrees_with_the_recipes_dataset(tiny_llama: Path) -> None:
    from cruijff_kit_torchtune.data import TokenizedChatDataset
    from cruijff_kit_torchtune.tokenizer import HFChatTokenizer
    from cruijff_kit_torchtune.trainer import TorchtuneConfig, TorchtuneTrainer

    from cruijff_kit.training import count_truncation

    rows = conversations()
    full = TokenizedChatDataset(HFChatTokenizer(str(tiny_llama)), rows, "train")
    cut = TokenizedChatDataset(HFChatTokenizer(str(tiny_llama), max_seq_len=LIMIT), rows, "train")
    trained = sum(sum(label >= 0 for label in item["labels"]) for item in full.items)
    kept = sum(sum(label >= 0 for label in item["labels"]) for item in cut.items)
    masker = TorchtuneTrainer(TorchtuneConfig()).target_masker(str(tiny_llama))
    count = count_truncation(rows, masker, LIMIT, split="train", file="train.jsonl")
    assert (count.target_tokens, count.tokens_lost) == (trained, trained - kept) == (TRAIN_TARGETS, TRAIN_LOST)
    assert len(count.emptied_rows) == len(full) - len(cut) == 1  # the recipe leaves row 3 out


# --------------------------------------------------------------------------- the stage
def test_stage_refuses_cut_rows_when_the_plan_could_not_count(tmp_path: Path, tiny_llama: Path, ck) -> None:
    write_chat(tmp_path, TRAIN)
    model = tmp_path / "model"  # an empty folder when planning (filled later): no tokenizer to count with
    model.mkdir()
    spec = write_spec(tmp_path, model, f"plugin: trl, max_seq_length: {LIMIT}, validation: false")
    res = ck("run", str(spec), "--dry-run")
    assert res.returncode == 0, res.stdout + res.stderr
    res = ck("plan", str(spec), "--no-write")
    assert "not checked: tokenizer not available here" in " ".join(res.stdout.split()), res.stdout + res.stderr
    shutil.copytree(tiny_llama, model, dirs_exist_ok=True)
    run_dir = next((tmp_path / "out" / "cut" / "runs").iterdir())
    out = assert_clean_error(ck("stage", str(run_dir), "train"))
    assert f"3 of 5 rows are longer than train.max_seq_length = {LIMIT} tokens" in out
    assert f"would lose {TRAIN_LOST} of {TRAIN_TARGETS}" in out and "train.allow_truncation: true" in out
    assert not (run_dir / "train" / "metrics.jsonl").exists()
    assert not list((run_dir / "train").glob("epoch_*"))


# --------------------------------------------------------------------------- ck validate: broken chat rows
def msg(role: str, content: str = "the") -> dict[str, str]:
    return {"role": role, "content": content}


def test_ck_validate_names_file_and_line_of_each_broken_conversation(tmp_path: Path, ck) -> None:
    good = {"messages": [msg("user"), msg("assistant")]}
    # a blank first line: row i is on line i + 2
    write_chat(tmp_path, [good, {"messages": [msg("user"), msg("robot")]},
                          {"messages": [msg("user"), msg("system"), msg("assistant")]}, good], blank_first=True)
    spec = write_spec(tmp_path, "org/not-downloaded", "plugin: trl, validation: false")
    out = assert_clean_error(ck("validate", str(spec)))
    assert "data/train.jsonl: split `train`: 2 of 4 rows are not valid" in out
    assert "row 1 (line 3): message 1 has unknown role `robot`" in out
    assert "row 2 (line 4): message 1 is a system turn, but a system turn may only come first" in out

    write_chat(tmp_path, [good, {"messages": [msg("system"), msg("user")]}, good,
                          {"messages": [msg("user"), msg("assistant"), msg("user")]}], blank_first=True)
    out = assert_clean_error(ck("validate", str(spec)))
    assert "data/train.jsonl: split `train`: 2 of 4 rows are not valid" in out
    assert "row 1 (line 3): the conversation has no assistant turn" in out
    assert "row 3 (line 5): the last turn is the user's, not the assistant's" in out


def test_many_broken_rows_give_one_error_listing_the_first_five(tmp_path: Path) -> None:
    from cruijff_kit.data import ChatFolder

    write_chat(tmp_path, [{"messages": [msg("user"), msg("robot")]}] * 8)
    with pytest.raises(DataError) as info:
        ChatFolder(tmp_path / "data").rows("train")
    text = str(info.value)
    assert "8 of 8 rows are not valid" in text and "(3 more not shown)" in text
    assert "row 4 (line 5)" in text and "row 5 (line 6)" not in text


STRICT = ("{{- bos_token }}{%- for message in messages %}"
          "{%- if loop.index0 > 0 and message['role'] == messages[loop.index0 - 1]['role'] %}"
          "{{- raise_exception('Conversation roles must alternate user/assistant') }}{%- endif %}"
          "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
          "{%- if message['role'] == 'assistant' %}{%- generation %}{{- message['content'] + '<|eot_id|>' }}"
          "{%- endgeneration %}{%- else %}{{- message['content'] + '<|eot_id|>' }}{%- endif %}{%- endfor %}")


def test_ck_validate_refuses_two_user_turns_the_template_cannot_form(tmp_path: Path, tiny_llama: Path, ck) -> None:
    (tmp_path / "strict.jinja").write_text(STRICT)
    good = {"messages": [msg("user"), msg("assistant")]}
    write_chat(tmp_path, [good, {"messages": [msg("user"), msg("user"), msg("assistant")]}, good])
    spec = write_spec(tmp_path, tiny_llama, "plugin: trl, validation: false, chat_template: strict.jinja")
    out = assert_clean_error(ck("validate", str(spec)))
    assert "data/train.jsonl: split `train`: the chat template cannot render 1 of 3 rows (0-based): row 1:" in out
    assert "Conversation roles must alternate user/assistant" in out
    assert "merge two user turns in a row into one" in out
