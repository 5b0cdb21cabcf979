"""A programmatic reward for the ``repulse rl`` acceptance tests (``--reward.remote_url <this file>``).

``reward_func(queries, prompts, labels)`` returns, per sample, the fraction of the
response's characters that are the letter ``e`` (0 for an empty response): dense, in
[0, 1], and learnable by a tiny random policy, since many tokens of the toy vocabulary
contain an ``e`` (and one token is ``e`` alone, so 1.0 is reachable).
"""

from __future__ import annotations

TARGET = "e"


def e_fraction(response: str) -> float:
    return response.count(TARGET) / len(response) if response else 0.0


def reward_func(queries: list[str], prompts: list[str], labels: list) -> list[float]:
    out = []
    for query, prompt in zip(queries, prompts):
        assert query.startswith(prompt), "queries are prompt + response"
        out.append(e_fraction(query[len(prompt) :]))
    return out
