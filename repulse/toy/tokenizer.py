"""The toy tokenizer: a byte-level BPE trained on the generated data, wrapped as an HF fast tokenizer.

Like Llama's, it prepends ``<s>`` to plain text (so code paths that handle a BOS prefix are
exercised) and its chat template writes ``<s>`` itself.  Every turn ends with ``</s>``, so a
generated assistant turn stops at the eos token.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from repulse.toy.corpus import SINGLE_TOKEN_WORDS, TOY_PROMPT
from repulse.toy.datasets import PLACEHOLDER

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (BOS, EOS, PAD, UNK, *ROLE_TOKENS)
VOCAB_SIZE = 1024
MAX_LENGTH = 512  # the models' max_position_embeddings

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role: ' + m['role']) }}"
    "{% endif %}"
    "<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _training_text(texts: Iterable[str]) -> list[str]:
    """The data's own text plus every toy word, often enough that BPE merges each into one token."""
    lines = list(texts)
    words = " " + " ".join(SINGLE_TOKEN_WORDS)
    lines += [words, words.title(), TOY_PROMPT] * 50
    lines += [" ".join(str(i) for i in range(40))] * 20
    return lines


def build_tokenizer(
    out_dir: Path, seed: int = 0, texts: Iterable[str] | None = None
) -> PreTrainedTokenizerFast:
    """Train the BPE on ``texts`` (default: the toy data of ``seed``) and save it to ``out_dir``.

    Training is deterministic: the same text gives the same merges, ids and files.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if texts is None:
        from repulse.toy.datasets import generate
        from repulse.toy.datasets import texts as row_texts

        texts = [t for rows in generate(seed).values() for t in row_texts(rows)]
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(texts), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=list(ROLE_TOKENS),
        model_max_length=MAX_LENGTH,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    # The PRM step tag: one token, and not "special", so decode(skip_special_tokens=True) keeps it.
    fast.add_tokens([PLACEHOLDER, PLACEHOLDER.capitalize()])
    fast.chat_template = CHAT_TEMPLATE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast
