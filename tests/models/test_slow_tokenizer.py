"""``use_fast=False`` (``--data.disable_fast_tokenizer``): a slow tokenizer where one exists,
a clear refusal where the model's tokenizer has only a fast form (transformers 5 ignores
``use_fast``, so passing it on would silently give the fast one)."""

from __future__ import annotations

import pytest

from repulse.errors import UserError
from repulse.models.loading import load_tokenizer


def test_a_slow_only_tokenizer_loads_slow(tmp_path):
    from transformers import ByT5Tokenizer

    ByT5Tokenizer().save_pretrained(tmp_path / "byt5")  # pure Python, no fast form
    tok = load_tokenizer(str(tmp_path / "byt5"), use_fast=False, padding_side="right")
    assert type(tok).__name__ == "ByT5Tokenizer" and tok.is_fast is False
    assert tok.pad_token == "<pad>" and tok.padding_side == "right"
    assert tok("hi").input_ids == [ord("h") + 3, ord("i") + 3, tok.eos_token_id]  # bytes offset by 3 specials


def test_a_fast_only_tokenizer_is_refused(lm_dir):
    assert load_tokenizer(str(lm_dir)).is_fast  # what use_fast=False would silently have returned
    with pytest.raises(UserError) as err:
        load_tokenizer(str(lm_dir), use_fast=False)
    text = str(err.value)
    assert "--data.disable_fast_tokenizer asks for a slow (pure-Python) tokenizer" in text
    assert "has only a fast form in transformers 5." in text and "Drop the flag" in text
