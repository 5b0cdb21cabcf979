"""Which method-specific config fields each RL method reads (no torch: checked at parse time).

A field that only some methods read, set on the command line or in a YAML file for a method
that does not, is refused: it would be silently ignored. Entries are dotted paths, or section
prefixes ending in ``.``.
"""

from __future__ import annotations

from typing import Any

from repulse.config.schema import get_path, leaves
from repulse.errors import UserError

PPO_READS = (
    "algo.advantage.",
    "algo.kl.",
    "algo.rollout_is.",
    "algo.dynamic_filtering_enable",
    "algo.dynamic_filtering_range",
    "algo.max_epochs",
    "actor.eps_clip",
    "actor.eps_clip_low_high",
    "actor.dual_clip",
    "actor.entropy_coef",
    "actor.policy_loss_type",
    "critic.",
    "reward.normalize_enable",
    "reward.clip_range",
    "reward.overlong_buffer_len",
    "reward.overlong_penalty_factor",
    "reward.stop_properly_penalty_coef",
)
_REPULSE_COMMON = ("algo.kl.init_coef", "algo.kl.estimator")
_TRANSFORM = (
    "repulse.reward_transform",
    "repulse.transform_a",
    "repulse.transform_b",
    "repulse.transform_eta",
)
_PROPOSAL = ("repulse.alpha", "repulse.beta")
_LEARNED_Q = ("repulse.proposal_lr", "repulse.q_updates_per_step", "repulse.p_first")

METHOD_READS: dict[str, tuple[str, ...]] = {
    "rl": PPO_READS,
    "reinforce": _REPULSE_COMMON,
    "reward_transform": (*_REPULSE_COMMON, *_TRANSFORM),
    "p_proposal": (*_REPULSE_COMMON, *_PROPOSAL),
    "repulse": (*_REPULSE_COMMON, *_PROPOSAL, *_LEARNED_Q),
}


def _matches(path: str, patterns: tuple[str, ...]) -> bool:
    return any(path == p or (p.endswith(".") and path.startswith(p)) for p in patterns)


def refuse_unread(cfg: Any) -> None:
    """Refuse a method-specific field that differs from its default but the chosen method ignores."""
    method = cfg.repulse.method
    default = type(cfg)()
    for path in leaves(type(cfg)):
        readers = [m for m, pats in METHOD_READS.items() if _matches(path, pats)]
        if not readers or method in readers:
            continue
        value = get_path(cfg, path)
        if value == get_path(default, path):
            continue
        users = ", ".join(readers)
        raise UserError(
            f"--{path} {value!r} is read by --repulse.method {users}, not by --repulse.method {method}, "
            f"which would ignore it. Remove it, or choose a method that uses it."
        )
