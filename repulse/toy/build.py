"""Build the toy tokenizer, models and data sets into a directory (no network).

The tokenizer is a byte-level BPE trained on the generated corpus, with a chat
template; the models are tiny randomly initialised Llama and GPT-2 causal LMs saved as
plain HF directories (with the tokenizer), so every test and the demo load them
through the same code users use.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from repulse.toy import corpus

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|system|>\n{{ m['content'] }}</s>\n"
    "{% elif m['role'] == 'user' %}<|user|>\n{{ m['content'] }}</s>\n"
    "{% else %}<|assistant|>\n{{ m['content'] }}</s>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL = ["<s>", "</s>", "<pad>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
VERSION = "1"


@dataclass(frozen=True)
class ToyAssets:
    root: Path
    tokenizer: Path
    llama: Path
    gpt2: Path
    sft: Path
    sft_eval: Path
    multiturn: Path
    pairs: Path
    pairs_eval: Path
    prompts: Path
    unpaired: Path
    prm: Path
    this_man_is_a: Path
    toy_prompt: Path
    toy_rm_pairs: Path

    @classmethod
    def at(cls, root: Path) -> ToyAssets:
        root = Path(root)
        files = {
            "sft": "sft.jsonl",
            "sft_eval": "sft_eval.jsonl",
            "multiturn": "multiturn.jsonl",
            "pairs": "pairs.jsonl",
            "pairs_eval": "pairs_eval.jsonl",
            "prompts": "prompts.jsonl",
            "unpaired": "unpaired.jsonl",
            "prm": "prm.jsonl",
            "this_man_is_a": "this_man_is_a.jsonl",
            "toy_prompt": "toy_prompt.jsonl",
            "toy_rm_pairs": "toy_rm_pairs.jsonl",
        }
        return cls(
            root, root / "tokenizer", root / "llama", root / "gpt2", **{k: root / v for k, v in files.items()}
        )


def build_tokenizer(out_dir: Path, seed: int = 0, vocab_size: int = 1024):
    """Train the byte-level BPE on the generated corpus and save it as an HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus.tokenizer_corpus(random.Random(seed)), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL[4:],
    )
    fast.add_tokens(["ки"])  # the PRM placeholder: one token, kept by decode
    fast.chat_template = CHAT_TEMPLATE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def build_model(
    out_dir: Path,
    tokenizer_dir: Path,
    arch: str = "llama",
    seed: int = 0,
    hidden_size: int = 128,
    num_layers: int = 4,
) -> Path:
    """A randomly initialised tiny causal LM (about 1M parameters) saved with its tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = dict(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(
            hidden_size=hidden_size,
            intermediate_size=3 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=False,
            **ids,
        )
        model = LlamaForCausalLM(config)
    elif arch == "gpt2":
        config = GPT2Config(n_embd=hidden_size, n_layer=num_layers, n_head=4, n_positions=512, **ids)
        model = GPT2LMHeadModel(config)
    else:
        raise ValueError(f"unknown toy architecture {arch!r}: llama or gpt2")
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def build_all(out_dir: str | Path, seed: int = 0) -> ToyAssets:
    """Build every toy asset into ``out_dir`` (idempotent: a complete directory is reused)."""
    out = Path(out_dir)
    marker = out / ".complete"
    if marker.is_file() and marker.read_text() == f"{VERSION}:{seed}":
        return ToyAssets.at(out)
    tmp = out.with_name(out.name + ".building")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    assets = ToyAssets.at(tmp)
    build_tokenizer(assets.tokenizer, seed)
    build_model(assets.llama, assets.tokenizer, "llama", seed)
    build_model(assets.gpt2, assets.tokenizer, "gpt2", seed)
    data = {
        "sft": (corpus.instruction, 400, 1),
        "sft_eval": (corpus.instruction, 64, 2),
        "multiturn": (corpus.multiturn, 100, 3),
        "pairs": (corpus.pair, 400, 4),
        "pairs_eval": (corpus.pair, 100, 5),
        "prompts": (corpus.rl_prompt, 64, 6),
        "unpaired": (corpus.unpaired, 300, 7),
        "prm": (corpus.process_example, 300, 8),
        "this_man_is_a": (corpus.this_man_is_a, 2000, 9),
        "toy_rm_pairs": (corpus.rm_pair, 400, 10),
    }
    for name, (gen, n, salt) in data.items():
        rng = random.Random(seed * 1000 + salt)
        _write_jsonl(getattr(assets, name), [gen(rng) for _ in range(n)])
    _write_jsonl(assets.toy_prompt, [{"input": corpus.TOY_PROMPT}])
    (tmp / ".complete").write_text(f"{VERSION}:{seed}")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return ToyAssets.at(out)
