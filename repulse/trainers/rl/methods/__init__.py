"""The registry of RL methods, keyed by ``--repulse.method``.

Each entry says how big its optimizer steps are (``geometry``), which roles it needs beyond the
policy and the rewards (``roles``), which method-specific config fields its code path reads
(``reads``: the entries of ``repulse.config.usage.METHOD_READS`` that name it; a field of another
method, set on the command line, is refused at parse time), and how to build it. A new method is a module here plus one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from repulse.config.sections import RLConfig
from repulse.config.usage import method_fields
from repulse.trainers.rl.methods.base import RLMethod
from repulse.trainers.rl.methods.ppo import PPOFamily, kl_needed, updates_per_rollout
from repulse.trainers.rl.methods.repulse import RepulseFamily, repulse_accumulation


@dataclass(frozen=True)
class MethodSpec:
    name: str
    geometry: Callable[
        [RLConfig, int, int], tuple[int, int]
    ]  # (cfg, local prompts, world) -> (accum, updates)
    roles: Callable[[RLConfig], set[str]]
    reads: tuple[str, ...]
    build: Callable[..., RLMethod]


def _ppo_geometry(cfg: RLConfig, local_prompts: int, world: int) -> tuple[int, int]:
    return updates_per_rollout(cfg, local_prompts * cfg.rollout.n_samples_per_prompt, world)


def _ppo_roles(cfg: RLConfig) -> set[str]:
    needs = {"ref"} if kl_needed(cfg) else set()
    if cfg.algo.advantage.estimator == "gae":
        needs.add("critic")
    return needs


def _repulse_geometry(cfg: RLConfig, local_prompts: int, world: int) -> tuple[int, int]:
    return repulse_accumulation(cfg, local_prompts), 1


def _repulse_roles(cfg: RLConfig) -> set[str]:
    needs = {"ref"} if kl_needed(cfg) else set()
    if cfg.repulse.method == "repulse":
        needs.add("proposal")
    return needs


def _ppo(cfg: RLConfig, roles: Any, accum: int, updates: int, sink: Any) -> RLMethod:
    return PPOFamily(cfg, roles, accum, updates, sink)


def _repulse(cfg: RLConfig, roles: Any, accum: int, updates: int, sink: Any) -> RLMethod:
    return RepulseFamily(cfg, roles, accum, sink)


METHODS: dict[str, MethodSpec] = {
    "rl": MethodSpec("rl", _ppo_geometry, _ppo_roles, method_fields("rl", "rl"), _ppo),
    **{
        name: MethodSpec(name, _repulse_geometry, _repulse_roles, method_fields("rl", name), _repulse)
        for name in ("reinforce", "reward_transform", "p_proposal", "repulse")
    },
}
