"""``repulse rl``: parse and check the command line; impossible combinations fail here, naming the flag.

``--repulse.method`` picks PPO-family RL (``rl``: the ``--algo.advantage.estimator`` alone) or
one of the RePULSe-paper methods (see ``repulse.trainers.rl.methods``); the loop is in
``repulse.trainers.rl.loop``.
"""

from __future__ import annotations

from repulse.config import parse_config
from repulse.config.sections import RLConfig
from repulse.errors import UserError
from repulse.rl.rollout.vllm import VLLM_MISSING, vllm_installed

GROUP_ESTIMATORS = {"rloo", "reinforce_baseline", "group_norm", "dr_grpo"}
ESTIMATORS = {"gae", "reinforce"} | GROUP_ESTIMATORS
METHODS = {"rl", "reinforce", "reward_transform", "p_proposal", "repulse"}


def validate(cfg: RLConfig) -> None:
    """Impossible combinations fail here, naming the flag."""
    a, r, rp = cfg.algo, cfg.rollout, cfg.repulse
    if a.advantage.estimator not in ESTIMATORS:
        raise UserError(
            f"--algo.advantage.estimator must be one of {sorted(ESTIMATORS)}, got {a.advantage.estimator!r}."
        )
    if a.kl.estimator not in {"k1", "k2", "k3"}:
        raise UserError(f"--algo.kl.estimator must be k1, k2 or k3, got {a.kl.estimator!r}.")
    if rp.method not in METHODS:
        raise UserError(f"--repulse.method must be one of {sorted(METHODS)}, got {rp.method!r}.")
    if rp.method == "rl" and a.advantage.estimator in GROUP_ESTIMATORS and r.n_samples_per_prompt < 2:
        raise UserError(
            f"--algo.advantage.estimator {a.advantage.estimator} compares samples of the same prompt: "
            f"set --rollout.n_samples_per_prompt to 2 or more (got {r.n_samples_per_prompt})."
        )
    if rp.method != "rl":
        if r.n_samples_per_prompt < 2:
            raise UserError(
                f"--repulse.method {rp.method} uses the leave-one-out (RLOO) baseline and per-prompt weights: "
                f"set --rollout.n_samples_per_prompt to 2 or more (got {r.n_samples_per_prompt})."
            )
        if rp.method in {"repulse", "p_proposal"} and rp.beta <= 0:
            raise UserError(
                f"--repulse.beta must be > 0 (the target is σ(s) ∝ p(s)·exp(−β·r(s)); got {rp.beta}). "
                "The reference code's --target_dist_beta is the negative of this β."
            )
        if rp.method == "reward_transform" and rp.reward_transform not in {
            "minus_alpha_exp_beta_r",
            "minus_alpha_ind",
        }:
            raise UserError(
                "--repulse.method reward_transform needs --repulse.reward_transform minus_alpha_exp_beta_r or minus_alpha_ind."
            )
    if not cfg.actor.model_name_or_path:
        raise UserError("--actor.model_name_or_path is required: the policy to train.")
    if not cfg.data.prompt_dataset:
        raise UserError("--data.prompt_dataset is required: the prompts to sample from.")
    if not (cfg.reward.model_name_or_path or cfg.reward.remote_url):
        raise UserError(
            "give a reward: --reward.model_name_or_path (reward model dirs) and/or --reward.remote_url (HTTP server(s) or a .py file with reward_func)."
        )
    if r.temperature < 0:
        raise UserError("--rollout.temperature must be >= 0.")
    if a.max_epochs < 1:
        raise UserError("--algo.max_epochs must be at least 1.")
    if cfg.actor.dual_clip is not None and cfg.actor.dual_clip <= 1:
        raise UserError(
            f"--actor.dual_clip must be > 1 (the dual-clip bound c of PPO), got {cfg.actor.dual_clip}."
        )
    if rp.q_updates_per_step < 1:
        raise UserError(
            f"--repulse.q_updates_per_step must be at least 1 (proposal updates per policy update), "
            f"got {rp.q_updates_per_step}."
        )
    if r.backend not in {"hf", "vllm"}:
        raise UserError(f"--rollout.backend must be hf or vllm, got {r.backend!r}.")
    if r.backend == "vllm" and not vllm_installed():
        raise UserError(VLLM_MISSING)
    if cfg.actor.policy_loss_type not in {"ppo", "gspo"}:
        raise UserError(f"--actor.policy_loss_type must be ppo or gspo, got {cfg.actor.policy_loss_type!r}.")
    if cfg.actor.policy_loss_type == "gspo" and rp.method != "rl":
        raise UserError(
            f"--actor.policy_loss_type gspo is a PPO-family loss; --repulse.method {rp.method} trains p with "
            "REINFORCE (remove the flag, or use --repulse.method rl)."
        )
    ris = a.rollout_is
    if ris.mode not in {"none", "tis", "icepop", "seq-mask-tis"}:
        raise UserError(
            f"--algo.rollout_is.mode must be none, tis, icepop or seq-mask-tis, got {ris.mode!r}."
        )
    if ris.mode != "none" and not 0 <= ris.low < ris.high:
        raise UserError(
            f"--algo.rollout_is.low {ris.low} / --algo.rollout_is.high {ris.high}: need 0 <= low < high."
        )
    if ris.mode != "none" and rp.method != "rl":
        raise UserError(
            f"--algo.rollout_is.mode corrects the PPO-family policy loss; --repulse.method {rp.method} "
            "does not read it (its importance weights already use the density that drew each sample)."
        )
    if rp.method in {"repulse", "p_proposal"} and (r.top_k > 0 or r.top_p < 1.0):
        raise UserError(
            f"--repulse.method {rp.method} with --rollout.top_k {r.top_k} / --rollout.top_p {r.top_p}: "
            "truncated sampling gives the proposal no mass on part of σ's support, so the importance "
            "weights of L_u and CTL would be biased. Sample without truncation (temperature is fine: "
            "the weights use the density that drew each sample)."
        )
    if a.dynamic_filtering_enable:
        if len(a.dynamic_filtering_range) != 2:
            raise UserError(
                "--algo.dynamic_filtering_range takes two numbers: the kept mean-reward range low high."
            )
        lo, hi = a.dynamic_filtering_range
        if r.n_samples_per_prompt < 2:
            raise UserError(
                "--algo.dynamic_filtering_enable drops prompt groups whose samples all score alike: "
                "set --rollout.n_samples_per_prompt to 2 or more."
            )
        if not lo < hi:
            raise UserError(
                f"--algo.dynamic_filtering_range {lo} {hi}: the low end must be below the high end."
            )
    validate_launch(cfg)


def _shape(section) -> tuple[int, int]:
    return section.num_nodes, section.num_gpus_per_node


def validate_launch(cfg: RLConfig) -> None:
    """Where the roles run (``--launch.*``, the Ray placement flags) and asynchronous training."""
    from repulse.errors import warn_once

    launch, train, v = cfg.launch, cfg.train, cfg.vllm  # value ranges and choices: checked at parse time
    if train.async_enable:
        if launch.backend != "ray" or not v.num_engines:
            raise UserError(
                "--train.async_enable draws the next rollouts while a step trains: it needs rollout engines "
                "that hold weights of their own, i.e. --launch.backend ray with --vllm.num_engines >= 1 (here the "
                "engines share the trained module, which changes while it trains)."
            )
        if launch.colocate_all_models:
            raise UserError(
                "--train.async_enable with --launch.colocate_all_models: the hybrid engine's rollout engines "
                "share the policy's devices and sleep while it trains, so there is nothing to overlap; drop one."
            )
        if cfg.repulse.method != "rl":
            raise UserError(
                f"--train.async_enable with --repulse.method {cfg.repulse.method}: its REINFORCE step on p's "
                "samples has no importance correction for samples drawn by older weights, and the proposal is "
                "sampled inside the step; asynchronous training is for the PPO family (--repulse.method rl)."
            )
        if cfg.algo.rollout_is.mode == "none" and train.async_queue_size > 0:
            warn_once(
                "async.rollout_is",
                "--train.async_enable without --algo.rollout_is.mode: samples drawn by weights up to "
                f"{train.async_queue_size} update(s) old enter the PPO loss uncorrected; --algo.rollout_is.mode "
                "tis weights each token by pi_old / pi_rollout.",
            )
    elif train.async_queue_size != 1:
        warn_once(
            "async.queue",
            f"--train.async_queue_size {train.async_queue_size} has no effect without --train.async_enable.",
        )
    if launch.backend != "ray":
        return
    tp = v.tensor_parallel_size
    if tp != 1 and cfg.rollout.backend != "vllm":
        raise UserError(
            f"--vllm.tensor_parallel_size {tp}: hf rollout engines hold a whole model each (tensor "
            "parallelism needs --rollout.backend vllm); use --vllm.num_engines for more engines."
        )
    procs = cfg.actor.num_nodes * cfg.actor.num_gpus_per_node
    if tp != 1 and not v.num_engines and procs % tp:
        raise UserError(
            f"--vllm.tensor_parallel_size {tp} without --vllm.num_engines: the policy's {procs} actors sample "
            f"with their own vLLM engines, {tp} consecutive actors per engine, so {tp} must divide "
            "--actor.num_nodes x --actor.num_gpus_per_node; or give --vllm.num_engines (engines of their own)."
        )
    needs_ref = cfg.algo.kl.init_coef > 0
    needs_critic = cfg.repulse.method == "rl" and cfg.algo.advantage.estimator == "gae"
    roles = {"actor": cfg.actor, "critic": cfg.critic, "ref": cfg.ref, "reward": cfg.reward}
    actor = _shape(cfg.actor)
    critic = _shape(cfg.critic)
    if needs_critic and critic[0] * critic[1] != actor[0] * actor[1]:
        raise UserError(
            f"--critic.num_nodes x --critic.num_gpus_per_node ({critic[0]} x {critic[1]}) must give the actor's "
            f"{actor[0]} x {actor[1]} processes: the critic trains on the same data-parallel shards of each step."
        )
    pairs = []
    if launch.colocate_actor_ref:
        pairs.append(("colocate_actor_ref", "ref", needs_ref))
    if launch.colocate_critic_reward:
        pairs.append(
            ("colocate_critic_reward", "critic", needs_critic and bool(cfg.reward.model_name_or_path))
        )
    for flag, role, used in pairs:
        if not used:
            warn_once(
                f"launch.{flag}",
                f"--launch.{flag} has no effect: this run has no "
                + ("reference (--algo.kl.init_coef 0)" if role == "ref" else "critic and reward model pair")
                + ".",
            )
        elif flag == "colocate_actor_ref" and _shape(cfg.ref) != actor:
            raise UserError(
                f"--launch.colocate_actor_ref needs the reference's --ref.num_nodes x --ref.num_gpus_per_node "
                f"{_shape(cfg.ref)} to equal the actor's {actor}."
            )
        elif flag == "colocate_critic_reward" and _shape(cfg.reward) != _shape(cfg.critic):
            raise UserError(
                f"--launch.colocate_critic_reward needs --reward.num_nodes x --reward.num_gpus_per_node "
                f"{_shape(cfg.reward)} to equal the critic's {_shape(cfg.critic)}."
            )
    if launch.colocate_all_models:
        used = {"ref": needs_ref, "reward": bool(cfg.reward.model_name_or_path)}
        for role, on in used.items():
            n, p = _shape(roles[role])
            if on and n * p > actor[0] * actor[1]:
                raise UserError(
                    f"--launch.colocate_all_models puts every model on the policy's devices: --{role}.num_nodes x "
                    f"--{role}.num_gpus_per_node ({n} x {p}) must not exceed the actor's {actor[0]} x {actor[1]}."
                )
        if (v.num_engines or 0) > actor[0] * actor[1]:
            raise UserError(
                f"--launch.colocate_all_models: --vllm.num_engines {v.num_engines} engines do not fit the "
                f"policy's {actor[0] * actor[1]} devices (one engine per device)."
            )
    if not cfg.reward.model_name_or_path and _shape(cfg.reward) != (1, 1):
        warn_once(
            "launch.reward_shape",
            "--reward.num_nodes / --reward.num_gpus_per_node have no effect: without --reward.model_name_or_path "
            "the rewards (functions, HTTP servers) are computed by the controller.",
        )


def main(argv: list[str]) -> int:
    cfg = parse_config("rl", RLConfig, argv, validate)
    if cfg is None:
        return 0
    from repulse.trainers.rl.loop import run

    return run(cfg)
