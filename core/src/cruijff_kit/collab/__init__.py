"""Collaboration with a simulated user: its prompt and reply protocol, the metrics of a conversation
and CollabLLM's multiturn-aware reward, shared by ``ck simulate`` and the multi-turn eval task.

Pure Python plus pydantic (tiktoken for the ``collabllm`` preset's token counts, on first use); no
torch. A metric scores an :class:`Outcome` (a conversation, the task and its final answer);
:func:`score_conversation` scores a finished conversation with every metric and adds the combined
``reward = sum(weight x value)``; :func:`scoring_metrics` turns the scoring settings (``preset``,
``task_type``, ``metrics``) into the metric set, the same for ``ck simulate`` and the eval task
(``collabllm``'s defaults: CollabLLM's official weights of the task type, :data:`WEIGHTS`).
"""

from __future__ import annotations

from cruijff_kit.collab._collabllm import (
    ACCURACY_PROMPT,
    CONTINUATIONS,
    WEIGHTS,
    accuracy_prompt,
    candidate_score,
    cl100k_file,
    count_cl100k,
    extraction_prompt,
    interactivity_prompt,
    judged_value,
    next_user_future,
    sentence_bleu,
    session_rewards,
    strip_system,
    token_amount,
)
from cruijff_kit.collab._collabllm import (
    INTERACTIVITY_PROMPT as COLLABLLM_INTERACTIVITY_PROMPT,
)
from cruijff_kit.collab._collabllm_prompts import EXTRACT_PROMPT
from cruijff_kit.collab._config import (
    DEFAULT_PRESET,
    DEFAULT_TASK_TYPE,
    JUDGE_METRICS,
    LLM_METRICS,
    PRESETS,
    REFERENCE_METRICS,
    MetricSpec,
    ParticipantSection,
    Preset,
    TaskSource,
    TaskType,
    build_participant,
    check_metric_models,
    collabllm_metrics,
    needs_model,
    preset_metrics,
    scoring_metrics,
)
from cruijff_kit.collab._conversation import (
    REWARD,
    Journal,
    ReplyCache,
    combined_reward,
    derive_seed,
    score_conversation,
    user_message,
)
from cruijff_kit.collab._functions import load_function
from cruijff_kit.collab._metrics import (
    EXTRACT_TYPES,
    ExtractedMetric,
    Metric,
    Outcome,
    build_metric,
    contains,
    count_tokens,
    exact_match,
    extract_answer,
    final_answer,
    last_number,
    normalize,
    numeric_match,
    pass_rate,
)
from cruijff_kit.collab._prompts import (
    EMPTY_HISTORY,
    GRADER_PROMPT,
    HISTORY_END,
    HISTORY_START,
    INTERACTIVITY_PROMPT,
    TERMINATION_MARKER,
    USER_PROMPT,
    prompt_text,
    render,
    render_history,
)
from cruijff_kit.collab._tasks import Task, conversation_ids, load_tasks
from cruijff_kit.collab._user import (
    MalformedReply,
    UserReply,
    UserSimulator,
    parse_json_object,
    parse_user_reply,
)

__all__ = [
    "ACCURACY_PROMPT", "COLLABLLM_INTERACTIVITY_PROMPT", "CONTINUATIONS", "DEFAULT_PRESET", "DEFAULT_TASK_TYPE",
    "EMPTY_HISTORY", "EXTRACT_PROMPT", "EXTRACT_TYPES", "GRADER_PROMPT", "HISTORY_END", "HISTORY_START",
    "INTERACTIVITY_PROMPT", "JUDGE_METRICS", "LLM_METRICS", "PRESETS", "REFERENCE_METRICS", "REWARD",
    "TERMINATION_MARKER", "USER_PROMPT", "WEIGHTS",
    "ExtractedMetric", "Journal", "MalformedReply", "Metric", "MetricSpec", "Outcome", "ParticipantSection",
    "Preset", "ReplyCache", "Task", "TaskSource", "TaskType", "UserReply", "UserSimulator",
    "accuracy_prompt", "build_metric", "build_participant", "candidate_score", "check_metric_models", "cl100k_file", "collabllm_metrics",
    "combined_reward", "contains", "conversation_ids",
    "count_cl100k", "count_tokens", "derive_seed", "exact_match", "extract_answer", "extraction_prompt",
    "final_answer", "interactivity_prompt", "judged_value", "last_number", "load_function", "load_tasks",
    "next_user_future", "normalize", "numeric_match", "parse_json_object", "parse_user_reply", "pass_rate",
    "needs_model", "preset_metrics", "prompt_text", "render", "render_history", "score_conversation", "scoring_metrics",
    "sentence_bleu", "session_rewards", "strip_system", "token_amount", "user_message",
]
