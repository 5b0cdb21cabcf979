"""What a reward source is given and what it is: the batch of texts (``RewardInput``) and the
protocol every source (reward model, ``reward_func`` file, HTTP servers) satisfies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass
class RewardInput:
    queries: list[str]  # prompt + response text
    prompts: list[str]  # the policy's rendered prompts (input or chat template applied)
    responses: list[str]
    labels: list[Any]
    # The raw user questions (no template). None: the prompts are all there is, already rendered
    # (a reward model's own template is then not applied to them again).
    questions: list[str] | None = None


class RewardSource(Protocol):
    name: str
    truncated_count: int  # inputs cut to fit the reward model, so far

    def __call__(self, batch: RewardInput) -> torch.Tensor: ...

    def describe(self, index: int) -> str:
        """Where sample ``index`` of the last batch got its reward (for error messages)."""
        ...
