"""The prepared GPU check runs every step on the CPU with ``--dry-run``, and each step passes.

``benchmarks/gpu/check.py --dry-run`` trains (trl LoRA, QLoRA, DPO with QLoRA, torchtune LoRA),
evaluates with inspect and loads adapters with the inference API, all through the real ``ck`` CLI
on a tiny model; vLLM is skipped. What the numbers are is not checked (CPU, shared machine); that the
promised ones are printed, positive and finite is.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu" / "check.py"

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500),
              pytest.mark.skipif(os.environ.get("CK_SLOW") != "1", reason="slow tier: set CK_SLOW=1")]

#: Every step the check promises, in order, and the numbers each must print.
STEPS = {
    "setup: device, model, data": ["hidden_size", "layers"],
    "trl LoRA (ck stage train)": ["stage_wall_s", "tokens_per_s_logged", "adapter_kb", "base_kb", "lora_b_max"],
    "plain TRL SFTTrainer (same rows, config)": ["tokens", "plain_tokens_per_s_in_train",
                                                 "plain_tokens_per_s_process", "ck_tokens_per_s_process"],
    "trl QLoRA 4-bit": ["stage_wall_s", "linear4bit_layers", "adapter_kb", "lora_b_max"],
    "DPO with QLoRA": ["stage_wall_s", "pairs", "adapter_kb", "lora_b_max"],
    "torchtune LoRA": ["stage_wall_s", "adapter_effect", "tokens_per_s_logged"],
    "inspect eval base + adapter, batch 8 == batch 1": ["base_samples_per_s", "epoch_0_samples_per_s"],
    "plain batched generate": ["plain_samples_per_s", "eval_over_plain_rate"],
    "inference API base + adapter": ["generate_samples_per_s", "adapter_logprob_effect"],
}
VLLM = "vLLM with the r=8 adapter"


def positive(text: str) -> float:
    value = float(text)
    assert math.isfinite(value) and value > 0, text
    return value


def test_dry_run_runs_every_step_on_cpu() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                         timeout=1400, env=env)
    out = res.stdout
    assert res.returncode == 0, f"check.py --dry-run exited {res.returncode}:\n{out}\n{res.stderr[-4000:]}"
    lines = {}
    for line in out.splitlines():
        found = re.match(r"(PASS|FAIL|SKIP) (.+?) \((\d+\.\d) s\)(.*)$", line)
        if found:
            lines[found.group(2)] = (found.group(1), float(found.group(3)), found.group(4))
    assert list(lines) == [*STEPS, VLLM], out
    assert lines[VLLM][0] == "SKIP"
    for name, wanted in STEPS.items():
        verdict, _seconds, detail = lines[name]
        assert verdict == "PASS", f"{name}: {verdict} {detail}"
        numbers = dict(re.findall(r"(\w+)=(\S+)", detail))
        for key in wanted:
            assert key in numbers, f"{name}: no {key} in {detail!r}"
            positive(numbers[key])
    # the chosen device and precision are asserted by the steps; here they are also printed
    assert "device=cpu" in lines["setup: device, model, data"][2]
    assert "precision=fp32" in lines["torchtune LoRA"][2] and "precision=fp32" in lines["trl LoRA (ck stage train)"][2]
    assert lines["trl QLoRA 4-bit"][2].count("linear4bit_layers=14")  # 7 linear layers x 2 decoder layers
    summary = re.search(r"total (\d+\.\d) s; 9 passed, 0 failed, 1 skipped", out)
    assert summary and positive(summary.group(1)), out
