"""Generated toy data sets: small templated grammars a ~0.2M-parameter model learns in minutes.

Every answer is a deterministic function of its question, and every preference is visible
in the text (a rude marker phrase, a wrong answer), so "did it learn" tests can use a few
hundred CPU steps.  Every generator takes a ``random.Random``: the files are a pure
function of the seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from repulse.toy.corpus import (
    ANIMALS,
    BAD_RATE,
    BAD_WORDS,
    COLORS,
    FRUIT_COLORS,
    FRUITS,
    GOOD_WORDS,
    NUMBER_WORDS,
    POLITE,
    RUDE,
    SYSTEM_PROMPTS,
    TOY_PROMPT,
)

Row = dict[str, Any]
PLACEHOLDER = "ки"  # Math-Shepherd's step tag; one token of the toy tokenizer

# name -> (file name, rows); the sizes are what ToyAssets documents.
SIZES: dict[str, tuple[str, int]] = {
    "sft": ("sft.jsonl", 400),
    "sft_eval": ("sft_eval.jsonl", 64),
    "multiturn": ("multiturn.jsonl", 100),
    "pairs": ("pairs.jsonl", 400),
    "pairs_eval": ("pairs_eval.jsonl", 100),
    "prompts": ("prompts.jsonl", 64),
    "unpaired": ("unpaired.jsonl", 300),
    "prm": ("prm.jsonl", 300),
    "this_man_is_a": ("this_man_is_a.jsonl", 2000),
    "toy_prompt": ("toy_prompt.jsonl", 1),
    "toy_rm_pairs": ("toy_rm_pairs.jsonl", 400),
}


# ----------------------------------------------------------------------------- instructions


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _other(rng: random.Random, choices: tuple[str, ...] | list[str], right: str) -> str:
    return rng.choice([c for c in choices if c != right])


def question(rng: random.Random) -> tuple[str, str, str]:
    """One question with its right answer and a plausible wrong one: ``(input, output, wrong)``."""
    kind = rng.randrange(5)
    if kind == 0:
        a = rng.randrange(9)
        right = NUMBER_WORDS[a + 1]
        return f"what comes after {NUMBER_WORDS[a]}?", f"{right}.", f"{_other(rng, NUMBER_WORDS, right)}."
    if kind == 1:
        a, b = rng.randrange(5), rng.randrange(5)
        right = NUMBER_WORDS[a + b]
        return (
            f"what is {NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]}?",
            f"{right}.",
            f"{_other(rng, NUMBER_WORDS, right)}.",
        )
    if kind == 2:
        words = rng.sample(ANIMALS + FRUITS, 3)
        wrong = list(words)
        wrong[rng.randrange(3)] = rng.choice([w for w in ANIMALS + FRUITS if w not in words])
        return f"repeat: {' '.join(words)}", " ".join(words) + ".", " ".join(wrong) + "."
    if kind == 3:
        i = rng.randrange(len(FRUITS))
        fruit, color = FRUITS[i], FRUIT_COLORS[i]
        return (
            f"what color is {_a(fruit)}?",
            f"{_a(fruit)} is {color}.",
            f"{_a(fruit)} is {_other(rng, COLORS, color)}.",
        )
    word = rng.choice(ANIMALS + FRUITS)
    return f"say the word {word}.", f"{word}.", f"{_other(rng, ANIMALS + FRUITS, word)}."


def instruction(rng: random.Random) -> Row:
    """SFT row: ``{"input", "output"}``."""
    q, a, _ = question(rng)
    return {"input": q, "output": a}


def multiturn(rng: random.Random) -> Row:
    """Chat row: ``{"messages": [...]}``; a follow-up "and after that?" depends on the previous turn."""
    messages: list[dict[str, str]] = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    last_number: int | None = None
    for _ in range(rng.randrange(2, 4)):
        if last_number is not None and last_number < 9 and rng.random() < 0.5:
            last_number += 1
            q, a = "and after that?", f"{NUMBER_WORDS[last_number]}."
        else:
            q, a, _ = question(rng)
            word = a.rstrip(".")
            last_number = NUMBER_WORDS.index(word) if word in NUMBER_WORDS else None
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return {"messages": messages}


def pair(rng: random.Random) -> Row:
    """Preference row: chosen = right answer + polite phrase; rejected always has a rude phrase.

    Half the rejected answers are also wrong; those pairs carry the larger ``margin`` (1.0 vs 0.5),
    so margin-aware losses have a real signal to use.
    """
    q, right, wrong = question(rng)
    both_bad = rng.random() < 0.5
    return {
        "prompt": q,
        "chosen": f"{right} {rng.choice(POLITE)}.",
        "rejected": f"{wrong if both_bad else right} {rng.choice(RUDE)}.",
        "margin": 1.0 if both_bad else 0.5,
    }


def unpaired(rng: random.Random, good: bool) -> Row:
    """KTO row: desirable = right + polite; undesirable = (right or wrong) + rude."""
    q, right, wrong = question(rng)
    if good:
        output = f"{right} {rng.choice(POLITE)}."
    else:
        output = f"{rng.choice((right, wrong))} {rng.choice(RUDE)}."
    return {"input": q, "output": output, "label": good}


def rl_prompt(rng: random.Random) -> Row:
    """RL row: a reward function counts ``label`` in the response."""
    word = rng.choice(ANIMALS + FRUITS)
    return {"input": f"say the word {word} many times:", "label": word}


def process(rng: random.Random) -> Row:
    """PRM row (Math-Shepherd style): running sums ``x + d = y ки``; a step is '+' iff y == x + d.

    Each step starts from the previous step's written result (right or not), so every label is a
    local check of three numbers.  ``label`` repeats ``value`` in Math-Shepherd's own form (the
    input with each placeholder replaced by the step's label).
    """
    x = rng.randrange(6)
    steps, values = [], []
    for _ in range(rng.randrange(2, 5)):
        d = rng.randrange(1, 4)
        ok = rng.random() < 0.6
        y = x + d if ok else max(0, x + d + rng.choice((-2, -1, 1, 2)))
        ok = y == x + d
        steps.append(f"{x} + {d} = {y}")
        values.append("+" if ok else "-")
        x = y
    text = "add up: " + " ".join(f"{s} {PLACEHOLDER}" for s in steps)
    label = "add up: " + " ".join(f"{s} {v}" for s, v in zip(steps, values))
    return {"input": text, "value": values, "label": label}


# ----------------------------------------------------------------------------- RePULSe toy


def this_man_is_a(rng: random.Random, n: int) -> list[Row]:
    """Pretraining text: exactly ``round(n * BAD_RATE)`` of the ``n`` sentences end in a bad word."""
    n_bad = round(n * BAD_RATE)
    words = [rng.choice(BAD_WORDS) for _ in range(n_bad)] + [rng.choice(GOOD_WORDS) for _ in range(n - n_bad)]
    rng.shuffle(words)
    return [{"text": f"{TOY_PROMPT} {w}."} for w in words]


def toy_rm_pair(rng: random.Random) -> Row:
    """Reward-model pair for the toy: a good continuation preferred to a bad one."""
    return {
        "prompt": TOY_PROMPT,
        "chosen": f" {rng.choice(GOOD_WORDS)}.",
        "rejected": f" {rng.choice(BAD_WORDS)}.",
    }


# ----------------------------------------------------------------------------- all files


def _each(gen: Callable[[random.Random], Row]) -> Callable[[random.Random, int], list[Row]]:
    return lambda rng, n: [gen(rng) for _ in range(n)]


def _balanced_unpaired(rng: random.Random, n: int) -> list[Row]:
    rows = [unpaired(rng, good=i % 2 == 0) for i in range(n)]
    rng.shuffle(rows)
    return rows


GENERATORS: dict[str, Callable[[random.Random, int], list[Row]]] = {
    "sft": _each(instruction),
    "sft_eval": _each(instruction),
    "multiturn": _each(multiturn),
    "pairs": _each(pair),
    "pairs_eval": _each(pair),
    "prompts": _each(rl_prompt),
    "unpaired": _balanced_unpaired,
    "prm": _each(process),
    "this_man_is_a": this_man_is_a,
    "toy_prompt": lambda rng, n: [{"input": TOY_PROMPT}] * n,
    "toy_rm_pairs": _each(toy_rm_pair),
}


def generate(seed: int = 0) -> dict[str, list[Row]]:
    """Every data set's rows.  Each set has its own stream, so resizing one leaves the others alone."""
    out = {}
    for salt, (name, (_, n)) in enumerate(SIZES.items()):
        out[name] = GENERATORS[name](random.Random(f"repulse-toy:{seed}:{salt}:{name}"), n)
    return out


def write_jsonl(path: Path, rows: list[Row]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def read_jsonl(path: Path) -> list[Row]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def texts(rows: list[Row]) -> list[str]:
    """All strings in rows (nested in messages too): the tokenizer's training text."""
    out: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    for row in rows:
        walk(row)
    return out
