"""Example Python reward for ``reward.remote_url`` (the seed README's ``reward_func.py``).

repulse calls ``reward_func(queries, prompts, labels)`` once per batch: ``queries`` are the
prompt + response texts, ``prompts`` the prompts alone, ``labels`` the ``data.label_key``
column (None where a row has none). It returns one float per query.

This toy reward is programmatic so the recipe runs without a reward model: +1 when the
response contains the label (the answer), otherwise a small length-shaped score that
prefers short, non-empty answers.
"""

from __future__ import annotations

import torch


def reward_func(queries: list[str], prompts: list[str], labels: list[str | None]) -> torch.Tensor:
    rewards = []
    for query, prompt, label in zip(queries, prompts, labels):
        response = query[len(prompt) :] if query.startswith(prompt) else query
        if label is not None and str(label).strip() and str(label).strip() in response:
            rewards.append(1.0)
            continue
        words = len(response.split())
        rewards.append(-0.1 * abs(words - 4) if words else -1.0)
    return torch.tensor(rewards, dtype=torch.float32)
