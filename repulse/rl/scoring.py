"""From samples to reward-source inputs: decode each response, pair it with its prompt row.

The texts come from token ids and the prompt/response boundary the sampler recorded, never from
splitting strings. ``RewardInput`` carries the rendered prompt, the response, the label and the
raw question, so that every reward source scores its own format (see ``repulse.rl.rewards``).
"""

from __future__ import annotations

from typing import Any

import torch

from repulse.rl.rewards import RewardInput, RewardSource, score_rewards, truncated_total
from repulse.rl.rollout import Samples


def decode_responses(tokenizer: Any, samples: Samples) -> list[str]:
    """The response text of every row: its action tokens, special tokens skipped."""
    return [
        tokenizer.decode(row[m.bool()].tolist(), skip_special_tokens=True)
        for row, m in zip(samples.response.cpu(), samples.action_mask.cpu())
    ]


def reward_input(tokenizer: Any, samples: Samples, items: list[dict]) -> RewardInput:
    """What the reward sources read for ``samples``; ``items[prompt_index]`` is each row's prompt row."""
    responses = decode_responses(tokenizer, samples)
    rows = [items[int(i)] for i in samples.prompt_index]
    prompts = [it["prompt"] for it in rows]
    return RewardInput(
        [p + r for p, r in zip(prompts, responses)],
        prompts,
        responses,
        [it.get("label") for it in rows],
        [it.get("question", it["prompt"]) for it in rows],
    )


def select_texts(texts: RewardInput, rows: list[int]) -> RewardInput:
    """The rows ``rows`` of ``texts`` (as ``Samples.select`` for the tensors)."""
    pick = lambda xs: [xs[i] for i in rows] if xs is not None else None  # noqa: E731
    return RewardInput(
        pick(texts.queries),
        pick(texts.prompts),
        pick(texts.responses),
        pick(texts.labels),
        pick(texts.questions),
    )


class LocalRewards:
    """``RewardRole`` over reward sources in this process."""

    def __init__(self, tokenizer: Any, sources: list[RewardSource], reduction: str):
        self.tokenizer, self.sources, self.reduction = tokenizer, sources, reduction

    def score(self, samples: Samples, items: list[dict]) -> tuple[torch.Tensor, RewardInput]:
        batch = reward_input(self.tokenizer, samples, items)
        return score_rewards(self.sources, batch, self.reduction), batch

    @property
    def truncated_count(self) -> int:
        """Reward-model inputs cut to fit their model so far (the ``reward_truncated`` metric)."""
        return truncated_total(self.sources)
