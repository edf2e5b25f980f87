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
* ``batch_size``: answers generated per batch (default: inspect's ``max_connections``, else 8);
* one base model per process: every ``ck/`` model of the process with the same base, device, dtype
  and quantization shares the loaded weights, each under its own adapter
  (:mod:`cruijff_kit_inspect.modelcache`), so the base and every checkpoint of a run evaluated in one
  process load the base once;
* batched generation without polling (:mod:`cruijff_kit_inspect.batching`);
* greedy decoding unless ``do_sample=True`` (sampling settings are dropped when greedy);
* a trailing assistant message is a prefilled answer start that the model continues;
* log-probability tokens as text (``" 1"``, not the tokenizer's ``"Ġ1"``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

# Private: inspect-ai exports no public base for its hf provider or the helpers below (checked for
# 0.3.285); pin inspect-ai tightly. tests/test_public_apis.py lists every such import and why.
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
from cruijff_kit_inspect.modelcache import BASES, Holder

__all__ = ["TOKENIZER_FILES", "CkModelAPI", "resolve_device", "resolve_dtype", "tokenizer_dir"]

#: Model args of inspect's hf provider that do not go to ``from_pretrained``.
_HF_ARGS = ("tokenizer", "model_path", "tokenizer_path", "chat_template", "use_chat_template",
            "tokenizer_call_args", "enable_thinking", "hidden_states", "trust_remote_code", "auto_model_class")


def _key_value(value: Any) -> Hashable:
    """A hashable, comparable form of a ``from_pretrained`` argument (for the base model's cache key)."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), _key_value(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_key_value(v) for v in value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    to_dict = getattr(value, "to_dict", None)  # e.g. a BitsAndBytesConfig
    if callable(to_dict):
        return (type(value).__name__, _key_value(to_dict()))
    return repr(value)


class CkModelAPI(HuggingFaceAPI):
    """inspect's hf provider with a PEFT adapter, the base's quantization, dtype, batch size, greedy
    default, prefill, a base model shared across the process and batching without polling."""

    def __init__(self, model_name: str, base_url: str | None = None, api_key: str | None = None,
                 config: GenerateConfig = GenerateConfig(), **model_args: Any) -> None:
        from inspect_ai.model import ModelAPI

        # Private: the hf provider's token and seeding helpers have no public export (inspect-ai pinned to 0.3.285).
        from inspect_ai.model._providers.hf import HF_TOKEN, hub_token, set_random_seeds

        adapter = model_args.pop("adapter", None)
        merge = bool(model_args.pop("merge", False))
        self._batch_size = model_args.pop("batch_size", None)
        quantization = str(model_args.pop("quantization", None) or "auto")
        device = resolve_device(model_args.pop("device", None))
        dtype = resolve_dtype(model_args.pop("dtype", None), device)
        do_sample = model_args.pop("do_sample", None)
        adapter_path = Path(adapter).expanduser() if adapter else None
        if adapter_path is not None:
            if not (adapter_path / "adapter_config.json").is_file():
                raise FileNotFoundError(f"{adapter_path} is not a PEFT adapter folder (no adapter_config.json)")
            tok = tokenizer_dir(adapter_path)
            if tok is not None and "tokenizer" not in model_args:
                model_args["tokenizer"] = str(tok)
        dtype_name = str(dtype).removeprefix("torch.")
        quant = base_quantization(adapter_path, quantization, dtype=dtype_name)
        load_args: dict[str, Any] = {"dtype": dtype}
        if quant.four_bit:
            if merge and adapter_path is not None:
                raise SpecError("cannot merge an adapter into a 4-bit NF4 base: the merged weights would be "
                                f"rounded back to 4 bits, losing most of the adapter ({quant.reason}).",
                                path="merge", hint="Drop merge (the adapter is applied on top of the 4-bit "
                                "base), or set quantization: none to merge into a full-precision base.")
            require_nf4_backend(device, quant)
            load_args["quantization_config"] = quant.bnb_config()
        #: How the base was loaded: ``{"quantization": "nf4"|"none", "dtype": ...}`` (+ 4-bit settings).
        self.quantization = quant.record() | {"dtype": dtype_name}

        ModelAPI.__init__(self, model_name=model_name, base_url=base_url, api_key=api_key,
                          api_key_vars=[HF_TOKEN], config=config)
        if config.seed is not None:
            set_random_seeds(config.seed)
        hf = {name: model_args.pop(name) for name in _HF_ARGS if model_args.get(name) is not None}
        self.device = device
        self.batch_size = self._batch_size
        self.chat_template = hf.get("chat_template")
        self.use_chat_template = hf.get("use_chat_template")
        self.tokenizer_call_args = dict(hf.get("tokenizer_call_args") or {})
        self.enable_thinking = hf.get("enable_thinking")
        self.hidden_states = hf.get("hidden_states")
        self.do_sample = bool(do_sample) if do_sample is not None else False
        trust = hf.get("trust_remote_code", False)
        if not isinstance(trust, bool):
            raise ValueError("trust_remote_code must be a bool")
        loader_name = hf.get("auto_model_class")
        source = str(hf.get("model_path") or model_name)
        load_args.update(model_args)  # the rest goes to from_pretrained, as in inspect's hf provider
        token = hub_token(self.api_key)

        def load() -> Any:
            import transformers

            loader = getattr(transformers, str(loader_name)) if loader_name else transformers.AutoModelForCausalLM
            model = loader.from_pretrained(source, device_map=device, token=token, trust_remote_code=trust,
                                           **load_args)
            model.eval()
            return model

        where = Path(source).expanduser()
        key = (str(where.resolve()) if where.exists() else source, device, loader_name, trust,
               _key_value(load_args))
        self._holder = Holder.new(key, load, str(adapter_path) if adapter_path else None, merge)
        self.model  # noqa: B018  (load the base now, as inspect's hf provider does, so errors show at start)

        from transformers import AutoTokenizer

        tok_source = hf.get("tokenizer") or hf.get("tokenizer_path") or source
        self.tokenizer = AutoTokenizer.from_pretrained(str(tok_source), token=token, trust_remote_code=trust)
        self.tokenizer.pad_token = self.tokenizer.eos_token  # inspect's hf provider does the same
        self.tokenizer.padding_side = "left"
        self.adapter = str(adapter_path) if adapter_path else None

    # ------------------------------------------------------------------ the shared model
    @property
    def model(self) -> Any:  # type: ignore[override]
        """This model's base under its adapter (the process-wide base, swapped to this adapter)."""
        return BASES.model(self._holder)

    @model.setter
    def model(self, value: Any) -> None:
        """inspect's ``close()`` sets None: release a merged model; the shared base stays."""
        if value is None and hasattr(self, "_holder"):
            BASES.release(self._holder)

    def max_connections(self) -> int:
        """The batch size of local generation."""
        return int(self._batch_size or 8)

    def hf_chat(self, messages: list[ChatMessage], tools: list[ToolInfo]) -> str:
        """Render the chat; a trailing assistant message is continued, not closed."""
        if messages and messages[-1].role == "assistant" and not tools:
            prefix = messages[-1].text
            return super().hf_chat(list(messages[:-1]), tools) + prefix
        return super().hf_chat(messages, tools)

    # ------------------------------------------------------------------ generation
    def _generate_kwargs(self, config: GenerateConfig) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"do_sample": self.do_sample}
        if config.max_tokens is not None:
            kwargs["max_new_tokens"] = config.max_tokens
        if self.do_sample:  # greedy decoding drops sampling settings
            for name in ("temperature", "top_p", "top_k"):
                if getattr(config, name) is not None:
                    kwargs[name] = getattr(config, name)
        if config.logprobs is not None:
            kwargs["output_logits"] = config.logprobs
        if self.hidden_states is not None:
            kwargs["output_hidden_states"] = self.hidden_states
        return kwargs

    def _run_batch(self, prompts: Sequence[str], kwargs: dict[str, Any], stop: list[str] | None,
                   top_logprobs: int | None = None) -> list[tuple[Any, Any]]:
        """Generate one batch on the worker thread (the shared model is locked meanwhile): per prompt,
        inspect's ``GenerateOutput`` and its log-probabilities (tokens as text) when asked for.

        Everything that uses the tokenizer runs here, on the one worker thread, never concurrently.
        """
        import torch

        # Private: the hf provider's output type, logprob and hidden-state helpers have no public export
        # (inspect-ai pinned to 0.3.285).
        from inspect_ai.model._providers.hf import GenerateOutput, extract_logprobs
        from inspect_ai.model._providers.util.hidden_states import hidden_states_to_jsonable

        start = time.monotonic()
        with BASES.lock:
            model = self.model
            enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True, **self.tokenizer_call_args)
            input_ids = enc["input_ids"].to(model.device)
            attention_mask = enc["attention_mask"].to(model.device)
            if stop:
                from transformers.generation import StopStringCriteria

                kwargs = {**kwargs, "stopping_criteria": [StopStringCriteria(self.tokenizer, stop)]}
            with torch.inference_mode():
                out = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                     return_dict_in_generate=True, **kwargs)
        logprobs = None
        if getattr(out, "logits", None) is not None:
            logprobs = torch.nn.functional.log_softmax(torch.stack(out.logits).transpose(0, 1).float(), dim=-1)
        width = input_ids.size(dim=1)
        new = out.sequences[:, width:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        elapsed = time.monotonic() - start
        n_out = int(out.sequences.size(dim=1)) - width
        results = []
        for i, text in enumerate(texts):
            response = GenerateOutput(output=text, input_tokens=width, output_tokens=n_out,
                                      total_tokens=width + n_out,
                                      logprobs=logprobs[i] if logprobs is not None else None,
                                      hidden_states=hidden_states_to_jsonable(getattr(out, "hidden_states", None),
                                                                              sample_index=i),
                                      time=elapsed)
            tops = None
            if logprobs is not None:
                tops = extract_logprobs(response=response, top=top_logprobs, tokenizer=self.tokenizer)
                for lp in tops:
                    lp.token = self._token_text(lp.token)
                    lp.bytes = list(lp.token.encode("utf-8"))
                    for top in lp.top_logprobs or []:
                        top.token = self._token_text(top.token)
                        top.bytes = list(top.token.encode("utf-8"))
            results.append((response, tops))
        return results

    async def generate(self, input: list[ChatMessage], tools: list[ToolInfo], tool_choice: ToolChoice,
                       config: GenerateConfig) -> ModelOutput:
        """Generate in a batch with the other samples; log-probability tokens as text."""
        from inspect_ai.model import ChatCompletionChoice, Logprobs, ModelUsage

        # Private: the hf provider's message builder and tool-call parser have no public export
        # (inspect-ai pinned to 0.3.285).
        from inspect_ai.model._providers.hf import chat_completion_assistant_message
        from inspect_ai.model._providers.util import HFHandler

        from cruijff_kit_inspect.batching import batcher

        handler = HFHandler(self.model_name, self.model_family()) if tools else None
        chat = self.hf_chat(input, tools)
        kwargs = self._generate_kwargs(config)
        stop = list(config.stop_seqs) if config.stop_seqs else None
        top = config.top_logprobs if config.logprobs is not None else None
        key = (self._holder.token, tuple(sorted((k, repr(v)) for k, v in kwargs.items())), tuple(stop or ()), top)
        batch_size = int(self._batch_size or config.max_connections or 8)
        run = functools.partial(self._run_batch, kwargs=kwargs, stop=stop, top_logprobs=top)
        response, logprobs = await batcher().submit(key, chat, run, batch_size)
        choice = ChatCompletionChoice(
            message=chat_completion_assistant_message(response, tools, handler, self.model_name),
            logprobs=Logprobs(content=logprobs) if logprobs is not None else None)
        return ModelOutput(model=self.model_name, choices=[choice],
                           usage=ModelUsage(input_tokens=response.input_tokens, output_tokens=response.output_tokens,
                                            total_tokens=response.total_tokens),
                           time=response.time,
                           metadata={"hidden_states": response.hidden_states}
                           if response.hidden_states is not None else None)

    def _token_text(self, token: str) -> str:
        try:
            return str(self.tokenizer.convert_tokens_to_string([token]))
        except Exception:  # a tokenizer that cannot map one token: keep the raw piece
            return token
