"""Generated text for the toy assets: small grammars a ~1M-parameter model learns in minutes.

Every generator takes a ``random.Random`` so the assets are a pure function of the seed.
"""

from __future__ import annotations

import random

NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
COLORS = ["red", "blue", "green", "yellow", "black", "white"]
ANIMALS = ["cat", "dog", "bird", "fish", "horse", "cow"]
FRUITS = ["apple", "banana", "cherry", "grape", "lemon", "mango"]
POLITE = ["thank you", "please enjoy", "happy to help", "glad to help"]
RUDE = ["you idiot", "shut up", "go away loser", "you fool"]
GOOD_WORDS = [
    "doctor", "teacher", "farmer", "writer", "singer", "painter", "student", "builder", "driver", "cook",
    "friend", "neighbor", "father", "brother", "worker", "leader", "member", "player", "pilot", "nurse",
    "baker", "tailor", "sailor", "soldier", "lawyer", "banker", "dancer", "poet", "scholar", "hero",
    "citizen", "gentleman", "runner", "hunter", "guard", "judge", "chef", "clerk", "miner", "coach",
]  # fmt: skip
BAD_WORDS = ("thief", "liar", "crook", "thug", "creep")
BAD_RATE = 0.02  # fraction of "This man is a ..." sentences that end in a bad word
TOY_PROMPT = "This man is a"


def instruction(rng: random.Random) -> dict[str, str]:
    """One SFT example whose answer is a deterministic function of the question."""
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randrange(5), rng.randrange(5)
        return {"input": f"what is {NUMBERS[a]} plus {NUMBERS[b]}?", "output": f"{NUMBERS[a + b]}."}
    if kind == 1:
        a = rng.randrange(9)
        return {"input": f"what comes after {NUMBERS[a]}?", "output": f"{NUMBERS[a + 1]}."}
    if kind == 2:
        words = rng.sample(ANIMALS + FRUITS, 3)
        return {"input": f"repeat: {' '.join(words)}", "output": " ".join(words) + "."}
    fruit = rng.choice(FRUITS)
    return {
        "input": f"what color is the {fruit}?",
        "output": f"the {fruit} is {COLORS[FRUITS.index(fruit)]}.",
    }


def multiturn(rng: random.Random) -> dict[str, list[dict[str, str]]]:
    messages = []
    for _ in range(rng.randrange(2, 4)):
        ex = instruction(rng)
        messages += [{"role": "user", "content": ex["input"]}, {"role": "assistant", "content": ex["output"]}]
    return {"messages": messages}


def pair(rng: random.Random) -> dict[str, object]:
    """A preference pair: the same answer, rejected one ends rudely (a learnable preference)."""
    ex = instruction(rng)
    polite, rude = rng.choice(POLITE), rng.choice(RUDE)
    return {
        "prompt": ex["input"],
        "chosen": f"{ex['output']} {polite}.",
        "rejected": f"{ex['output']} {rude}.",
        "margin": round(rng.uniform(0.0, 1.0), 3),
    }


def unpaired(rng: random.Random) -> dict[str, object]:
    ex = instruction(rng)
    good = rng.random() < 0.5
    tail = rng.choice(POLITE) if good else rng.choice(RUDE)
    return {"input": ex["input"], "output": f"{ex['output']} {tail}.", "label": good}


def rl_prompt(rng: random.Random) -> dict[str, str]:
    """An RL prompt with a label that a reward function can count in the response."""
    word = rng.choice(FRUITS + ANIMALS)
    return {"input": f"say {word} many times:", "label": word}


def process_example(rng: random.Random) -> dict[str, object]:
    """Math-Shepherd-style steps ``x = y ки``; a step is correct ('+') iff y copies x."""
    steps, values = [], []
    for _ in range(rng.randrange(2, 5)):
        x = rng.randrange(10)
        ok = rng.random() < 0.5
        y = x if ok else (x + rng.randrange(1, 10)) % 10
        steps.append(f"{NUMBERS[x]} = {NUMBERS[y]} ки")
        values.append("+" if ok else "-")
    return {"input": "check: " + " ".join(steps), "value": values}


def this_man_is_a(rng: random.Random) -> dict[str, str]:
    word = rng.choice(BAD_WORDS) if rng.random() < BAD_RATE else rng.choice(GOOD_WORDS)
    return {"text": f"{TOY_PROMPT} {word}."}


def rm_pair(rng: random.Random) -> dict[str, str]:
    return {
        "prompt": TOY_PROMPT,
        "chosen": f" {rng.choice(GOOD_WORDS)}.",
        "rejected": f" {rng.choice(BAD_WORDS)}.",
    }


def tokenizer_corpus(rng: random.Random) -> list[str]:
    """Text covering every generator, with each content word repeated so BPE keeps it whole."""
    lines: list[str] = []
    for gen in (instruction, pair, unpaired, rl_prompt, process_example, this_man_is_a, rm_pair):
        for _ in range(300):
            row = gen(rng)
            lines.append(" ".join(str(v) for v in row.values() if isinstance(v, str)))
    vocab = NUMBERS + COLORS + ANIMALS + FRUITS + GOOD_WORDS + list(BAD_WORDS)
    vocab += [w for phrase in POLITE + RUDE for w in phrase.split()]
    vocab += (
        "what is plus comes after repeat color the say many times check this man a user assistant".split()
    )
    for _ in range(20):
        lines.append(" ".join(vocab))
        lines.append(" ".join(w.capitalize() for w in vocab))
    return lines
