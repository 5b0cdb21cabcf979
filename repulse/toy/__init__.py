"""Tiny local assets built from nothing (no network): a byte-level BPE tokenizer with a chat
template, ~0.2M-parameter Llama and GPT-2 models, and generated data sets for every trainer.

They are the fixtures of the tests and the demo's default, loaded through the same HF code
paths as real models.  Importing this package is cheap: torch and transformers load only
when something is built.
"""

from repulse.toy.assets import ToyAssets, build_all
from repulse.toy.cli import cli_build
from repulse.toy.corpus import BAD_WORDS, GOOD_WORDS, TOY_PROMPT
from repulse.toy.models import build_model
from repulse.toy.tokenizer import CHAT_TEMPLATE, build_tokenizer

__all__ = [
    "BAD_WORDS",
    "CHAT_TEMPLATE",
    "GOOD_WORDS",
    "TOY_PROMPT",
    "ToyAssets",
    "build_all",
    "build_model",
    "build_tokenizer",
    "cli_build",
]
