"""The ``inspect`` evaluator: one inspect-ai eval per (task, target) stage."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from cruijff_kit import CkError, Evaluator, StageError
from cruijff_kit.files import scrub
from cruijff_kit_inspect.collab_config import COLLAB_TASK
from cruijff_kit_inspect.config import InspectConfig

if TYPE_CHECKING:  # pragma: no cover
    from cruijff_kit import PlannedRun, StageContext


OPENAI_HOST = "api.openai.com"
BASE_URL_VARS = ("OPENAI_BASE_URL", "INSPECT_EVAL_MODEL_BASE_URL")
"""Where inspect's ``openai`` provider reads its base URL when the eval sets no ``base_url``."""


def compatible_base_url(cfg: InspectConfig) -> str | None:
    """The base URL of an ``openai/`` model when it is not OpenAI's own API, else None.

    ``base_url`` of the eval, else ``$OPENAI_BASE_URL`` (or ``$INSPECT_EVAL_MODEL_BASE_URL``), as
    inspect resolves it; Azure and Bedrock deployments (``openai/azure/...``) are OpenAI's service.
    """
    if not cfg.model or not cfg.model.startswith("openai/") or cfg.model.split("/")[1] in ("azure", "bedrock"):
        return None
    url = cfg.base_url or next((os.environ[v] for v in BASE_URL_VARS if os.environ.get(v)), None)
    if not url or (urlsplit(url).hostname or "").lower() == OPENAI_HOST:
        return None
    return url


#: The ``max_lora_rank`` values every vLLM release with LoRA serving accepts: vLLM 0.11 and later also take 1
#: (``MaxLoRARanks`` in ``vllm/config/lora.py``), older releases refuse it, so rank 1 to 8 is served as 8.
VLLM_MAX_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
#: Modules vLLM does not serve as LoRA (no LoRA layers for the embeddings or the output head).
VLLM_UNSERVABLE_MODULES = ("lm_head", "embed_tokens")
_DEVICE_IDS = re.compile(r"\d+(,\d+)*")
#: Resolved training precisions as torch dtype names.
_PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def vllm_devices(device: str) -> str | None:
    """The GPU list the vllm provider takes as ``device`` (its ``CUDA_VISIBLE_DEVICES``), or None to let it choose.

    ``auto`` and ``cuda`` -> None; ``cuda:1`` -> ``"1"``; ``cuda:0,1`` and ``0,1`` -> ``"0,1"``. Anything
    else (``cpu``, ``mps``, ``cuda:x``) raises ValueError: vLLM serves on CUDA GPUs named by index.
    """
    value = device.strip()
    if value in ("auto", "cuda"):
        return None
    ids = value.removeprefix("cuda:").replace(" ", "")
    if _DEVICE_IDS.fullmatch(ids):
        return ids
    raise ValueError(f"device: {device} is not a GPU vLLM can serve on. With backend: vllm use auto or cuda "
                     "(vLLM chooses), cuda:1 (one GPU by index) or cuda:0,1 (several), or set backend: hf "
                     f"for {value}.")


def stage_devices(ids: str, visible: str | None) -> str:
    """The GPUs ``ids`` (indices among the GPUs this stage was given) as the vLLM server's ``CUDA_VISIBLE_DEVICES``.

    The provider sets its server's ``CUDA_VISIBLE_DEVICES`` to the list it is handed, which names the
    machine's GPUs; ``device: cuda:1`` counts the stage's own. ``visible`` is this process's
    ``CUDA_VISIBLE_DEVICES``: each index picks its entry (``2,3`` with ``1`` -> ``3``); unset, the stage
    sees every GPU and indices pass as they are. An index beyond the list raises StageError.
    """
    if visible is None:
        return ids
    seen = [v.strip() for v in visible.split(",") if v.strip()]
    wanted = [int(i) for i in ids.split(",")]
    beyond = [i for i in wanted if i >= len(seen)]
    if beyond:
        has = f"{len(seen)} GPU(s), indices 0 to {len(seen) - 1}" if seen else "no GPU"
        raise StageError(f"device asks for GPU index {beyond[0]}, but this eval stage was given {has} "
                         f"(CUDA_VISIBLE_DEVICES={visible!r}; device indices count within that list). Set device: "
                         "auto or cuda (vLLM serves on the stage's GPUs), or an index below the stage's GPU count, or "
                         "give eval stages more GPUs (scheduler.eval_resources.gpus).")
    return ",".join(seen[i] for i in wanted)


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds an adapter of LoRA rank ``rank``.

    Raises ValueError above the largest (512): such an adapter must be merged (``merge_adapter: disk``).
    """
    for size in VLLM_MAX_LORA_RANKS:
        if size >= rank:
            return size
    raise ValueError(f"LoRA rank {rank} is above the largest rank vLLM serves ({VLLM_MAX_LORA_RANKS[-1]}). Set "
                     "merge_adapter: disk (vLLM then serves a merged copy, no LoRA), or set backend: hf.")


def adapter_rank(adapter_config: dict[str, Any]) -> int:
    """The largest LoRA rank of an ``adapter_config.json``: ``r``, or a larger value of its ``rank_pattern``."""
    ranks = [int(adapter_config.get("r") or 0)]
    ranks += [int(v) for v in (adapter_config.get("rank_pattern") or {}).values()]
    return max(ranks)


def vllm_unservable(targets: list[str] | str | None, modules_to_save: list[str] | None) -> list[str]:
    """What of an adapter vLLM cannot serve as LoRA: LoRA on ``lm_head``/``embed_tokens``, ``modules_to_save``.

    ``targets`` is ``target_modules`` of ``adapter_config.json`` (a list, or a regular expression) or the
    run's ``train.lora.targets``.
    """
    if isinstance(targets, str):
        hits = [m for m in VLLM_UNSERVABLE_MODULES if m in targets]
    else:
        hits = [t for t in targets or [] if t.rsplit(".", 1)[-1] in VLLM_UNSERVABLE_MODULES]
    out = [f"LoRA on {t}" for t in hits]
    if modules_to_save:
        out.append(f"modules_to_save {list(modules_to_save)}")
    return out


def read_adapter_config(adapter: Path) -> dict[str, Any] | None:
    """``adapter_config.json`` of an adapter folder, or None when there is none."""
    path = Path(adapter) / "adapter_config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CkError(f"{path} cannot be read as JSON ({exc}). Give an adapter folder a trainer wrote, or "
                      "repair the file.") from None
    if not isinstance(data, dict):
        raise CkError(f"{path} is not a JSON object (an adapter_config.json maps names to values). Give an "
                      "adapter folder a trainer wrote, or repair the file.")
    return data


def vllm_args(cfg: InspectConfig, adapter: Path | None, chat_template: str | None = None) -> dict[str, Any]:
    """Server args of inspect's vllm provider for the run's model (+ ``adapter``).

    ``dtype`` unless auto; ``device`` as the GPU list the provider expects (:func:`vllm_devices`, mapped
    through this process's ``CUDA_VISIBLE_DEVICES`` by :func:`stage_devices`);
    ``max_lora_rank`` rounded up to a size vLLM accepts (the provider passes the adapter's raw ``r``,
    which vLLM refuses unless it is one of its sizes, and ignores ``rank_pattern``); ``tokenizer``, the
    folder with the tokenizer saved next to the adapter; ``chat_template``, a file with the training
    chat template.
    """
    from cruijff_kit.inference import tokenizer_dir

    args: dict[str, Any] = {}
    if cfg.dtype != "auto":
        args["dtype"] = cfg.dtype
    try:
        devices = vllm_devices(cfg.device)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    if devices is not None:
        args["device"] = stage_devices(devices, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if adapter is not None:
        config = read_adapter_config(adapter)
        if config is not None and adapter_rank(config) > 0:
            try:
                args["max_lora_rank"] = vllm_max_lora_rank(adapter_rank(config))
            except ValueError as exc:
                raise StageError(f"adapter {adapter}: {exc}") from None
        tok = tokenizer_dir(adapter)
        if tok is not None:
            args["tokenizer"] = str(tok)
    else:
        # The provider's server entry of a base model keeps the LoRA settings of an adapter target this
        # process served before (a grouped stage), and would start the base's server with that adapter's
        # raw rank, which vLLM refuses unless it is one of its sizes: the base names a size it accepts.
        args["max_lora_rank"] = VLLM_MAX_LORA_RANKS[0]
    if chat_template:
        args["chat_template"] = chat_template
    return args


def write_chat_template(value: str | None, resolve: Any, folder: Path) -> str | None:
    """``train.chat_template`` (text, or a ``.jinja`` file) written to ``folder/chat_template.jinja``.

    vLLM reads ``--chat-template`` as a file, or as single-line text with escapes decoded, which would
    change a template holding backslashes; a file keeps it as trained. Returns the file's path.
    """
    from cruijff_kit.training import chat_template_text

    text = chat_template_text(value, resolve)
    if not text:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "chat_template.jinja"
    path.write_text(text, encoding="utf-8")
    return str(path)


def model_for(cfg: InspectConfig, model_path: str, adapter: Path | None, chat_template: str | None = None,
              quantization: str | None = None) -> tuple[str, dict[str, Any]]:
    """The inspect model string and model args that evaluate ``model_path`` (+ ``adapter``).

    ``quantization`` is how the base loads as decided for this target (``nf4`` or ``none``, see
    :func:`base_loading`); default the eval's ``quantization`` option (``auto``: the ``ck`` provider
    follows the adapter). The vllm backend refuses a 4-bit base. An ``openai/`` model served at another
    base URL (an OpenAI-compatible server) speaks chat completions unless ``model_args.responses_api``
    asks for the responses API: inspect would pick the responses API by the model's name, which such
    servers rarely offer. With vllm, ``chat_template`` is a file (see :func:`write_chat_template`) and
    the model args are :func:`vllm_args`.
    """
    quantization = quantization or cfg.quantization
    if cfg.model:
        args = dict(cfg.model_args)
        if "responses_api" not in args and compatible_base_url(cfg) is not None:
            args["responses_api"] = False
        return cfg.model, args
    if cfg.backend == "vllm":
        if quantization == "nf4":
            raise StageError("the base model must load in 4-bit NF4 here (the adapter was trained with qlora, or "
                             "quantization: nf4), and backend: vllm loads it in full precision only. Set backend: "
                             "hf to evaluate on the 4-bit base, or quantization: none for a full-precision "
                             "evaluation (the results then say quantization: none).")
        name = f"vllm/{model_path}" + (f":{adapter}" if adapter else "")
        return name, vllm_args(cfg, adapter, chat_template)
    args = {"device": cfg.device, "dtype": cfg.dtype, "batch_size": local_batch_size(cfg),
            "do_sample": cfg.generation.sample}
    if adapter is not None:
        args["adapter"] = str(adapter)
        if cfg.merge_adapter == "memory":
            args["merge"] = True
    if quantization != "auto":
        args["quantization"] = quantization
    if chat_template:
        args["chat_template"] = chat_template
    return f"ck/{model_path}", args


def base_loading(cfg: InspectConfig, adapter: Path | None, train_method: str | None) -> tuple[Any, str]:
    """(decided :class:`~cruijff_kit.inference.BaseQuantization`, dtype name) of one target's base model.

    ``auto`` follows the adapter's ``cruijff_kit.json`` (nf4 for a qlora adapter); for the ``base``
    target (no adapter) of a run whose ``train.method`` is qlora it is nf4 too, so the base and its
    epochs are compared on the same 4-bit base. ``dtype`` is the eval's dtype as resolved on this machine
    (with vllm, the option as given: ``auto`` lets vllm choose).
    """
    from cruijff_kit.inference import base_quantization, resolve_device, resolve_dtype

    dtype_name = str(resolve_dtype(cfg.dtype, resolve_device(cfg.device))).removeprefix("torch.")
    quant = base_quantization(adapter, cfg.quantization, method=train_method, dtype=dtype_name)
    return quant, (cfg.dtype if cfg.backend == "vllm" else dtype_name)


def local_batch_size(cfg: InspectConfig) -> int:
    """Answers generated per batch by a local model: ``generation.max_connections`` if set, else ``batch_size``."""
    return int(cfg.generation.max_connections or cfg.batch_size)


def generate_args(cfg: InspectConfig, seed: int, local: bool) -> dict[str, Any]:
    """GenerateConfig arguments of ``inspect_ai.eval``: greedy unless sampling was asked for.

    A local (``ck/``) model keeps two batches of samples in flight (``max_connections`` and
    ``max_samples`` twice its batch size), so the next batch fills while one is generated; a remote
    model gets ``generation.max_connections`` as given.
    """
    gen = cfg.generation
    out: dict[str, Any] = {"max_tokens": gen.max_tokens, "seed": gen.seed if gen.seed is not None else seed}
    if gen.sample:
        out["temperature"] = gen.temperature
        if gen.top_p is not None:
            out["top_p"] = gen.top_p
    elif not local:
        out["temperature"] = 0.0
    if cfg.needs_logprobs:
        out["logprobs"] = True
        out["top_logprobs"] = gen.top_logprobs
    if local:
        out["max_connections"] = out["max_samples"] = 2 * local_batch_size(cfg)
    elif gen.max_connections is not None:
        out["max_connections"] = gen.max_connections
    return out


def merged_dtype(dtype: str, adapter: Path, train: dict[str, Any] | None, base: str) -> str:
    """The torch dtype name a merged copy is saved in: the eval's ``dtype`` unless auto, else the training dtype.

    The training dtype is the one the adapter records (``cruijff_kit.json``: a lora adapter's resolved
    ``precision`` or a qlora adapter's ``compute_dtype``, which every trainer here writes), so an eval on
    another machine (a CPU after bf16 GPU training) keeps it; else the run's ``train.precision`` (``auto``
    resolved as the trainer resolves it, on this machine), else (an adapter trained elsewhere) the base
    model's own dtype (``config.json``), else float32.
    """
    from cruijff_kit.training import adapter_info, resolve_precision, run_device

    if dtype != "auto":
        return dtype
    info = adapter_info(adapter)
    if info.get("precision") in _PRECISION_DTYPES:
        return _PRECISION_DTYPES[info["precision"]]
    compute = (info.get("quantization") or {}).get("compute_dtype")
    if compute in _PRECISION_DTYPES.values():
        return str(compute)
    precision = (train or {}).get("precision")
    if precision == "auto":
        precision = resolve_precision("auto", run_device())
    if precision in _PRECISION_DTYPES:
        return _PRECISION_DTYPES[precision]
    config = Path(base) / "config.json"
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        own = data.get("torch_dtype") or data.get("dtype") if isinstance(data, dict) else None
        if own in _PRECISION_DTYPES.values():
            return str(own)
    return "float32"


def write_merged(base: str, adapter: Path, out: Path, dtype: str) -> Path:
    """Merge ``adapter`` into ``base`` and save the result (weights and tokenizer) to ``out``.

    ``dtype`` is the torch dtype name the copy is saved in (see :func:`merged_dtype`); the merge is
    computed in float32 and rounded once.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cruijff_kit_inspect.provider import resolve_dtype, tokenizer_dir

    if (out / "config.json").exists():
        return out
    import torch

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.to(resolve_dtype(dtype, "cpu")).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(tokenizer_dir(adapter) or base)).save_pretrained(out)
    return out


def _sample_count(task: Any, cfg: InspectConfig) -> int | None:
    """Samples the eval will run (``limit`` and ``epochs`` applied), or None when unknown."""
    try:
        n = len(task.dataset)
    except TypeError:
        return None
    return min(n, cfg.limit or n) * cfg.epochs


class InspectEvaluator(Evaluator):
    """inspect-ai evals of the base model and fine-tuned checkpoints (base model + PEFT adapter)."""

    name: ClassVar[str] = "inspect"
    description: ClassVar[str] = ("inspect-ai evals of base models and checkpoints: built-in tasks, user task "
                                  "files, calibration and regression scorers.")
    Config = InspectConfig
    config: InspectConfig

    def uses_gpus(self) -> bool:
        """The run's own model runs here; a ``model:`` served elsewhere (an API) needs no GPU here."""
        return self.config.model is None

    # ------------------------------------------------------------------ plan time
    def check(self, run: PlannedRun) -> None:
        """Plan-time checks: the task, the split and the adapter exist; for vllm the device and adapters it can serve."""
        from cruijff_kit_inspect.tasks import split_task_ref, task_functions

        cfg = self.config
        if cfg.task == COLLAB_TASK:
            from cruijff_kit_inspect.multiturn import check_collab

            check_collab(cfg, self.base_dir, run.dataset().splits() if cfg.tasks is None else None)
        elif not cfg.is_builtin:
            file, fn = split_task_ref(cfg.task)
            path = self.path(file)
            if not path.is_file():
                raise CkError(f"task file {path} does not exist (task: {cfg.task}). Paths are relative to the "
                              "spec file's folder.", option="task")
            try:
                names = task_functions(path)
            except SyntaxError as exc:
                raise CkError(f"task file {path} is not valid Python (line {exc.lineno}: {exc.msg}).",
                              option="task") from None
            if fn not in names:
                from cruijff_kit import did_you_mean

                raise CkError(f"task file {path} has no function `{fn}` (task: {cfg.task}). "
                              f"{did_you_mean(fn, names)}", option="task")
        else:
            splits = run.dataset().splits()
            if splits is not None and cfg.split not in splits:
                from cruijff_kit import did_you_mean

                raise CkError(f"split `{cfg.split}` does not exist in the dataset (its splits: "
                              f"{', '.join(splits)}); set `split:`. {did_you_mean(cfg.split, splits)}")
        adapter = run.spec["model"].get("adapter")
        if adapter and not (Path(adapter) / "adapter_config.json").is_file():
            raise CkError(f"model.adapter {adapter} is not a PEFT adapter folder (no adapter_config.json). "
                          "Give the folder a trainer wrote (train/epoch_<N>/adapter).")
        targets = [s.target for s in run.stages if s.task == cfg.label and s.target]
        if cfg.model and any(t != "base" for t in targets):
            raise CkError(f"`model: {cfg.model}` evaluates that model instead of the run's, so it has no "
                          f"checkpoints; this eval would also evaluate {[t for t in targets if t != 'base']}. "
                          "Set checkpoints: none (and include_base: true), or remove `model`.")
        if not cfg.model and cfg.quantization == "auto" and (cfg.backend == "vllm" or cfg.merge_adapter != "no"):
            self._check_auto_quantization(run, targets)
        if cfg.backend == "vllm" and not cfg.model:
            self._check_vllm(run, targets)
        if cfg.backend == "vllm" and not cfg.model and importlib.util.find_spec("vllm") is None:
            raise CkError("backend: vllm needs the vllm package, which is not installed here. Install vllm on "
                          "a GPU machine, or use backend: hf.")

    def _check_vllm(self, run: PlannedRun, targets: list[str]) -> None:
        """Plan time, backend vllm: a device vLLM can serve on, and adapters it can serve as LoRA.

        The adapter of ``epoch_N`` targets is judged from the run's ``train.lora`` (it does not exist yet),
        a given adapter (``model.adapter``) from its ``adapter_config.json``. ``merge_adapter: disk``
        serves a merged copy, so any adapter goes.
        """
        cfg = self.config
        try:
            vllm_devices(cfg.device)
        except ValueError as exc:
            raise CkError(str(exc), option="device") from None
        if cfg.merge_adapter == "disk":
            return
        checks: list[tuple[str, int, list[str]]] = []  # (which adapter, its rank, what vLLM cannot serve)
        if any(t.startswith("epoch_") for t in targets):
            train = run.spec.get("train") or {}
            lora = train.get("lora") or {}
            lora_targets = lora.get("targets") or []
            modules = [] if lora_targets == "all-linear" else list(lora_targets)  # all-linear: the blocks' layers
            if train.get("apply_lora_to_output"):  # torchtune's switch for LoRA on the output projection
                modules.append("lm_head")
            checks.append(("the adapters this run trains (train.lora)", int(lora.get("rank", 8)),
                           vllm_unservable(modules, lora.get("modules_to_save"))))
        adapter = run.spec["model"].get("adapter")
        if "adapter" in targets and adapter:
            config = read_adapter_config(Path(adapter)) or {}
            checks.append((f"model.adapter {adapter}", adapter_rank(config),
                           vllm_unservable(config.get("target_modules"), config.get("modules_to_save"))))
        for which, rank, unservable in checks:
            if unservable:
                raise CkError(f"backend: vllm cannot serve {which} as LoRA: {'; '.join(unservable)} (vLLM has "
                              "LoRA layers for linear layers inside the blocks only). Set merge_adapter: disk "
                              "(vLLM then serves a merged copy), or set backend: hf.", option="merge_adapter")
            try:
                vllm_max_lora_rank(rank)
            except ValueError as exc:
                raise CkError(f"{which}: {exc}", option="merge_adapter") from None

    def _check_auto_quantization(self, run: PlannedRun, targets: list[str]) -> None:
        """Plan time: ``quantization: auto`` would load a 4-bit base that vllm or merge_adapter cannot use."""
        from cruijff_kit.training import adapter_info

        cfg = self.config
        train = run.spec.get("train") or {}
        adapter = run.spec["model"].get("adapter")
        qlora = [t for t in targets if t != "adapter" and train.get("method") == "qlora"]
        if "adapter" in targets and adapter and adapter_info(Path(adapter)).get("method") == "qlora":
            qlora.append("adapter")
        if cfg.merge_adapter != "no":
            qlora = [t for t in qlora if t != "base"]  # the base target has no adapter to merge
        if not qlora:
            return
        what = "backend: vllm loads the base in full precision only" if cfg.backend == "vllm" else (
            f"merge_adapter: {cfg.merge_adapter} would fold the adapter into 4-bit weights, rounding most of it away")
        fix = "set backend: hf" if cfg.backend == "vllm" else "set merge_adapter: no"
        raise CkError(f"targets {qlora} were trained with qlora, so quantization: auto evaluates them on the 4-bit "
                      f"NF4 base they were trained on, but {what}. {fix.capitalize()} to evaluate on the 4-bit "
                      "base, or set quantization: none for a full-precision evaluation (the results then say "
                      "quantization: none).", option="quantization")

    # ------------------------------------------------------------------ stage
    def evaluate(self, ctx: StageContext) -> dict[str, Any]:
        """Run the eval of ``ctx.target``; write the .eval log under ``ctx.eval_dir``; return results."""
        from inspect_ai import eval as inspect_eval

        from cruijff_kit_inspect.progress import reporting
        from cruijff_kit_inspect.results import results_from_log
        from cruijff_kit_inspect.vllm_server import release_servers

        cfg = self.config
        target = ctx.target
        out = ctx.eval_dir
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*.eval"):  # logs of an earlier attempt of this stage
            old.unlink()
        if target.adapter is not None and not (target.adapter / "adapter_config.json").is_file():
            raise StageError(f"no adapter at {target.adapter} (target {target.name}): the checkpoint was "
                             "not saved. Check the train stage's output, or evaluate saved epochs only.")

        task = self._task(ctx)
        model_path = ctx.model_path
        adapter = target.adapter
        train = ctx.spec.get("train") or {}
        loading: dict[str, Any] = {}
        quant = None
        if not cfg.model:
            quant, dtype_name = base_loading(cfg, adapter, train.get("method"))
            loading = quant.record() | {"dtype": dtype_name}
            if quant.four_bit and adapter is not None and cfg.merge_adapter != "no":
                raise StageError(f"merge_adapter: {cfg.merge_adapter} would fold the adapter of {target.name} into "
                                 f"4-bit NF4 weights ({quant.reason}), rounding most of it away. Set "
                                 "merge_adapter: no (the adapter is applied on top of the 4-bit base, as it was "
                                 "trained), or quantization: none to merge into a full-precision base.")
        if adapter is not None and cfg.merge_adapter == "disk" and not cfg.model:
            dtype = merged_dtype(cfg.dtype, adapter, train, model_path)
            model_path = str(write_merged(model_path, adapter, out / "merged", dtype))
            adapter = None
        template = train.get("chat_template")
        if cfg.backend == "vllm" and not cfg.model:
            template = write_chat_template(template, self.path, out)
        model, model_args = model_for(cfg, model_path, adapter, template,
                                      quant.quantization if quant is not None else None)
        seed = ctx.seed
        metadata = {
            "experiment": ctx.spec.get("experiment"), "run": ctx.run.name, "run_type": ctx.run.type,
            "eval": cfg.label, "target": target.name, "epoch": target.epoch,
            "finetuned": target.adapter is not None and not cfg.model,
            "base_model": cfg.model or ctx.model_id, "adapter": str(target.adapter) if target.adapter else None,
            "split": cfg.split, "sweep": dict(ctx.run.sweep), "seed": seed, **loading,
        }
        metadata = scrub(metadata)
        total = _sample_count(task, cfg)
        collab = getattr(task, "ck_collab", None)
        if collab is not None:
            for p in collab.participants():
                p.open()
        gen_args = generate_args(cfg, seed, local=model.startswith("ck/"))
        if model.startswith("ck/"):  # each target samples from its own seed, whatever ran before in this process
            from transformers import set_seed

            set_seed(int(gen_args["seed"]))
        # a vLLM server kept from an earlier target of this process serves this one only if started alike
        release_servers(model, model_args, cfg.base_url)
        try:
            with ctx.progress(total, "samples") as bar, reporting(bar):
                logs = inspect_eval(
                    task, model=model, model_args=model_args, log_dir=str(out), log_format="eval",
                    model_base_url=cfg.base_url, display="none", limit=cfg.limit, epochs=cfg.epochs,
                    metadata=metadata, tags=[str(ctx.spec.get("experiment")), ctx.run.name, target.name],
                    score_display=False, log_realtime=False, **gen_args,
                )
        except CkError:
            raise
        except Exception as exc:
            raise StageError(f"inspect could not start the eval of {target.name} ({model}): "
                             f"{type(exc).__name__}: {exc}") from exc
        finally:
            if collab is not None:
                from cruijff_kit_inspect.multiturn import close_participants

                close_participants(collab)
        log = logs[0]
        if log.status != "success":
            msg = log.error.message if log.error else f"status {log.status}"
            raise StageError(f"inspect eval of {target.name} ({model}) failed: {msg} (log: {log.location})")
        return results_from_log(log, ctx.run_dir, target=target.name, epoch=target.epoch,
                                finetuned=metadata["finetuned"], **loading)

    def _task(self, ctx: StageContext) -> Any:
        from cruijff_kit_inspect.tasks import builtin_task, load_user_task, rows_to_samples, split_task_ref

        cfg = self.config

        def samples() -> list[Any]:
            data = ctx.dataset()
            if cfg.split not in data:
                raise StageError(f"the dataset has no split `{cfg.split}` (it has {', '.join(data)}).")
            return rows_to_samples(list(data[cfg.split]), cfg.split, choices=cfg.task == "choice")

        name = cfg.label
        if cfg.task == COLLAB_TASK:
            from cruijff_kit_inspect.multiturn import collab_task, make_collaboration

            collab = make_collaboration(cfg, ctx, self.base_dir)
            task = collab_task(collab, name)
            task.ck_collab = collab  # the evaluator opens and closes its participants around the eval
            return task
        if cfg.is_builtin:
            return builtin_task(cfg, samples(), name)
        from inspect_ai import task_with

        from cruijff_kit_inspect.tasks import build_scorers

        file, fn = split_task_ref(cfg.task)
        task = load_user_task(self.path(file), fn, cfg.task_args, samples)
        if cfg.scorers:
            task = task_with(task, scorer=build_scorers(cfg))
        return task
