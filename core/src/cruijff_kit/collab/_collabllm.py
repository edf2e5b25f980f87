"""The ``collabllm`` scoring preset: microsoft/CollabLLM's multiturn-aware reward, computed the same way.

What the official code (``collabllm`` 0.0.8, ``collabllm/reward.py``, ``collabllm/synthetic.py`` and the
metrics of its ``examples/metrics``) does, and what this module reproduces:

* a future is the **whole session**: the conversation so far, the candidate, and the simulated turns
  (system messages dropped); futures are not cut at the conversation's turn limit;
* ``token_amount``: cl100k_base tokens (tiktoken) of every assistant message of the session joined
  with one space, divided by 1000;
* ``accuracy``: a binary LLM judge given the task, the reference and ``json.dumps`` of the session;
* ``interactivity``: an LLM judge given the session as ``Role: content`` lines;
* ``document->bleu``: an LLM extracts the final document from the session, then NLTK's
  ``sentence_bleu([reference], document)`` (strings, so over characters, NLTK's default 4-gram
  weights and no smoothing);
* a future's reward ``MR = sum(weight x value)``; a candidate's score is the mean MR of its futures
  (3 per candidate); the user's next message comes from the chosen candidate's longest future.

The judge prompts below are the official ones (MIT licence, Copyright (c) Microsoft Corporation).
The cl100k_base table is read from a file: tiktoken's own download is never attempted (see
:func:`cl100k_file`).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from cruijff_kit._base.errors import CkError
from cruijff_kit.collab._collabllm_prompts import EXTRACT_PROMPT
from cruijff_kit.collab._user import MalformedReply, parse_json_object

CONTINUATIONS = 3
"""Futures per candidate in the official scripts (``--num_samples 3``)."""

WEIGHTS: dict[str, dict[str, float]] = {
    "question-answering": {"accuracy": 1.0, "interactivity": 0.5, "token_amount": -0.5},
    "document-editing": {"document->bleu": 1.0, "token_amount": -0.1},
    "code-generation": {"runnable code->pass_rate": 1.0, "token_amount": -0.5},
}
"""Metric weights per task type, as in the official ``scripts/engine/build_dataset.py`` examples
(math-hard, medium, bigcodebench)."""

ACCURACY_PROMPT = '''You are a helpful and meticulous evaluator. Your task is to \
evaluate the *accuracy* of an AI model's answer to a target question. \
You will be given the target question, the ground truth answer, and the model's response.

Provided Information:

<|The Start of Target Question and Ground Truth Answer|>
Target Question: {single_turn_prompt}
Ground Truth Answer: {groundtruth}
<|The End of Target Question and Ground Truth Answer|>

<|The Start of The Model's Response|>
{completion}
<|The End of The Model's Response|>

You should determine whether the model's final response to the target question is \
factually correct and consistent with the provided ground truth.

Rating criteria (binary):
  • 1 = Correct   — the response matches the ground truth.
  • 0 = Incorrect — the response contradicts or misses the ground truth.

Output format (JSON):
{{
    "thought": "<your reasoning here>",
    "accuracy": <0 or 1>
}}

Double check if the JSON object is formatted correctly. Ensure that all fields are present and properly \
structured. Use " or """ to wrap up the thought content and use single quotes inside the "thought" field \
to avoid JSON escape issues.

Your evaluation:
'''

INTERACTIVITY_PROMPT = '''You are a helpful and meticulous conversation evaluator. \
Your task is to evaluate the *interactivity* of the responses provided by an AI assistant \
to user questions in a given conversation:

<|The Start of the Conversation to be Evaluated|>
{chat_history}
<|The End of the Conversation to be Evaluated|>

You should assess the assistant's engagement, clarity, and ability to understand the user's needs. \
Give a float number between 0 and 1, where:
    1 = Highly interactive: The assistant is very engaging, asks all relevant questions, and significantly \
enhances understanding and problem-solving.
     - Example: The assistant thoroughly understands the user's question, asks for necessary clarifications, \
such as "It sounds like you're asking about the causes of climate change. Are you looking for specific \
examples or a general overview?"
    0.5 = Moderately interactive: The assistant is engaging, asks some relevant questions, but can be \
substantially improved.
     - Example: The assistant asks some relevant questions about the user's inquiry but misses key details, \
such as "Are you asking about the effects of climate change?" but does not probe further for clarification.
    0 = Low interactivity: The assistant shows low engagement, asks few relevant questions, and barely try to \
understand the user's needs.
     - Example: The assistant provides a vague or incomplete response without fully understanding the user's \
intent, such as "Climate change is bad," without asking any follow-up questions or providing detailed \
information.


Output format (JSON):
{{
    "thought": "<How interactive is the assistant?>",
    "interactivity": <score>
}}

Double check if the JSON object is formatted correctly. Ensure that all fields are present and properly \
structured. Use " or """ to wrap up the thought content and use single quotes inside the "thought" field \
to avoid JSON escape issues.

Your evaluation:
'''

# --------------------------------------------------------------------------- tokenizer
CL100K_NAME = "9b5ad71b2ce5302211f9c61530b329a4922fc6a4"
"""tiktoken's cache name of cl100k_base (sha1 of its download URL); litellm ships the file under it."""
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
_CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
                   r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
_CL100K_SPECIAL = {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
                   "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276}


def cl100k_file() -> Path:
    """The cl100k_base table: ``$CK_CL100K_FILE``, else the copy in litellm's wheel
    (``litellm/litellm_core_utils/tokenizers/<name>``), else tiktoken's cache folder.

    Nothing is downloaded; a missing file raises :class:`CkError` saying where it was looked for.
    """
    tried: list[str] = []
    given = os.environ.get("CK_CL100K_FILE")
    if given:
        p = Path(given).expanduser()
        if p.is_file():
            return p
        tried.append(f"CK_CL100K_FILE={p}")
    spec = importlib.util.find_spec("litellm")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            p = Path(root) / "litellm_core_utils" / "tokenizers" / CL100K_NAME
            if p.is_file():
                return p
            tried.append(str(p))
    else:
        tried.append("litellm (not installed)")
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(var):
            p = Path(os.environ[var]) / CL100K_NAME
            if p.is_file():
                return p
            tried.append(str(p))
    raise CkError("the cl100k_base tokenizer table, which the collabllm scoring preset counts tokens with, "
                  f"was not found (looked at: {', '.join(tried)}). Install litellm (its wheel ships the file), "
                  "or set CK_CL100K_FILE to a copy of cl100k_base.tiktoken; nothing is downloaded at run time.")


@lru_cache(maxsize=1)
def _encoding() -> Any:
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(cl100k_file()), expected_hash=CL100K_SHA256)
    return tiktoken.Encoding(name="cl100k_base", pat_str=_CL100K_PATTERN, mergeable_ranks=ranks,
                             special_tokens=_CL100K_SPECIAL)


def count_cl100k(text: str) -> int:
    """cl100k_base tokens of ``text`` (special-token text counted as ordinary text, as the official code)."""
    return len(_encoding().encode(text, disallowed_special=()))


# --------------------------------------------------------------------------- metrics
def strip_system(session: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """The session as role/content messages, system messages left out."""
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in session if m["role"] != "system"]


def token_amount(session: Sequence[dict[str, Any]]) -> float:
    """Thousands of cl100k tokens of all assistant messages of the session (joined with one space)."""
    text = " ".join(m["content"] for m in strip_system(session) if m["role"] == "assistant")
    return count_cl100k(text) / 1000.0


def accuracy_prompt(task: str, reference: str, session: Sequence[dict[str, Any]]) -> str:
    """The official accuracy judge prompt: task, reference and the session as JSON."""
    return ACCURACY_PROMPT.format(single_turn_prompt=task.strip(), groundtruth=reference.strip(),
                                  completion=json.dumps(strip_system(session)).strip())


def interactivity_prompt(session: Sequence[dict[str, Any]]) -> str:
    """The official interactivity judge prompt over ``Role: content`` lines."""
    history = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in strip_system(session))
    return INTERACTIVITY_PROMPT.format(chat_history=history)


def extraction_prompt(extract_type: str, session: Sequence[dict[str, Any]],
                      requirement: str | None = None) -> str:
    """The official prompt asking a model for the final ``extract_type`` (e.g. document) of the session."""
    history = "\n".join(f"**{m['role'].capitalize()}**: {m['content']}" for m in strip_system(session))
    extra = "Addtional requirement:\n" + requirement if requirement else ""
    return EXTRACT_PROMPT.format(extract_type=extract_type, chat_history=history, extraction_requirement=extra)


def judged_value(reply: str, key: str) -> float:
    """The number under ``key`` in a judge's JSON reply (which must also hold ``thought``)."""
    obj = parse_json_object(reply)
    if "thought" not in obj or key not in obj:
        raise MalformedReply(f"the judge reply lacks `thought` or `{key}`: {reply[:200]!r}")
    try:
        value = float(obj[key])
    except (TypeError, ValueError):
        raise MalformedReply(f"`{key}` in the judge reply is not a number: {reply[:200]!r}") from None
    if not math.isfinite(value):
        raise MalformedReply(f"`{key}` in the judge reply is {value}: {reply[:200]!r}")
    return value


def sentence_bleu(reference: str, hypothesis: str) -> float:
    """NLTK's ``sentence_bleu([reference], hypothesis)`` on two strings (so over characters): uniform
    4-gram weights, the brevity penalty, no smoothing (a zero n-gram precision makes the score ~0)."""
    ref, hyp = list(reference), list(hypothesis)
    if not hyp:
        return 0.0
    nums, dens = [], []
    for n in range(1, 5):
        h = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
        r = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
        nums.append(sum(min(c, r[g]) for g, c in h.items()))
        dens.append(max(1, sum(h.values())))
    if nums[0] == 0:
        return 0.0
    c, rl = len(hyp), len(ref)
    bp = 1.0 if c > rl else (0.0 if c == 0 else math.exp(1 - rl / c))
    # NLTK's method0: a zero precision becomes sys.float_info.min
    logs = [math.log(nu / de) if nu else math.log(2.2250738585072014e-308) for nu, de in zip(nums, dens, strict=True)]
    return bp * math.exp(sum(0.25 * x for x in logs))


Judge = Callable[[str], str]
"""A judge model: prompt in, reply text out."""


def session_rewards(session: Sequence[dict[str, Any]], *, task: str, reference: str,
                    weights: dict[str, float], judge: Judge,
                    pass_rate: Callable[[str], float] | None = None) -> dict[str, float]:
    """Every metric of one future (a whole session) and its ``MR = sum(weight x value)``.

    Metric names are the official signatures: ``accuracy``, ``interactivity``, ``token_amount``,
    ``<extract_type>->bleu``, ``<extract_type>->pass_rate`` (``pass_rate`` maps the extracted code to a
    share of passing tests).
    """
    values: dict[str, float] = {}
    for name in weights:
        extract, _, metric = name.rpartition("->")
        completion = None
        if extract:
            completion = str(parse_json_object(judge(extraction_prompt(extract, session)))["final_completion"])
        if metric == "token_amount":
            values[name] = token_amount(session)
        elif metric == "accuracy":
            values[name] = judged_value(judge(accuracy_prompt(task, reference, session)), "accuracy")
        elif metric == "interactivity":
            values[name] = judged_value(judge(interactivity_prompt(session)), "interactivity")
        elif metric == "bleu" and completion is not None:
            values[name] = sentence_bleu(reference, completion)
        elif metric == "pass_rate" and completion is not None and pass_rate is not None:
            values[name] = float(pass_rate(completion))
        else:
            raise ValueError(f"unknown collabllm metric `{name}`")
    values["MR"] = sum(weights[m] * values[m] for m in weights)
    return values


def candidate_score(futures: Sequence[dict[str, float]]) -> float:
    """A candidate's score: the mean MR of its futures."""
    return sum(f["MR"] for f in futures) / len(futures)


def next_user_future(sessions: Sequence[Sequence[dict[str, Any]]]) -> int:
    """Index of the future the user's next message is taken from: the longest (the last of equals)."""
    return sorted(range(len(sessions)), key=lambda i: len(sessions[i]))[-1]
