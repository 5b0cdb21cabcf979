"""A word-level tokenizer for the RePULSe demo: one token per word, saved as an HF fast tokenizer.

Text is split as GPT-2 splits it (byte-level pre-tokenizer: a word keeps its leading space,
punctuation stands alone), and each piece is one entry of a fixed vocabulary; anything else is
``<unk>``.  Decoding joins the pieces back, so ``decode(encode(text)) == text`` for any text made
of the vocabulary's words.  Like the toy BPE tokenizer it prepends ``<s>`` to plain text.

Why words rather than BPE: with every token a word, the demo's whole output space of two-token
responses is small (the vocabulary squared, ~23,000) and every response is readable, so a
response's probability and its reward can be listed for all of them, and "non-degenerate" means
a real phrase of the grammar.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
SPECIAL_TOKENS = (BOS, EOS, PAD, UNK)
_SPACE = "\u0120"  # the byte-level alphabet's symbol for a space ("Ġ")


def vocabulary(
    words: Sequence[str], sentence_initial: Sequence[str], punctuation: Sequence[str]
) -> list[str]:
    """The token strings in id order: specials, ``sentence_initial`` words without a space, every
    word with a leading space, then the punctuation marks."""
    pieces = [*SPECIAL_TOKENS, *sentence_initial, *(_SPACE + w for w in words), *punctuation]
    if len(set(pieces)) != len(pieces):
        raise ValueError("the vocabulary has duplicate entries")
    return pieces


def build_word_tokenizer(
    out_dir: str | Path,
    words: Sequence[str],
    sentence_initial: Sequence[str] = (),
    punctuation: Sequence[str] = (".",),
) -> PreTrainedTokenizerFast:
    """Build the tokenizer over ``words`` (each also usable mid-sentence), save it to ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {piece: i for i, piece in enumerate(vocabulary(words, sentence_initial, punctuation))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=64,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return fast
