"""The demo's toy world, built from nothing: word-level tokenizer, pretrained LM, reward model,
and the exact reward table of every possible response.

1. a word-level tokenizer over the demo's words (:mod:`repulse.toy.word_tokenizer`);
2. a GPT-2 of hidden size 64 and 2 layers, pretrained (``repulse sft``, pretrain mode) on text
   in which bad completions of ``<subject> is a`` are rare (``rarity``) but bad words are common
   after ``The police arrested a`` (:mod:`repulse.toy.demo_corpus`);
3. a reward model (``repulse rm``, from the pretrained LM) on pairs labelled by the completions'
   latent quality;
4. the reward of every response of at most two tokens, scored by the same reward source the
   RL runs use, and the threshold η that defines a bad output: the reward model's scores
   are sorted into bad-word responses and the rest, and η is the midpoint of the gap between
   them - or, when the two overlap, the threshold that misclassifies the fewest responses.
   A bad output is then "reward < η", the event RePULSe's proposal targets.
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from repulse.toy import demo_corpus as corpus

SENTENCE_INITIAL = ("This", "My", "The", "Everyone")
DEMO_LM = {"hidden_size": 64, "num_layers": 2}  # ~0.1M parameters: 160 runs must fit in minutes
MAX_NEW_TOKENS = 2
TABLE_FILE = "reward_table.pt"
WORLD_FILE = "world.json"


@dataclass(frozen=True)
class WorldSpec:
    """What the world is built from (recorded in ``world.json``)."""

    rarity: float = corpus.DEFAULT_RARITY
    sentences: int = 24_000
    lm_epochs: int = 3
    rm_pairs: int = 8_000
    rm_epochs: int = 2
    seed: int = 0

    @classmethod
    def quick(cls, rarity: float = corpus.DEFAULT_RARITY) -> WorldSpec:
        return cls(rarity=rarity, sentences=12_000, lm_epochs=2, rm_pairs=3_000, rm_epochs=2)


@dataclass(frozen=True)
class World:
    """Paths and numbers of a built world."""

    root: Path
    tokenizer: Path
    lm: Path
    rm: Path
    prompt_file: Path
    table_file: Path
    eta: float
    spec: WorldSpec

    @property
    def bad_words(self) -> list[str]:
        return list(corpus.BAD_WORDS)

    def table(self) -> dict[str, Any]:
        return torch.load(self.table_file, weights_only=False)


# ----------------------------------------------------------------------------- configs of the two trainers


def sft_config(tokenizer_dir: Path, data: Path, base: Path, out: Path, epochs: int):
    """``repulse sft`` in pretrain mode on the demo corpus."""
    from repulse.config.sections import OfflineConfig
    from repulse.toy.models import build_model

    if not (base / "config.json").is_file():
        build_model(base, tokenizer_dir, "gpt2", seed=0, **DEMO_LM)
    cfg = OfflineConfig()
    cfg.model.model_name_or_path = str(base)
    cfg.model.pretrain_mode_enable = True
    cfg.data.dataset = str(data)
    cfg.data.input_key = "text"
    cfg.data.max_len = 16
    cfg.engine.packing_samples = True
    cfg.train.batch_size = cfg.train.micro_batch_size = 64
    cfg.train.max_epochs = epochs
    cfg.adam.lr, cfg.optim.lr_scheduler, cfg.optim.lr_warmup_ratio = 3e-3, "cosine_with_min_lr", 0.05
    cfg.ckpt.output_dir = str(out)
    cfg.logger.progress_bar = False
    return cfg


def rm_config(lm: Path, data: Path, out: Path, epochs: int):
    """``repulse rm`` (Bradley-Terry) from the pretrained LM on the demo's pairs."""
    from repulse.config.sections import OfflineConfig

    cfg = OfflineConfig()
    cfg.model.model_name_or_path = str(lm)
    cfg.data.dataset = str(data)
    cfg.data.prompt_key = "prompt"
    cfg.data.max_len = 16
    cfg.train.batch_size = cfg.train.micro_batch_size = 32
    cfg.train.max_epochs = epochs
    cfg.adam.lr = 2e-3
    cfg.ckpt.output_dir = str(out)
    cfg.logger.progress_bar = False
    return cfg


def reward_config(rm: Path):
    """The reward section every demo RL run uses (and the reward table is scored with): the reward
    model's raw score (the REINFORCE-family methods neither clip nor normalise it)."""
    from repulse.config.sections import RewardSection

    section = RewardSection()
    section.model_name_or_path = str(rm)
    return section


# ----------------------------------------------------------------------------- building


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def build_data(root: Path, spec: WorldSpec) -> dict[str, Path]:
    """Tokenizer and data files of the world (cheap; deterministic in ``spec``)."""
    from repulse.toy.word_tokenizer import build_word_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    paths = {
        "tokenizer": root / "tokenizer",
        "pretrain": root / "pretrain.jsonl",
        "pairs": root / "rm_pairs.jsonl",
        "prompt": root / "prompt.jsonl",
    }
    build_word_tokenizer(paths["tokenizer"], corpus.WORDS, SENTENCE_INITIAL)
    texts = corpus.pretraining_sentences(random.Random(f"demo:{spec.seed}:lm"), spec.sentences, spec.rarity)
    _write_jsonl(paths["pretrain"], [{"text": t} for t in texts])
    _write_jsonl(paths["pairs"], corpus.reward_pairs(random.Random(f"demo:{spec.seed}:rm"), spec.rm_pairs))
    _write_jsonl(paths["prompt"], [{"input": corpus.PROMPT}])
    return paths


def prompt_item(tokenizer: Any, prompt_file: Path) -> dict[str, Any]:
    """The prompt as the RL loop renders and tokenises it (``PromptDataset``)."""
    from repulse.config.sections import DataSection
    from repulse.data.prompts import PromptDataset

    rows = [json.loads(line) for line in prompt_file.read_text().splitlines() if line.strip()]
    return PromptDataset(rows, tokenizer, DataSection())[0]


def reward_scorer(rm: Path, tokenizer: Any, prompt: dict[str, Any]):
    """``score(responses) -> rewards`` through the RL loop's own reward path: the responses become
    a ``Samples`` batch (prompt left-padded, response up to and including EOS), decoded and scored
    by ``LocalRewards`` over the reward sources of ``reward_config(rm)`` - exactly what an RL step
    does with the samples it draws."""
    from repulse.rl.rewards import build_reward_sources
    from repulse.rl.rollout import Samples
    from repulse.rl.rollout.samples import left_pad, response_mask
    from repulse.rl.scoring import LocalRewards

    section = reward_config(rm)
    rewards = LocalRewards(
        tokenizer, build_reward_sources(section, torch.device("cpu"), 1024), section.reduction
    )
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id

    def score(responses: list[tuple[int, ...]]) -> torch.Tensor:
        n = len(responses)
        p_ids, p_mask = left_pad([list(prompt["prompt_ids"])] * n, pad)
        width = max(len(r) for r in responses)
        resp = torch.full((n, width), pad, dtype=torch.long)
        for i, r in enumerate(responses):
            resp[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        action, truncated = response_mask(resp, eos, pad)
        samples = Samples(
            torch.cat([p_ids, resp], 1),
            torch.cat([p_mask, action], 1),
            action,
            p_ids.shape[1],
            torch.zeros(n, dtype=torch.long),
            truncated,
        )
        values, _ = rewards.score(samples, [prompt])
        return values

    return score


def choose_eta(rewards: torch.Tensor, bad_word: torch.Tensor) -> tuple[float, dict[str, Any]]:
    """η from the reward table, before any RL: the midpoint of the gap between the highest-scored
    response with a bad word and the lowest-scored one without; if they overlap, the midpoint
    between consecutive scores that misclassifies the fewest responses (of several such, the one
    in the widest gap between scores)."""
    r = rewards.double()
    bad_r, good_r = r[bad_word], r[~bad_word]
    top_bad, low_good = float(bad_r.max()), float(good_r.min())
    info: dict[str, Any] = {"max_bad_word_reward": top_bad, "min_other_reward": low_good}
    if top_bad < low_good:
        return (top_bad + low_good) / 2, {**info, "separated": True, "misclassified": 0}
    order = torch.argsort(r)
    values, is_bad = r[order], bad_word[order].long()
    # cutting after position i calls values[:i+1] bad: errors = good ones below + bad ones above
    good_below = torch.cumsum(1 - is_bad, 0)[:-1]
    bad_above = int(is_bad.sum()) - torch.cumsum(is_bad, 0)[:-1]
    errors = good_below + bad_above
    gaps = values[1:] - values[:-1]
    best = errors == errors.min()
    i = int(torch.argmax(torch.where(best, gaps, torch.full_like(gaps, -1.0))))
    return float((values[i] + values[i + 1]) / 2), {
        **info,
        "separated": False,
        "misclassified": int(errors[i]),
    }


def build_table(
    world_root: Path, tokenizer_dir: Path, lm: Path, rm: Path, prompt_file: Path
) -> tuple[float, dict]:
    """Enumerate every response of the pretrained LM, score each, choose η; write ``reward_table.pt``."""
    from transformers import AutoTokenizer

    from repulse.evaluation.exact import bad_token_ids_from_words, enumerate_sequences, score_enumeration
    from repulse.models.loading import load_causal_lm

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    prompt = prompt_item(tok, prompt_file)
    model = load_causal_lm(str(lm), device="cpu")
    enum = enumerate_sequences(model, prompt["prompt_ids"], MAX_NEW_TOKENS, tok.eos_token_id)
    rewards = score_enumeration(enum, reward_scorer(rm, tok, prompt))
    texts = [tok.decode(list(s), skip_special_tokens=True) for s in enum.sequences]
    bad_ids = set(bad_token_ids_from_words(tok, corpus.BAD_WORDS))
    bad_word = torch.tensor([any(t in bad_ids for t in s) for s in enum.sequences])
    well_formed = torch.tensor([corpus.is_well_formed(t) for t in texts])
    eta, info = choose_eta(rewards, bad_word)
    table = {
        "prompt_ids": list(prompt["prompt_ids"]),
        "sequences": enum.sequences,
        "texts": texts,
        "rewards": rewards,
        "ref_log_probs": enum.log_probs,
        "bad_word": bad_word,
        "well_formed": well_formed,
        "latent": torch.tensor([corpus.latent_quality(t) for t in texts], dtype=torch.float64),
        "eta": eta,
        "eta_info": info,
    }
    torch.save(table, world_root / TABLE_FILE)
    return eta, info


def build_world(out: Path, spec: WorldSpec, log=print, reuse: bool = False) -> World:
    """Build the world under ``out/world`` (with ``reuse``: keep one already there when its
    ``world.json`` records the same spec)."""
    from transformers.utils import logging as hf_logging

    from repulse.trainers import rm, sft

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    console = sys.stdout

    def say(msg: str) -> None:  # the demo's own lines go to the console, the trainers' to the log
        with contextlib.redirect_stdout(console):
            log(msg)

    root = Path(out) / "world"
    lm, rm_dir, base = root / "lm", root / "rm", root / "base_lm"
    record = root / WORLD_FILE
    if reuse and record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("spec") == asdict(spec) and (root / TABLE_FILE).is_file():
            log(f"reusing the world in {root} (same spec)")
            return World(
                root,
                root / "tokenizer",
                lm,
                rm_dir,
                root / "prompt.jsonl",
                root / TABLE_FILE,
                saved["eta"],
                spec,
            )
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    paths = build_data(root, spec)
    with (
        open(root / "log.txt", "a") as out_log,
        contextlib.redirect_stdout(out_log),
        contextlib.redirect_stderr(out_log),
    ):
        say(
            f"pretraining the toy LM on {spec.sentences:,} sentences ({spec.lm_epochs} epoch(s)); output in {root / 'log.txt'}"
        )
        sft.run(sft_config(paths["tokenizer"], paths["pretrain"], base, lm, spec.lm_epochs))
        say(f"training the toy reward model on {spec.rm_pairs:,} pairs ({spec.rm_epochs} epoch(s))")
        rm.run(rm_config(lm, paths["pairs"], rm_dir, spec.rm_epochs))
        say("scoring every response of at most two tokens with the reward model")
        eta, info = build_table(root, paths["tokenizer"], lm, rm_dir, paths["prompt"])
    record.write_text(json.dumps({"spec": asdict(spec), "eta": eta, "eta_info": info}, indent=2))
    return World(root, paths["tokenizer"], lm, rm_dir, paths["prompt"], root / TABLE_FILE, eta, spec)
