"""Regenerate expected.json with the official CollabLLM code (run in its own environment, not the project's).

    python -m venv /tmp/collabllm-env && /tmp/collabllm-env/bin/pip install collabllm==0.0.8 nltk==3.9.1
    git clone https://github.com/microsoft/CollabLLM /tmp/CollabLLM   # for examples/metrics
    /tmp/collabllm-env/bin/python tests/data/collabllm_reward/regenerate.py --collabllm-repo /tmp/CollabLLM

The official ``multiturn_aware_reward`` is called on each scripted case with the session simulator
replaced by the scripted sessions and ``litellm.completion`` by the scripted judge (the reply is chosen
by the prompt kind and the ``[sN]`` tag of the session in the prompt). tiktoken needs cl100k_base: set
TIKTOKEN_CACHE_DIR to litellm's ``litellm_core_utils/tokenizers`` folder to run offline. Every judge
prompt sent is recorded (sha256) so the test can check the project sends the same text.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--collabllm-repo", required=True, help="a checkout of microsoft/CollabLLM (examples/metrics)")
    args = ap.parse_args()
    sys.path.insert(0, args.collabllm_repo)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import importlib.metadata
    import importlib.util
    import types

    for heavy in ("torch", "transformers", "peft"):  # imported by collabllm's simulator, unused here
        if importlib.util.find_spec(heavy) is None:
            stub = types.ModuleType(heavy)
            stub.__getattr__ = lambda name: type(name, (), {})  # type: ignore[attr-defined]
            sys.modules[heavy] = stub
    import litellm

    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(Path(litellm.__file__).parent / "litellm_core_utils" / "tokenizers"))

    import collabllm.metric as metric_mod
    import collabllm.reward as reward
    import examples.metrics.accuracy  # noqa: F401  (registers the metrics)
    import examples.metrics.bleu  # noqa: F401
    import examples.metrics.efficiency  # noqa: F401
    import examples.metrics.interactivity  # noqa: F401

    weights_by_type = {
        "question-answering": (["accuracy", "interactivity", "token_amount"], [1.0, 0.5, -0.5]),
        "document-editing": (["document->bleu", "token_amount"], [1.0, -0.1]),
    }
    cases = json.loads((HERE / "scripts.json").read_text(encoding="utf-8"))["cases"]
    out = {"collabllm": importlib.metadata.version("collabllm"), "cases": []}
    for case in cases:
        prompts: dict[str, str] = {}

        def completion(*, messages, case=case, prompts=prompts, **_kw):
            text = messages[-1]["content"]
            tag = re.search(r"\[(s\d)\]", text).group(1)
            kind = ("accuracy" if "*accuracy*" in text else "interactivity" if "*interactivity*" in text
                    else "extract")
            prompts[f"{tag}:{kind}"] = hashlib.sha256(text.encode()).hexdigest()
            reply = case["judge"][tag][kind]
            return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=reply))])

        litellm.completion = completion
        sys.modules["examples.metrics.accuracy"].litellm.completion = completion
        sys.modules["examples.metrics.interactivity"].litellm.completion = completion
        metric_mod.litellm.completion = completion
        sessions = case["sessions"]
        reward.ChatSessionSimulator.run_chat_simulation = lambda self, sessions=sessions, **kw: [list(s) for s in sessions]
        names, weights = weights_by_type[case["task_type"]]
        rewards, kept = reward.multiturn_aware_reward(
            task_desc="", single_turn_prompt=case["task"], single_turn_completion=case["reference"],
            metric_names=names, metric_weights=weights, metadata={}, return_details=True,
            reward_generation_kwargs={"model": "scripted"}, max_metric_workers=1)
        score = sum(rewards["MR"]) / len(rewards["MR"])
        longest = sorted(range(len(kept)), key=lambda i: len(kept[i]))[-1]
        out["cases"].append({"name": case["name"], "rewards": {k: [float(x) for x in v] for k, v in rewards.items()},
                             "score": score, "next_user_future": longest, "prompt_sha256": prompts})
    (HERE / "expected.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps(out, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
