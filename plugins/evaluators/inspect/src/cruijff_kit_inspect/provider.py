"""The ``ck`` model provider for inspect-ai: a local base model plus an optional PEFT adapter.

Registered with inspect through its extension mechanism (entry point group ``inspect_ai``, see
:mod:`cruijff_kit_inspect._registry`), so ``inspect eval ... --model ck//abs/base -M adapter=DIR``
works outside cruijff-kit as well. It extends inspect's ``hf`` provider with:

* ``adapter``: a PEFT adapter folder (any trainer's output) applied on top of the base model, in
  memory; ``merge: true`` merges it into the weights after loading (faster generation);
* ``dtype``: ``auto`` (bfloat16 on a GPU that supports it, float32 otherwise), ``float32``,
  ``bfloat16`` or ``float16``; ``device`` (``auto`` or a torch device);
* ``quantization``: ``auto`` (default: the base in 4-bit NF4 when the adapter's ``cruijff_kit.json``
  says it was trained with qlora, with the recorded settings; else full precision), ``nf4`` or
  ``none`` (full precision in ``dtype``); what was loaded is :attr:`CkModelAPI.quantization`;
* ``batch_size``: answers generated per batch (inspect's ``max_connections`` overrides it);
* greedy decoding unless ``do_sample=True`` (sampling settings are dropped when greedy);
* a trailing assistant message is a prefilled answer start that the model continues;
* log-probability tokens as text (``" 1"``, not the tokenizer's ``"Ġ1"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inspect_ai.model import ChatMessage, GenerateConfig, ModelOutput
from inspect_ai.model._providers.hf import HuggingFaceAPI
from inspect_ai.tool import ToolChoice, ToolInfo

from cruijff_kit import SpecError
from cruijff_kit.inference import (
    TOKENIZER_FILES,
    base_quantization,
    require_nf4_backend,
    resolve_device,
    resolve_dtype,
    tokenizer_dir,
)

__all__ = ["TOKENIZER_FILES", "CkModelAPI", "resolve_device", "resolve_dtype", "tokenizer_dir"]


class CkModelAPI(HuggingFaceAPI):
    """inspect's hf provider with a PEFT adapter, the base's quantization, dtype, batch size, greedy
    default and prefill."""

    def __init__(self, model_name: str, base_url: str | None = None, api_key: str | None = None,
                 config: GenerateConfig = GenerateConfig(), **model_args: Any) -> None:
        adapter = model_args.pop("adapter", None)
        merge = bool(model_args.pop("merge", False))
        self._batch_size = model_args.pop("batch_size", None)
        quantization = str(model_args.pop("quantization", None) or "auto")
        device = resolve_device(model_args.pop("device", None))
        model_args["device"] = device
        model_args["dtype"] = resolve_dtype(model_args.pop("dtype", None), device)
        model_args.setdefault("do_sample", False)
        adapter_path = Path(adapter).expanduser() if adapter else None
        if adapter_path is not None:
            if not (adapter_path / "adapter_config.json").is_file():
                raise FileNotFoundError(f"{adapter_path} is not a PEFT adapter folder (no adapter_config.json)")
            tok = tokenizer_dir(adapter_path)
            if tok is not None and "tokenizer" not in model_args:
                model_args["tokenizer"] = str(tok)
        dtype_name = str(model_args["dtype"]).removeprefix("torch.")
        quant = base_quantization(adapter_path, quantization, dtype=dtype_name)
        if quant.four_bit:
            if merge and adapter_path is not None:
                raise SpecError("cannot merge an adapter into a 4-bit NF4 base: the merged weights would be "
                                f"rounded back to 4 bits, losing most of the adapter ({quant.reason}).",
                                path="merge", hint="Drop merge (the adapter is applied on top of the 4-bit "
                                "base), or set quantization: none to merge into a full-precision base.")
            require_nf4_backend(device, quant)
            model_args["quantization_config"] = quant.bnb_config()
        #: How the base was loaded: ``{"quantization": "nf4"|"none", "dtype": ...}`` (+ 4-bit settings).
        self.quantization = quant.record() | {"dtype": dtype_name}
        super().__init__(model_name, base_url=base_url, api_key=api_key, config=config, **model_args)
        if adapter_path is not None:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, str(adapter_path))
            if merge:
                self.model = self.model.merge_and_unload()
        self.model.eval()
        self.adapter = str(adapter_path) if adapter_path else None

    def max_connections(self) -> int:
        """The batch size of local generation."""
        return int(self._batch_size or 8)

    def hf_chat(self, messages: list[ChatMessage], tools: list[ToolInfo]) -> str:
        """Render the chat; a trailing assistant message is continued, not closed."""
        if messages and messages[-1].role == "assistant" and not tools:
            prefix = messages[-1].text
            return super().hf_chat(list(messages[:-1]), tools) + prefix
        return super().hf_chat(messages, tools)

    async def generate(self, input: list[ChatMessage], tools: list[ToolInfo], tool_choice: ToolChoice,
                       config: GenerateConfig) -> ModelOutput:
        """Generate; drop sampling settings when greedy; log-probability tokens as text."""
        if not self.do_sample:
            config = config.model_copy(update={"temperature": None, "top_p": None, "top_k": None})
        output = await super().generate(input, tools, tool_choice, config)
        for choice in output.choices:
            if choice.logprobs is None:
                continue
            for lp in choice.logprobs.content:
                lp.token = self._token_text(lp.token)
                lp.bytes = list(lp.token.encode("utf-8"))
                for top in lp.top_logprobs or []:
                    top.token = self._token_text(top.token)
                    top.bytes = list(top.token.encode("utf-8"))
        return output

    def _token_text(self, token: str) -> str:
        try:
            return str(self.tokenizer.convert_tokens_to_string([token]))
        except Exception:  # a tokenizer that cannot map one token: keep the raw piece
            return token
