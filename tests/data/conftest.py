"""A tiny self-contained tokenizer for the data tests (no dependency on ``repulse.toy``).

Byte-level BPE trained on a few sentences, wrapped in ``PreTrainedTokenizerFast`` with
bos/eos/pad and a small jinja chat template whose assistant turns end with the eos token.
"""

from __future__ import annotations

import pytest

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}<|assistant|>\n{{ m['content'] }}{{ eos_token }}\n"
    "{% else %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

CORPUS = [
    "User: what is the capital of France?\nAssistant: The capital of France is Paris.",
    "User: add two and three.\nAssistant: Two plus three is five.",
    "The quick brown fox jumps over the lazy dog.",
    "Step 1: compute the sum ки\nStep 2: divide by two ки\nThe answer is 4 ки",
    "hello world, hello there, general kenobi. one two three four five six seven eight nine ten",
    "chosen rejected prompt response label value input output messages assistant user system",
]


def make_tokenizer(extra_tokens: list[str] | None = None, add_bos: bool = True):
    """``add_bos``: like Llama, ``tokenizer(text)`` prepends ``<s>`` (the chat template writes it itself)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials + list(extra_tokens or []),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="right"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def prm_tokenizer():
    """Like ``tokenizer`` but with the Math-Shepherd step tag 'ки' as one token."""
    tok = make_tokenizer()
    tok.add_tokens(["ки"])
    return tok


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    """``warn_once`` remembers keys per process; each test starts with none warned."""
    import repulse.errors

    monkeypatch.setattr(repulse.errors, "_warned", set())


@pytest.fixture(scope="session")
def make_tok():
    """The tokenizer factory, for tests that need a variant (no BOS, no chat template, ...)."""
    return make_tokenizer
