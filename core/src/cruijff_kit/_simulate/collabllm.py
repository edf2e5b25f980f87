"""The ``collabllm`` scoring preset (microsoft/CollabLLM's multiturn-aware reward, computed the same way):
moved to the public :mod:`cruijff_kit.collab` (shared with the multi-turn eval task); re-exported here."""

from __future__ import annotations

import importlib.util  # noqa: F401  (tests patch collabllm.importlib.util.find_spec, as before the move)

from cruijff_kit.collab._collabllm import (
    ACCURACY_PROMPT,
    CL100K_NAME,
    CL100K_SHA256,
    CONTINUATIONS,
    INTERACTIVITY_PROMPT,
    WEIGHTS,
    Judge,
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

__all__ = ["ACCURACY_PROMPT", "CL100K_NAME", "CL100K_SHA256", "CONTINUATIONS", "INTERACTIVITY_PROMPT", "WEIGHTS",
           "Judge", "accuracy_prompt", "candidate_score", "cl100k_file", "count_cl100k", "extraction_prompt",
           "interactivity_prompt", "judged_value", "next_user_future", "sentence_bleu", "session_rewards",
           "strip_system", "token_amount"]
