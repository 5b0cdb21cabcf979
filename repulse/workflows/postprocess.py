"""What ``repulse score`` (and ``generate`` with a reward) does with scored rows: the seed's post-processors.

Rows are dicts with ``input`` (the prompt as the policy saw it), ``output`` (the response) and
``reward``, plus whatever other keys they carried. Responses of one prompt are the rows that share
its ``input`` text (as in OpenRLHF's batch inference), in the order they come.

- ``rs`` (rejection sampling): per prompt, the row with the highest reward.
- ``iter_dpo`` (iterative DPO): per prompt, the highest-reward response as ``chosen`` and the
  lowest as ``rejected`` under ``prompt`` - the preference rows ``repulse dpo --data.prompt_key prompt``
  reads.
- ``csft`` (conditional SFT): every row, its reward written into its input with a template.

All are pure functions of the rows: same rows, same output, whatever the number of processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from repulse.errors import UserError, warn_once

POST_PROCESSORS = ("none", "rs", "iter_dpo", "csft")
DEFAULT_REWARD_TEMPLATE = "{input} <rm_score>: {reward} "


def normalize_rewards(rewards: list[float]) -> list[float]:
    """z-scores over the whole file: r'_i = (r_i − μ) / σ, μ = mean(r), σ = sqrt(mean((r − μ)²)).

    σ is the population standard deviation (divisor N). When every reward is equal (σ = 0) every
    r'_i is 0: nothing distinguishes the rows.
    """
    if not rewards:
        return []
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
    if std == 0.0:
        return [0.0 for _ in rewards]
    return [(r - mean) / std for r in rewards]


def _groups(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows by their ``input`` text, prompts in order of first appearance, rows in order."""
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["input"], []).append(row)
    return out


def rejection_sampling(rows: list[dict]) -> list[dict]:
    """Per prompt, its best row: the highest reward, the first such row on a tie."""
    best: list[dict] = []
    for group in _groups(rows).values():
        top = group[0]
        for row in group[1:]:
            if row["reward"] > top["reward"]:
                top = row
        best.append(dict(top))
    return best


def iterative_dpo(rows: list[dict]) -> list[dict]:
    """Per prompt, ``{"prompt", "chosen", "chosen_reward", "rejected", "rejected_reward"}``.

    chosen = the response with the highest reward (first on a tie), rejected = the one with the
    lowest (first on a tie), plus the prompt row's other keys (from its first row). A prompt whose
    responses are all the same text makes no pair and is dropped (counted in one warning); a file
    with a single response per prompt is an error, since it cannot make any pair.
    """
    groups = _groups(rows)
    if groups and all(len(g) < 2 for g in groups.values()):
        raise UserError(
            "--score.post_processor iter_dpo needs at least two responses per prompt (chosen = the best, "
            f"rejected = the worst), but each of the {len(groups)} prompts has one. Generate several per "
            "prompt (repulse generate --rollout.n_samples_per_prompt 4, seed flag --best_of_n 4), or use "
            "--score.post_processor rs to keep the best response."
        )
    pairs: list[dict] = []
    dropped = 0
    for prompt, group in groups.items():
        hi = lo = group[0]
        for row in group[1:]:
            if row["reward"] > hi["reward"]:
                hi = row
            if row["reward"] < lo["reward"]:
                lo = row
        if hi["output"] == lo["output"]:
            dropped += 1
            continue
        extra = {k: v for k, v in group[0].items() if k not in {"input", "output", "reward"}}
        pairs.append(
            {
                **extra,
                "prompt": prompt,
                "chosen": hi["output"],
                "chosen_reward": hi["reward"],
                "rejected": lo["output"],
                "rejected_reward": lo["reward"],
            }
        )
    if dropped:
        warn_once(
            f"iter_dpo_identical:{id(rows)}",
            f"iter_dpo: {dropped} of {len(groups)} prompts were dropped: all their responses are the same text, "
            "so there is no pair to learn from (sample with a temperature > 0, or more responses per prompt).",
        )
    if not pairs:
        raise UserError(
            f"--score.post_processor iter_dpo made no pair: for every one of the {len(groups)} prompts all "
            "responses are the same text (greedy decoding?). Sample with --rollout.temperature > 0."
        )
    return pairs


def check_reward_template(template: str, flag: str = "--score.reward_template") -> str:
    """A csft template must place both the input and the reward."""
    missing = [f"{{{k}}}" for k in ("input", "reward") if f"{{{k}}}" not in template]
    if missing:
        raise UserError(
            f"{flag} {template!r} has no {' and no '.join(missing)}; it must say where the input and the "
            f"reward go, e.g. {DEFAULT_REWARD_TEMPLATE!r}."
        )
    return template


def format_reward(reward: float) -> str:
    """The reward as csft writes it: two decimals (``1.5`` -> ``1.50``, ``-0.004`` -> ``-0.00``)."""
    return f"{reward:.2f}"


def conditional_sft(rows: list[dict], template: str = DEFAULT_REWARD_TEMPLATE) -> list[dict]:
    """Every row with ``input`` = template with ``{input}`` and ``{reward}`` (two decimals) filled in.

    Plain substitution, not ``str.format``: a template or an input with other braces is left as it is.
    """
    check_reward_template(template)
    out = []
    for row in rows:
        new = dict(row)
        new["input"] = template.replace("{reward}", format_reward(row["reward"])).replace(
            "{input}", row["input"]
        )
        out.append(new)
    return out


_PROCESSORS: dict[str, Callable[..., list[dict]]] = {
    "none": lambda rows, template: rows,
    "rs": lambda rows, template: rejection_sampling(rows),
    "iter_dpo": lambda rows, template: iterative_dpo(rows),
    "csft": conditional_sft,
}


def check_post_processor(name: str, flag: str = "--score.post_processor") -> str:
    if name not in _PROCESSORS:
        raise UserError(f"{flag} must be one of {', '.join(POST_PROCESSORS)}; got {name!r}.")
    return name


def post_process(
    rows: list[dict], name: str, normalize: bool, template: str, cap: float | None = None
) -> list[dict]:
    """Cap, then normalise (``--reward.normalize_enable``), then the post-processor ``name``.

    ``cap`` (``--reward.cap``) replaces rewards above it by it, before normalisation.
    """
    check_post_processor(name)
    rows = [dict(r) for r in rows]
    if cap is not None:
        for r in rows:
            r["reward"] = min(float(r["reward"]), cap)
    if normalize:
        for r, z in zip(rows, normalize_rewards([float(r["reward"]) for r in rows])):
            r["reward"] = z
    return _PROCESSORS[name](rows, template)


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean / min / max reward of scored rows (for the log)."""
    rewards = [float(r["reward"]) for r in rows if "reward" in r]
    if not rewards:
        return {}
    return {
        "reward_mean": sum(rewards) / len(rewards),
        "reward_min": min(rewards),
        "reward_max": max(rewards),
        "rows": float(len(rewards)),
    }
