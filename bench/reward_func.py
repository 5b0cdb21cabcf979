"""The RL benchmarks' programmatic reward, repulse side (``--reward.remote_url bench/reward_func.py``).

Reward = occurrences of the prompt's target word (its ``label``) in the response. The TRL side
uses the same rule (``trl_worker.count_label_reward``) on TRL's completion strings.
"""

from __future__ import annotations


def reward_func(queries: list[str], prompts: list[str], labels: list[str]) -> list[float]:
    """``queries`` are prompt + response texts; the response is what follows the prompt."""
    out = []
    for query, prompt, label in zip(queries, prompts, labels):
        response = query[len(prompt) :] if query.startswith(prompt) else query
        out.append(float(response.count(str(label))))
    return out
