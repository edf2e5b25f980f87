"""The ``local`` assistant: a Hugging Face model (plus an optional PEFT adapter) in-process.

Calls from every conversation in flight are gathered into batches and generated together (left
padding, one ``generate`` per batch in a worker thread), so a GPU serves many conversations at once.
The adapter may be an adapter folder, an epoch folder, or a whole run folder (its last saved epoch, or
``epoch``), so any trainer's output plugs in. ``quantization: auto`` (the default) loads the base in
4-bit NF4 under an adapter trained with qlora, as it was trained, and in full precision otherwise;
``nf4`` and ``none`` force either (``load_in_4bit: true``/``false`` is the older spelling of nf4/none).
A 4-bit base where bitsandbytes is missing is an error, never a silent full-precision model.
torch, transformers and peft are imported in :meth:`LocalAssistant.open` only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from cruijff_kit import CkError, Simulator, SimulatorConfig, StageError


class LocalConfig(SimulatorConfig):
    """Options of the ``local`` assistant."""

    model: str = Field(..., description="Model folder or hub id (default: the spec's model.path).")
    adapter: str | None = Field(None, description="PEFT adapter: an adapter folder, an epoch folder or a "
                                "run folder (relative to the spec).")
    epoch: int | None = Field(None, ge=0, description="With a run folder: the 0-based epoch (default: last).")
    quantization: Literal["auto", "nf4", "none"] = Field(
        "auto", description="Base model: auto = 4-bit NF4 when the adapter was trained with qlora (as it was "
        "trained), else full precision; nf4 = 4-bit NF4 (bitsandbytes); none = full precision.")
    load_in_4bit: bool | None = Field(None, description="Older spelling of quantization: true = nf4, "
                                      "false = none (an error when quantization says otherwise).")
    batch_size: int = Field(8, gt=0, description="Most conversations generated together.")
    batch_wait: float = Field(0.01, ge=0.0, description="Seconds to wait for more requests to fill a batch.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    chat_template: str | None = Field(None, description="Jinja chat template overriding the tokenizer's.")

    @model_validator(mode="after")
    def _one_quantization(self) -> LocalConfig:
        if self.load_in_4bit is not None and "quantization" in self.model_fields_set \
                and self.quantization != self.base_quantization_choice():
            raise ValueError(f"load_in_4bit: {str(self.load_in_4bit).lower()} means quantization: "
                             f"{self.base_quantization_choice()}, but quantization is {self.quantization}; "
                             "remove load_in_4bit (quantization replaces it)")
        return self

    def base_quantization_choice(self) -> str:
        """``quantization``, or what ``load_in_4bit`` means when it is set (true: nf4, false: none)."""
        if self.load_in_4bit is not None:
            return "nf4" if self.load_in_4bit else "none"
        return self.quantization


_EPOCH = re.compile(r"^epoch_(\d+)$")


def resolve_adapter(path: Path, epoch: int | None = None) -> Path:
    """The adapter folder inside ``path`` (an adapter, an epoch folder or a run folder)."""
    if (path / "adapter_config.json").is_file():
        return path
    if (path / "adapter" / "adapter_config.json").is_file():
        return path / "adapter"
    train = path / "train" if (path / "train").is_dir() else path
    epochs = sorted((int(m.group(1)), p) for p in train.glob("epoch_*")
                    if (m := _EPOCH.match(p.name)) and (p / "adapter" / "adapter_config.json").is_file())
    if epoch is not None:
        for e, p in epochs:
            if e == epoch:
                return p / "adapter"
        raise CkError(f"{path} has no adapter for epoch {epoch} (saved: {[e for e, _ in epochs] or 'none'}).")
    if epochs:
        return epochs[-1][1] / "adapter"
    raise CkError(f"{path} holds no PEFT adapter (no adapter_config.json in it, in adapter/, or in "
                  "train/epoch_<N>/adapter/). Point `adapter` at a finished run folder or an adapter folder.")


@dataclass
class _Request:
    messages: list[dict[str, str]]
    generation: dict[str, Any]
    future: asyncio.Future[str]


@dataclass
class _Batches:
    count: int = 0
    requests: int = 0
    largest: int = 0
    sizes: list[int] = field(default_factory=list)


class LocalAssistant(Simulator):
    """A local HF model (with an optional adapter from any run folder) as the assistant."""

    name = "local"
    description = "A local Hugging Face model plus an optional PEFT adapter, batched across conversations."
    Config = LocalConfig
    #: ``model`` defaults to the spec's ``model.path`` when the section does not set it.
    spec_model_option = "model"

    def __init__(self, config: LocalConfig, base_dir: Path | None = None) -> None:  # type: ignore[override]
        super().__init__(config, base_dir)
        self.config: LocalConfig = config
        self._model: Any = None
        self._tok: Any = None
        self._device = "cpu"
        self._four_bit = False
        self._loading: dict[str, Any] = {}
        self._queue: asyncio.Queue[_Request] | None = None
        self._worker: asyncio.Task[None] | None = None
        self.batches = _Batches()

    # -- paths
    def model_path(self) -> str:
        """The model folder when it exists relative to the spec, else the name as given (a hub id)."""
        p = self.path(self.config.model)
        return str(p) if p.exists() else self.config.model

    def adapter_path(self) -> Path | None:
        """The resolved adapter folder, if one is configured."""
        if not self.config.adapter:
            return None
        p = self.path(self.config.adapter)
        if not p.exists():
            raise CkError(f"adapter {p} does not exist.")
        return resolve_adapter(p, self.config.epoch)

    def check(self, run: Any) -> None:
        """Plan time: the adapter (if any) resolves to an adapter folder."""
        self.adapter_path()

    def label(self) -> str:
        adapter = self.adapter_path()
        return f"local:{self.config.model}" + (f"+{adapter}" if adapter else "")

    def base_quantization(self, dtype: str = "float32") -> Any:
        """How the base loads (:class:`cruijff_kit.inference.BaseQuantization`): ``quantization: auto``
        follows the adapter's ``cruijff_kit.json`` (4-bit NF4 for a qlora adapter); ``dtype`` is the
        compute dtype of a 4-bit base whose adapter records none."""
        from cruijff_kit.inference import base_quantization

        choice = self.config.base_quantization_choice()
        quant = base_quantization(self.adapter_path(), choice, dtype=dtype, option="assistant.quantization")
        if self.config.load_in_4bit is not None:
            quant = dataclasses.replace(quant, reason=f"load_in_4bit: {str(self.config.load_in_4bit).lower()}")
        return quant

    # -- lifecycle
    def open(self) -> None:
        """Load tokenizer, model (4-bit when asked and possible) and adapter."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg = self.config
        self._device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
        adapter = self.adapter_path()
        tok_dir = adapter.parent if adapter and (adapter.parent / "tokenizer_config.json").is_file() else None
        self._tok = AutoTokenizer.from_pretrained(str(tok_dir or self.model_path()))
        if cfg.chat_template:
            self._tok.chat_template = cfg.chat_template
        if self._tok.pad_token is None:
            self._tok.pad_token = self._tok.eos_token
        self._tok.padding_side = "left"
        from cruijff_kit.training import supports_bf16

        kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if supports_bf16(self._device) else torch.float32}
        quant = self.base_quantization(str(kwargs["dtype"]).removeprefix("torch."))
        if quant.four_bit:
            from cruijff_kit.inference import require_nf4_backend

            if cfg.load_in_4bit is not None:
                require_nf4_backend(self._device, quant, option="load_in_4bit", off="false")
            else:
                require_nf4_backend(self._device, quant)
            kwargs["quantization_config"] = quant.bnb_config()
            kwargs["device_map"] = {"": self._device}
        self._loading = quant.record() | {"dtype": str(kwargs["dtype"]).removeprefix("torch.")}
        try:
            model = AutoModelForCausalLM.from_pretrained(self.model_path(), **kwargs)
        except OSError as exc:
            raise StageError(f"cannot load the local assistant's model {self.model_path()}: {exc}") from None
        self._four_bit = bool(getattr(model, "is_loaded_in_4bit", False))
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter))
        if "quantization_config" not in kwargs:
            model = model.to(self._device)
        model.eval()
        self._model = model

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        self._model = None

    def stats(self) -> dict[str, Any]:
        b = self.batches
        return {"batches": b.count, "largest_batch": b.largest, "4bit": self._four_bit, **self._loading,
                "mean_batch": round(b.requests / b.count, 2) if b.count else 0.0}

    # -- generation
    async def complete(self, messages: list[dict[str, str]], **generation: Any) -> str:
        """Queue the request; the batcher answers it together with the others in flight."""
        if self._model is None:
            raise StageError("the local assistant was not opened (call open() first).")
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._batcher())
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(messages, generation, future))
        return await future

    def _settings(self, generation: dict[str, Any]) -> tuple[float, int]:
        temp = generation.get("temperature", self.config.temperature)
        max_tokens = generation.get("max_tokens", self.config.max_tokens)
        return (0.7 if temp is None else float(temp)), (256 if max_tokens is None else int(max_tokens))

    async def _batcher(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            if self.config.batch_wait:
                await asyncio.sleep(self.config.batch_wait)
            while len(batch) < self.config.batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            groups: dict[tuple[float, int], list[_Request]] = {}
            for r in batch:
                groups.setdefault(self._settings(r.generation), []).append(r)
            for (temp, max_tokens), reqs in groups.items():
                seed = reqs[0].generation.get("seed")
                try:
                    texts = await asyncio.to_thread(self._generate, [r.messages for r in reqs], temp,
                                                    max_tokens, seed)
                except Exception as exc:
                    for r in reqs:
                        if not r.future.done():
                            r.future.set_exception(exc)
                    continue
                self.batches.count += 1
                self.batches.requests += len(reqs)
                self.batches.largest = max(self.batches.largest, len(reqs))
                for r, text in zip(reqs, texts, strict=True):
                    if not r.future.done():
                        r.future.set_result(text)

    def _generate(self, conversations: list[list[dict[str, str]]], temperature: float, max_tokens: int,
                  seed: int | None) -> list[str]:
        import torch

        tok, model = self._tok, self._model
        prompts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in conversations]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(input_device(model))
        if seed is not None:
            torch.manual_seed(int(seed))
        sample = temperature > 0
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=sample,
                                 temperature=temperature if sample else None, top_p=None, top_k=None,
                                 pad_token_id=tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        return [tok.decode(row, skip_special_tokens=True).strip() for row in new]


def input_device(model: Any) -> Any:
    """Where a model's inputs go: the device of its input embeddings (4-bit loading places the weights
    itself, which may not be the device this simulator was asked for)."""
    return model.get_input_embeddings().weight.device
