"""Rollout engines: prompts in, ``Samples`` out, with versioned weights (see ``base``)."""

from repulse.rl.rollout.base import RolloutEngine, SamplingParams
from repulse.rl.rollout.hf import HFRolloutEngine, hf_generate, sample_next
from repulse.rl.rollout.samples import Samples, left_pad, response_mask

__all__ = [
    "HFRolloutEngine",
    "RolloutEngine",
    "Samples",
    "SamplingParams",
    "hf_generate",
    "left_pad",
    "response_mask",
    "sample_next",
]
