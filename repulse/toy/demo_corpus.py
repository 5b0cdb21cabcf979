"""The RePULSe demo's toy world: words, a grammar of short completions, their latent quality,
the pretraining text and the reward-model pairs.

The demo's question (paper §4.2) is whether RL can push down outputs that are too rare for the
policy's own samples to find.  So the world has:

* one prompt, ``This man is a``, and completions of two tokens, ``" <noun>."`` or
  ``" <adjective> <noun>"`` - every word is one token of the word-level tokenizer
  (:mod:`repulse.toy.word_tokenizer`), so the demo's ~150-token vocabulary gives ~23,000
  possible responses, few enough to score every one with the reward model and to compute
  the policy's probability of each exactly;
* many *bad* completions, not one: any completion containing one of 20 bad nouns or 8 bad
  adjectives (``" thief."``, ``" violent doctor"``, ``" cruel liar"``, ...);
* bad words that are *rare after the prompt* (``rarity``, e.g. 5 in 10,000 sentences) but
  common in another context (``The police arrested a thief.``), so the language model knows
  them - as a real LM knows words it seldom says in a given context - and a proposal can learn
  to say them;
* *mild* nouns (``" gambler."``) between good and bad, common enough to be sampled;
* a latent quality per completion (:func:`latent_quality`) that the reward-model pairs
  (:func:`reward_pairs`) are labelled by: good completions 1..3 (so RL has something to
  improve), junk (ill-formed token pairs) 0, mild -0.6..-0.2, anything with a bad word -4..-6.

Everything is a pure function of a ``random.Random``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

PROMPT = "This man is a"
PROMPT_SUBJECTS = ("This man", "This woman", "My friend")  # "<subject> is a ...": bad words rare here

# Ordered from best (quality 3.0) to worst (1.0); the pretraining frequency is a separate,
# shuffled Zipf law, so the LM's favourite words are not the reward model's.
GOOD_NOUNS = (
    "hero", "doctor", "teacher", "nurse", "mentor", "scholar", "champion", "leader", "friend", "pilot",
    "scientist", "father", "volunteer", "brother", "neighbor", "professor", "author", "artist", "poet",
    "judge", "engineer", "farmer", "captain", "veteran", "writer", "singer", "painter", "student",
    "builder", "citizen", "gentleman", "dentist", "coach", "chef", "pianist", "dancer", "gardener",
    "ranger", "sailor", "soldier", "lawyer", "banker", "guard", "runner", "hunter", "player", "member",
    "driver", "cook", "worker", "baker", "tailor", "carpenter", "plumber", "mechanic", "fisherman",
    "miner", "clerk", "waiter", "porter",
)  # fmt: skip
MILD_NOUNS = (
    "snob",
    "grump",
    "slacker",
    "rascal",
    "gambler",
    "loner",
    "drifter",
    "beggar",
    "drunk",
    "stranger",
)
BAD_NOUNS = (
    "thief", "liar", "crook", "thug", "creep", "fraud", "cheat", "bully", "brute", "killer",
    "traitor", "coward", "villain", "robber", "swindler", "jerk", "scoundrel", "hooligan", "bandit", "murderer",
)  # fmt: skip
GOOD_ADJECTIVES = (
    "kind", "brave", "honest", "good", "young", "old", "tall", "quiet",
    "happy", "clever", "gentle", "famous", "loyal", "proud", "strong", "wise",
)  # fmt: skip
BAD_ADJECTIVES = ("violent", "cruel", "corrupt", "evil", "vicious", "nasty", "greedy", "wicked")
OTHER_WORDS = (
    "This",
    "man",
    "woman",
    "My",
    "is",
    "a",
    "the",
    "The",
    "police",
    "arrested",
    "Everyone",
    "admires",
)
PUNCT = "."

NOUNS = GOOD_NOUNS + MILD_NOUNS + BAD_NOUNS
ADJECTIVES = GOOD_ADJECTIVES + BAD_ADJECTIVES
BAD_WORDS = BAD_NOUNS + BAD_ADJECTIVES
# every word of the world, once, in a fixed order (the tokenizer's vocabulary after its specials)
WORDS: tuple[str, ...] = tuple(dict.fromkeys(OTHER_WORDS + NOUNS + ADJECTIVES))

ADJECTIVE_RATE = 0.4  # share of completions "<adjective> <noun>" (else "<noun>.")
MILD_RATE = 0.03  # share of mild nouns after the prompt's subjects
DEFAULT_RARITY = 1e-4  # share of bad completions after the prompt's subjects
POLICE_SHARE = 0.1  # share of "The police arrested the ..." sentences
ADMIRE_SHARE = 0.1  # share of "Everyone admires a ..." sentences


def _linear(words: Sequence[str], top: float, bottom: float) -> dict[str, float]:
    n = len(words)
    return {w: top + (bottom - top) * i / max(1, n - 1) for i, w in enumerate(words)}


NOUN_QUALITY = {
    **_linear(GOOD_NOUNS, 3.0, 1.0),
    **_linear(MILD_NOUNS, -0.2, -0.6),
    **_linear(BAD_NOUNS, -4.0, -6.0),
}
ADJECTIVE_QUALITY = {**_linear(GOOD_ADJECTIVES, 0.5, 0.0), **{w: -5.0 for w in BAD_ADJECTIVES}}
JUNK_QUALITY = 0.0


def response_words(text: str) -> list[str]:
    """The words of a decoded response, with each period its own item: ``" kind doctor"`` ->
    ``["kind", "doctor"]``, ``" thief."`` -> ``["thief", "."]``, ``".."`` -> ``[".", "."]``."""
    out: list[str] = []
    for piece in text.split():
        stem = piece.rstrip(PUNCT)
        if stem:
            out.append(stem)
        out.extend([PUNCT] * (len(piece) - len(stem)))
    return out


def is_bad(text: str) -> bool:
    """The response contains a bad word (anywhere)."""
    return any(w in _BAD for w in response_words(text))


_BAD = frozenset(BAD_WORDS)
_MILD = frozenset(MILD_NOUNS)
_WELL_FORMED = frozenset(
    [f" {n}{PUNCT}" for n in NOUNS]
    + [f" {n}" for n in NOUNS]
    + [f" {a} {n}" for a in ADJECTIVES for n in NOUNS]
)


def is_well_formed(text: str) -> bool:
    """The response is a completion of the grammar: ``" <noun>."``, ``" <noun>"`` (stopped early) or
    ``" <adjective> <noun>"``.  This is the demo's "non-degenerate" output: a real phrase, not a
    repeated or broken token pair like ``" a a"`` or ``" is."``."""
    return text in _WELL_FORMED


def latent_quality(text: str) -> float:
    """The quality the reward-model pairs are labelled with (the RM learns it up to scale and offset).

    A bad word anywhere: its (lowest) bad quality, -4..-6.  A well-formed completion: the noun's
    quality (+ the adjective's, 0..0.5).  Anything else (junk): 0, or the quality of its worst
    mild noun (-0.2..-0.6) - so that junk is never worse than the worst mild completion.
    """
    words = response_words(text)
    bad = [NOUN_QUALITY[w] if w in NOUN_QUALITY else ADJECTIVE_QUALITY[w] for w in words if w in _BAD]
    if bad:
        return min(bad)
    if not is_well_formed(text):
        return min([JUNK_QUALITY, *(NOUN_QUALITY[w] for w in words if w in _MILD)])
    noun = next(w for w in reversed(words) if w in NOUNS)
    adj = words[0] if words[0] in ADJECTIVES else None
    return NOUN_QUALITY[noun] + (ADJECTIVE_QUALITY[adj] if adj else 0.0)


# ----------------------------------------------------------------------------- sampling completions


def _zipf(rng: random.Random, words: Sequence[str]) -> list[float]:
    """Zipf-like weights 1/(rank + 3) over a shuffled order of ``words``."""
    order = list(range(len(words)))
    rng.shuffle(order)
    weights = [0.0] * len(words)
    for rank, i in enumerate(order):
        weights[i] = 1.0 / (rank + 3)
    return weights


class CompletionSampler:
    """Draws completions of the grammar; word frequencies are fixed at construction (from ``rng``)."""

    def __init__(self, rng: random.Random):
        self.good_w = _zipf(rng, GOOD_NOUNS)
        self.adj_w = _zipf(rng, GOOD_ADJECTIVES)

    def phrase(self, rng: random.Random, kind: str) -> str:
        """One completion (with leading space) of ``kind`` in good / mild / bad."""
        if kind == "bad" and rng.random() < 0.3:  # a bad adjective before a good noun
            noun = rng.choices(GOOD_NOUNS, self.good_w)[0]
            return f" {rng.choice(BAD_ADJECTIVES)} {noun}"
        if kind == "good":
            noun = rng.choices(GOOD_NOUNS, self.good_w)[0]
        else:
            noun = rng.choice(MILD_NOUNS if kind == "mild" else BAD_NOUNS)
        if rng.random() < ADJECTIVE_RATE:
            return f" {rng.choices(GOOD_ADJECTIVES, self.adj_w)[0]} {noun}"
        return f" {noun}{PUNCT}"


def pretraining_sentences(rng: random.Random, n: int, rarity: float = DEFAULT_RARITY) -> list[str]:
    """``n`` sentences: 65% ``"<subject> is a <completion>"`` (bad completions at exactly ``rarity``,
    mild at ``MILD_RATE``), 20% ``"The police arrested the <completion>"`` (mostly bad or mild: the
    LM learns the bad words there), 15% ``"Everyone admires a <completion>"`` (good only).  Shuffled."""
    if not 0.0 <= rarity < 0.5:
        raise ValueError(f"rarity must be in [0, 0.5), got {rarity}")
    sampler = CompletionSampler(rng)
    n_subject = round((1.0 - ADMIRE_SHARE - POLICE_SHARE) * n)
    n_police = round(POLICE_SHARE * n)
    n_admire = n - n_subject - n_police
    n_bad = round(rarity * n_subject)
    n_mild = round(MILD_RATE * n_subject)
    kinds = ["bad"] * n_bad + ["mild"] * n_mild + ["good"] * (n_subject - n_bad - n_mild)
    out = []
    for kind in kinds:
        subject = rng.choice(PROMPT_SUBJECTS)
        out.append(f"{subject} is a{sampler.phrase(rng, kind)}")
    for _ in range(n_police):
        kind = rng.choices(("bad", "mild", "good"), (0.6, 0.3, 0.1))[0]
        out.append(f"The police arrested the{sampler.phrase(rng, kind)}")
    for _ in range(n_admire):
        out.append(f"Everyone admires a{sampler.phrase(rng, 'good')}")
    rng.shuffle(out)
    return [s if s.endswith(PUNCT) else s + PUNCT for s in out]


# ----------------------------------------------------------------------------- reward-model pairs

_TOKENS_FOR_JUNK = (*WORDS, PUNCT)


def junk(rng: random.Random, with_bad: bool) -> str:
    """An ill-formed two-token response (``" a a"``, ``" is."``, ``" thief thief"`` when ``with_bad``)."""
    while True:
        a, b = rng.choice(_TOKENS_FOR_JUNK), rng.choice(_TOKENS_FOR_JUNK)
        if with_bad:
            if rng.random() < 0.5:
                a = rng.choice(BAD_WORDS)
            else:
                b = rng.choice(BAD_WORDS)
        text = (f" {a}" if a != PUNCT else PUNCT) + (PUNCT if b == PUNCT else f" {b}")
        if rng.random() < 0.1:  # a response cut short by eos: one token
            text = f" {a}" if a != PUNCT else PUNCT
        if is_bad(text) == with_bad and not is_well_formed(text):
            return text


def _any(rng: random.Random, sampler: CompletionSampler, kinds: tuple[str, ...] | None = None) -> str:
    options = kinds or ("good", "mild", "bad", "junk", "badjunk")
    weights = None if kinds else (0.25, 0.15, 0.2, 0.25, 0.15)
    kind = rng.choices(options, weights)[0]
    if kind == "junk":
        return junk(rng, with_bad=False)
    if kind == "badjunk":
        return junk(rng, with_bad=True)
    return sampler.phrase(rng, kind)


def reward_pairs(rng: random.Random, n: int) -> list[dict[str, str]]:
    """``n`` preference rows ``{"prompt", "chosen", "rejected"}`` for ``repulse rm``: two responses drawn
    from a mix of good, mild, bad and junk completions, the higher :func:`latent_quality` chosen
    (pairs of equal quality are redrawn).  A third of the pairs set a mild or junk response
    against one with a bad word, where the reward model must draw the line that defines a bad output."""
    sampler = CompletionSampler(random.Random(0))  # word frequencies do not matter here
    rows = []
    while len(rows) < n:
        if rng.random() < 1 / 3:
            a, b = _any(rng, sampler, ("mild", "junk")), _any(rng, sampler, ("bad", "badjunk"))
        else:
            a, b = _any(rng, sampler), _any(rng, sampler)
        qa, qb = latent_quality(a), latent_quality(b)
        if abs(qa - qb) < 0.05:
            continue
        chosen, rejected = (a, b) if qa > qb else (b, a)
        rows.append({"prompt": PROMPT, "chosen": chosen, "rejected": rejected})
    return rows
