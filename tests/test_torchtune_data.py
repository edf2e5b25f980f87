"""Chat rows -> torchtune's ``{tokens, labels}`` with the model's own HF tokenizer (assistant-only loss)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cruijff_kit_torchtune.data import TokenizedChatDataset
from cruijff_kit_torchtune.tokenizer import IGNORE_INDEX, HFChatTokenizer

from cruijff_kit._base.errors import DataError

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "HELLO"}, {"role": "user", "content": "dog"},
        {"role": "assistant", "content": "DOG"}]


def trained_text(tok: HFChatTokenizer, labels: list[int]) -> str:
    return tok.decode([t for t in labels if t != IGNORE_INDEX], skip_special_tokens=False)


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_only_assistant_turns_carry_labels(family: str, tiny_model_factory) -> None:
    tok = HFChatTokenizer(str(tiny_model_factory(family)))
    assert tok.has_generation_markers
    tokens, labels = tok.tokenize_messages(CONV)
    assert len(tokens) == len(labels)
    end = "<|eot_id|>" if family == "llama3" else "<|im_end|>"
    assert trained_text(tok, labels) == f"HELLO{end}DOG{end}"
    assert tok.pad_id == tok.hf.pad_token_id


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_template_without_generation_markers_gives_the_same_labels(family: str, tiny_model_factory) -> None:
    path = tiny_model_factory(family)
    marked = HFChatTokenizer(str(path))
    plain_template = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", marked.hf.chat_template)
    plain = HFChatTokenizer(str(path), chat_template=plain_template)
    assert not plain.has_generation_markers
    assert plain.tokenize_messages(CONV) == marked.tokenize_messages(CONV)


def test_cut_rows_without_assistant_tokens_are_left_out(tiny_llama: Path, capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "HI"}]
    long = [{"role": "user", "content": "word " * 80}, {"role": "assistant", "content": "WORD"}]
    tok = HFChatTokenizer(str(tiny_llama), max_seq_len=32)
    ds = TokenizedChatDataset(tok, [short, long, short], "train")
    assert len(ds) == 2 and all(len(item["tokens"]) <= 32 for item in ds.items)
    assert "1 of 3 `train` rows have no assistant tokens" in capsys.readouterr().err
    with pytest.raises(DataError, match=r"no row of the `train` split.*train.max_seq_length"):
        TokenizedChatDataset(tok, [long], "train")
    with pytest.raises(DataError, match="row 0 of the `train` split"):
        TokenizedChatDataset(tok, [[{"text": "no role"}]], "train")


def test_chat_template_inline_or_from_a_file(tmp_path: Path) -> None:
    from cruijff_kit.training._adapters import chat_template_text

    (tmp_path / "t.jinja").write_text("{{ messages[0]['content'] }}")
    assert chat_template_text("{{ x }}", lambda p: tmp_path / p) == "{{ x }}"
    assert chat_template_text("t.jinja", lambda p: tmp_path / p) == "{{ messages[0]['content'] }}"
    assert chat_template_text(None, lambda p: tmp_path / p) is None
