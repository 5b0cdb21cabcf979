"""Tiny local assets: tokenizer, models and data sets built from nothing (no network)."""

from repulse.toy.build import ToyAssets, build_all, build_model, build_tokenizer
from repulse.toy.corpus import BAD_WORDS, TOY_PROMPT

__all__ = ["BAD_WORDS", "TOY_PROMPT", "ToyAssets", "build_all", "build_model", "build_tokenizer"]
