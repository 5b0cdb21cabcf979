"""A 0/1 programmatic reward that also records what it was given (``--reward.remote_url <this file>``).

``reward_func(queries, prompts, labels)`` returns, per sample, 1.0 if the response (the query
after its prompt) contains the letter ``a``, else 0.0: a binary score whose prompt groups are
sometimes all-0 / all-1 and sometimes mixed, which is what dynamic filtering acts on.

Environment (read at every call, so a test sets them before the run):
  ``REPULSE_TEST_REWARD_CONST``  return this constant for every sample instead;
  ``REPULSE_TEST_REWARD_LOG``    append one JSON line per call: the rank (``RANK``, 0 without
                                 torchrun), prompts, responses, labels and the returned rewards.
"""

from __future__ import annotations

import json
import os

TARGET = "a"


def reward_func(queries: list[str], prompts: list[str], labels: list) -> list[float]:
    responses = []
    for query, prompt in zip(queries, prompts):
        assert query.startswith(prompt), "queries are prompt + response"
        responses.append(query[len(prompt) :])
    const = os.environ.get("REPULSE_TEST_REWARD_CONST")
    if const is not None:
        rewards = [float(const)] * len(queries)
    else:
        rewards = [1.0 if TARGET in r else 0.0 for r in responses]
    log = os.environ.get("REPULSE_TEST_REWARD_LOG")
    if log:
        row = {
            "rank": int(os.environ.get("RANK", "0")),
            "prompts": list(prompts),
            "responses": responses,
            "labels": list(labels),
            "rewards": rewards,
        }
        with open(log, "a", encoding="utf-8") as f:  # one write per line: ranks may share the file
            f.write(json.dumps(row) + "\n")
    return rewards
