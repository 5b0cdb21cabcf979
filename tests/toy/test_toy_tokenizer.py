"""The toy tokenizer: HF round trip, single-token guarantees and the chat template."""

from __future__ import annotations

import pytest

from repulse.toy import BAD_WORDS, CHAT_TEMPLATE, GOOD_WORDS, TOY_PROMPT
from repulse.toy.corpus import SINGLE_TOKEN_WORDS


@pytest.fixture(scope="module")
def tok(toy):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(toy.tokenizer)


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_reloads_with_its_special_tokens_and_template(toy, tok):
    from transformers import AutoTokenizer

    assert 512 <= len(tok) <= 1024
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}) == 4
    assert tok.chat_template == CHAT_TEMPLATE
    model_tok = AutoTokenizer.from_pretrained(toy.llama)
    assert model_tok.get_vocab() == tok.get_vocab()
    assert model_tok.chat_template == CHAT_TEMPLATE


@pytest.mark.parametrize(
    "text",
    [
        "This man is a thief.",
        "what is two plus three?",
        "add up: 2 + 3 = 5 ки 5 + 1 = 7 ки",
        "Ünïcödé ✓ 日本",
        "",
    ],
)
def test_decode_inverts_encode(tok, text):
    assert tok.decode(_ids(tok, text)) == text
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_plain_text_gets_a_bos_like_llama(tok):
    ids = tok("This man is a")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[1:] == _ids(tok, "This man is a")


@pytest.mark.parametrize("token", ["ки", "Ки", "+", "-", " +", " -"])
def test_prm_placeholder_and_reward_tokens_are_one_token(tok, token):
    assert len(_ids(tok, token)) == 1


def test_placeholder_is_kept_by_decode_and_found_mid_text(tok):
    (kid,) = _ids(tok, "ки")
    ids = _ids(tok, "add up: 1 + 1 = 2 ки 2 + 1 = 3 ки")
    assert ids.count(kid) == 2
    assert "ки" in tok.decode(ids, skip_special_tokens=True)


def test_toy_words_are_single_tokens_after_a_space(tok):
    split = [w for w in SINGLE_TOKEN_WORDS if len(_ids(tok, " " + w)) != 1]
    assert not split, f"split into several tokens: {split}"
    ids = _ids(tok, f"{TOY_PROMPT} {BAD_WORDS[0]}.")
    assert len(ids) == len(_ids(tok, TOY_PROMPT)) + 2  # " thief" and "."


def test_bad_word_tokens_are_found_by_decoding(tok):
    """What the exact P(bad) does: scan the vocabulary for tokens that decode to a bad word."""
    found = {tok.decode([i]).strip() for i in range(len(tok))} & set(BAD_WORDS + GOOD_WORDS)
    assert set(BAD_WORDS) <= found and set(GOOD_WORDS) <= found


def test_chat_template_renders_roles_and_generation_prompt(tok):
    chat = [
        {"role": "system", "content": "answer briefly."},
        {"role": "user", "content": "what comes after three?"},
        {"role": "assistant", "content": "four."},
    ]
    text = tok.apply_chat_template(chat, tokenize=False)
    assert text == (
        "<s><|system|>\nanswer briefly.</s>\n<|user|>\nwhat comes after three?</s>\n<|assistant|>\nfour.</s>\n"
    )
    prompt = tok.apply_chat_template(chat[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>\nwhat comes after three?</s>\n<|assistant|>\n")
    assert text.startswith(prompt)  # the prompt is a prefix of the full chat: masks line up
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.bos_token_id) == 1 and ids.count(tok.eos_token_id) == 3
    for role in ("<|system|>", "<|user|>", "<|assistant|>"):
        assert len(_ids(tok, role)) == 1


def test_chat_template_rejects_unknown_roles(tok):
    with pytest.raises(Exception, match="unknown role"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)
