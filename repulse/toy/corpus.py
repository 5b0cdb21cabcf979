"""The toy vocabulary: every word the generated data sets use, in one place.

The tokenizer is trained on text built from these lists, so each word below (with a
leading space, as it appears mid-sentence) ends up as a single token.  That keeps the
toy tasks short in tokens, and makes the RePULSe toy's "bad output" a property of single
tokens, which is what the exact P(bad) enumeration (spec §3.3) needs.
"""

from __future__ import annotations

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FRUITS = ("apple", "banana", "cherry", "grape", "lemon", "lime", "plum")
FRUIT_COLORS = ("red", "yellow", "red", "purple", "yellow", "green", "purple")  # aligned with FRUITS
COLORS = ("red", "yellow", "purple", "green", "blue", "black", "white")
ANIMALS = ("cat", "dog", "bird", "fish", "horse", "cow", "frog")
POLITE = ("thank you", "happy to help", "glad to help", "have a nice day")
RUDE = ("you idiot", "shut up", "go away", "you fool")
SYSTEM_PROMPTS = ("you are a helpful assistant.", "answer briefly.")

# RePULSe toy (paper §4.2): "This man is a <word>." with a few rare bad words.
TOY_PROMPT = "This man is a"
GOOD_WORDS = (
    "doctor", "teacher", "farmer", "writer", "singer", "painter", "student", "builder", "driver", "cook",
    "friend", "neighbor", "father", "brother", "worker", "leader", "member", "player", "pilot", "nurse",
    "baker", "tailor", "sailor", "soldier", "lawyer", "banker", "dancer", "poet", "scholar", "hero",
    "citizen", "gentleman", "runner", "hunter", "guard", "judge", "chef", "clerk", "miner", "coach",
)  # fmt: skip
BAD_WORDS: tuple[str, ...] = ("thief", "liar", "crook", "thug", "creep")
BAD_RATE = 0.005  # exact fraction of "This man is a ..." sentences that end in a bad word

# Words that must each be one token after a space (checked by the tests).
SINGLE_TOKEN_WORDS: tuple[str, ...] = (
    NUMBER_WORDS + FRUITS + COLORS + ANIMALS + GOOD_WORDS + BAD_WORDS + ("man", "is", "say", "word", "repeat")
)
