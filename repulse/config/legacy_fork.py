"""The RePULSe fork's flags (its ``train_ppo``) translated: method, signs, rates, sizes (spec §1.5, §7).

The fork picks its algorithm from a combination of mode flags, writes β with the opposite sign,
gives learning rates roles that depend on the mode and counts batches in prompts; the rules here
turn one of its commands into our explicit ``--repulse.*`` / ``--algo.*`` / ``--train.*`` flags,
with a note for everything derived. The table-driven renames and the shared machinery are in
``repulse.config.legacy``.
"""

from __future__ import annotations

from repulse.config.legacy_argv import _Ctx, _Out, flip_sign
from repulse.config.sections import CkptSection, DataSection, RolloutSection
from repulse.errors import UserError

# RePULSe fork: (--harmlessness_training_loss_type, --use_base_as_proposal) -> method (spec §1.5).
_HARMLESS_METHODS: dict[tuple[str, bool], str] = {
    ("reinforce", False): "reinforce",
    ("reinforce", True): "reinforce",  # the proposal flag has no effect without the negative term
    ("neg_training", False): "repulse",
    ("neg_training", True): "p_proposal",
}
_FORK_MODE_FLAGS = (
    "do_harmlessness_training",
    "harmlessness_training_loss_type",
    "use_base_as_proposal",
    "reward_transform",
    "actor_loss_type",
    "reinforce_baseline_type",
)
_TRANSFORMS = ("minus_alpha_exp_beta_r", "minus_alpha_ind")


def _derive_method(ctx: _Ctx) -> tuple[str, str | None]:
    """The fork's mode flags -> (``repulse.method``, ``repulse.reward_transform``).

    The fork picks its algorithm from a combination of five flags (spec §1.5): PPO without
    ``--do_harmlessness_training``; otherwise the LM loss type, the reward transform and
    ``--use_base_as_proposal`` choose REINFORCE, reward-transformed REINFORCE, the
    p-proposal ablation or RePULSe. Combinations the paper never ran are refused.
    """
    actor_loss = ctx.one("actor_loss_type") or "ppo"
    transform = ctx.one("reward_transform")
    if transform is not None and transform not in _TRANSFORMS:
        raise UserError(f"--reward_transform {transform}: repulse implements {' and '.join(_TRANSFORMS)}.")
    if not ctx.has("do_harmlessness_training"):
        if actor_loss != "ppo":
            raise UserError(
                f"--actor_loss_type {actor_loss} without --do_harmlessness_training trains only a proposal "
                "(the fork's twisted-SMC experiments); repulse does not have that mode."
            )
        if transform is not None:
            raise UserError(
                "--reward_transform is implemented for the REINFORCE baseline "
                "(--do_harmlessness_training --harmlessness_training_loss_type reinforce), not for PPO."
            )
        return "rl", None
    loss_type = ctx.one("harmlessness_training_loss_type")
    use_base = ctx.has("use_base_as_proposal")
    if (loss_type or "", use_base) not in _HARMLESS_METHODS:
        raise UserError(
            f"--harmlessness_training_loss_type {loss_type}: repulse implements 'reinforce' and 'neg_training' "
            "(neg_reinforce was a negative result in the paper, App. C.2)."
        )
    method = _HARMLESS_METHODS[(loss_type, use_base)]
    if transform is not None:
        if method != "reinforce":
            raise UserError(
                "--reward_transform inside RePULSe (neg_training) is not supported (paper App. D.5)."
            )
        method = "reward_transform"
    if method == "repulse" and actor_loss != "ctl":
        raise UserError(
            f"--actor_loss_type {actor_loss}: RePULSe's proposal is trained with the CTL loss (ctl)."
        )
    baseline = ctx.one("reinforce_baseline_type")
    if baseline != "expectation":
        raise UserError(
            f"--reinforce_baseline_type {baseline}: repulse's REINFORCE term uses the leave-one-out "
            "baseline (--reinforce_baseline_type expectation, as every command of the paper does); "
            "other baselines are not implemented."
        )
    return method, transform


def fork_rule(ctx: _Ctx, out: _Out) -> None:
    """All mode-dependent translations of a RePULSe-fork command (spec §1.5-§1.7, §7)."""
    method, transform = _derive_method(ctx)
    out.consumed.update(_FORK_MODE_FLAGS)
    out.emit("repulse.method", method)
    if transform is not None:
        out.emit("repulse.reward_transform", transform)
    given = [f"--{n}" + (f" {ctx.one(n)}" if ctx.get(n) else "") for n in _FORK_MODE_FLAGS if ctx.has(n)]
    derived = f"--repulse.method {method}" + (f" --repulse.reward_transform {transform}" if transform else "")
    if method == "rl" and not ctx.has("advantage_estimator", "algo.advantage.estimator"):
        out.emit("algo.advantage.estimator", "gae")
        derived += " --algo.advantage.estimator gae"
    out.notes.append(f"RePULSe fork mode {' '.join(given) or '(PPO by default)'} -> {derived}.")
    _fork_checks(ctx, out)
    _fork_beta_alpha(ctx, out, method, transform)
    _fork_learning_rates(ctx, out, method)
    group = _fork_sampling(ctx, out)
    _fork_episodes(ctx, out, method)
    _fork_checkpoints(ctx, out, method)
    _fork_heldout_eval(ctx, out, group)
    _fork_negdata(ctx, out)
    _fork_defaults(ctx, out, method)


_PARAMETERIZATIONS = ("policy", "policy_psi_q_p_s_t")


def _fork_checks(ctx: _Ctx, out: _Out) -> None:
    """``--rm_type``/``--parameterization``: accept the values the paper used, refuse the rest."""
    rm_type = ctx.one("rm_type")
    if rm_type is not None and rm_type != "rlhf":
        raise UserError(
            f"--rm_type {rm_type}: repulse scores with the raw reward (the paper's rm_type rlhf)."
        )
    if ctx.has("rm_type"):
        out.ignore("rm_type", "the raw reward score is used, as with the paper's rm_type rlhf")
    else:
        out.notes.append(
            "no --rm_type: the fork's default (exp_beta_toxicity_class_logprob) turned the score into a class "
            "log-probability; repulse uses the raw reward (rm_type rlhf, as in every paper run)."
        )
    param = ctx.one("parameterization")
    if param is not None and param not in _PARAMETERIZATIONS:
        raise UserError(
            f"--parameterization {param}: repulse implements the paper's policy_psi_q_p_s_t only."
        )
    if ctx.has("parameterization"):
        out.ignore(
            "parameterization", "the proposal is always a full LM with psi = q/p per token, as in the paper"
        )


def _fork_beta_alpha(ctx: _Ctx, out: _Out, method: str, transform: str | None) -> None:
    """β, α and the reward-transform (a, b): sign flips and the fork's shared defaults.

    The fork's β_c < 0 gives σ ∝ p·exp(β_c·r); ours is the paper's β = −β_c > 0. Its
    transform r − a·exp(b_c·r) takes a from ``--rew_trans_alpha`` (default ``--alpha``) and
    b_c from ``--rew_trans_beta`` (default ``--target_dist_beta``); ours is r − a·exp(−b·r)
    with b = −b_c. Flags a method never reads are reported as ignored.
    """
    names = ("target_dist_beta", "alpha", "rew_trans_alpha", "rew_trans_beta")
    out.consumed.update(names)
    beta_c, alpha = ctx.one("target_dist_beta"), ctx.one("alpha")
    used: set[str] = set()
    if method in ("repulse", "p_proposal"):
        if beta_c is not None:
            out.emit("repulse.beta", flip_sign(beta_c))
            out.notes.append(
                f"--target_dist_beta {beta_c} -> --repulse.beta {flip_sign(beta_c)} (sign flipped: the fork's "
                "beta_c < 0 is the paper's beta > 0 in sigma ∝ p·exp(-beta·r))."
            )
        if alpha is not None:
            out.emit("repulse.alpha", alpha)
        used |= {"target_dist_beta", "alpha"}
    elif method == "reward_transform":
        a = ctx.one("rew_trans_alpha") or alpha
        b_c = ctx.one("rew_trans_beta") or beta_c
        used |= {"rew_trans_alpha" if ctx.has("rew_trans_alpha") else "alpha"}
        if a is not None:
            out.emit("repulse.transform_a", a)
        if transform == "minus_alpha_exp_beta_r" and b_c is not None:
            used |= {"rew_trans_beta" if ctx.has("rew_trans_beta") else "target_dist_beta"}
            out.emit("repulse.transform_b", flip_sign(b_c))
            out.notes.append(
                f"reward transform r - a·exp(b_c·r) with a={a}, b_c={b_c} -> --repulse.transform_a {a} "
                f"--repulse.transform_b {flip_sign(b_c)} (ours is r - a·exp(-b·r), b = -b_c)."
            )
    for name in names:
        if ctx.has(name) and name not in used:
            out.ignore(name, f"not used by method '{method}'")


def _fork_learning_rates(ctx: _Ctx, out: _Out, method: str) -> None:
    """The fork's three learning rates change roles with the mode (spec §1.6).

    PPO mode: ``--actor_learning_rate`` is the policy's, ``--critic_learning_rate`` the
    critic's. RePULSe mode: ``--base_actor_learning_rate`` is the LM p's and
    ``--actor_learning_rate`` the proposal q's; there is no critic.
    """
    names = ("actor_learning_rate", "critic_learning_rate", "base_actor_learning_rate")
    out.consumed.update(names)
    actor, critic, base = (ctx.one(n) for n in names)
    if method == "rl":
        if actor is not None:
            out.emit("actor.adam.lr", actor)
        if critic is not None:
            out.emit("critic.adam.lr", critic)
        if base is not None:
            out.ignore("base_actor_learning_rate", "used only with --do_harmlessness_training")
        return
    if base is not None:
        out.emit("actor.adam.lr", base)
    if base is not None:
        out.notes.append(
            f"--base_actor_learning_rate {base} is the LM p's lr here -> --actor.adam.lr {base}."
        )
    if method == "repulse" and actor is not None:
        out.emit("repulse.proposal_lr", actor)
        out.notes.append(
            f"--actor_learning_rate {actor} is the proposal q's lr here -> --repulse.proposal_lr {actor}."
        )
    elif actor is not None:
        out.ignore("actor_learning_rate", f"the proposal q's lr; method '{method}' builds no proposal")
    if critic is not None:
        out.ignore("critic_learning_rate", f"method '{method}' has no critic")


def _fork_sampling(ctx: _Ctx, out: _Out) -> int:
    """Group size and micro-batches: the fork counts prompts where ours counts samples.

    ``--duplicate_rollout_batch_by N`` tiles each prompt N times (our
    ``rollout.n_samples_per_prompt``; the fork asserted its own ``--n_samples_per_prompt`` to
    be 1, so the product is the group size). ``--micro_rollout_batch_size P`` is P prompts,
    i.e. P·N samples per generation micro-batch. Returns N.
    """
    out.consumed |= {"duplicate_rollout_batch_by", "n_samples_per_prompt", "micro_rollout_batch_size"}
    group = ctx.integer("duplicate_rollout_batch_by", 1) * ctx.integer("n_samples_per_prompt", 1)
    if ctx.has("duplicate_rollout_batch_by", "n_samples_per_prompt"):
        out.emit("rollout.n_samples_per_prompt", str(group))
    if ctx.has("micro_rollout_batch_size"):
        prompts = ctx.integer("micro_rollout_batch_size", 1)
        out.emit("rollout.micro_batch_size", str(prompts * group))
        out.notes.append(
            f"--micro_rollout_batch_size {prompts} counted prompts in the fork; repulse counts samples: "
            f"--rollout.micro_batch_size {prompts * group} ({prompts} prompts x {group} samples)."
        )
    return group


def _fork_episodes(ctx: _Ctx, out: _Out, method: str) -> None:
    """Passes over the prompts: ``--num_episodes`` in PPO mode; in RePULSe mode it is N_q.

    With ``--do_harmlessness_training`` the passes are ``--harmlessness_training_num_episodes``
    (times the redundant ``..._episodes_per_loop``) and ``--num_episodes`` becomes the number
    of q updates per p update (spec §1.7).
    """
    names = ("num_episodes", "harmlessness_training_num_episodes", "harmlessness_training_episodes_per_loop")
    out.consumed.update(names)
    episodes = ctx.one("num_episodes")
    if method == "rl":
        if episodes is not None:
            out.emit("train.num_episodes", episodes)
        for name in names[1:]:
            if ctx.has(name):
                out.ignore(name, "used only with --do_harmlessness_training")
        return
    if ctx.has(*names[1:]):
        passes = ctx.integer(names[1], 1) * ctx.integer(names[2], 1)
        out.emit("train.num_episodes", str(passes))
    if episodes is None:
        return
    if method == "repulse":
        out.emit("repulse.q_updates_per_step", episodes)
        out.notes.append(
            f"RePULSe mode: --num_episodes {episodes} is the number of q updates per p update -> "
            f"--repulse.q_updates_per_step {episodes}; passes over the prompts come from "
            "--harmlessness_training_num_episodes (--train.num_episodes)."
        )
    else:
        out.ignore("num_episodes", f"q updates per p update; method '{method}' has no proposal")


def _fork_checkpoints(ctx: _Ctx, out: _Out, method: str) -> None:
    """``--save_steps_harmless`` saved p in RePULSe mode (``--save_steps`` saved q); PPO used ``--save_steps``."""
    out.consumed |= {"save_steps", "save_steps_harmless"}
    steps, harmless = ctx.one("save_steps"), ctx.one("save_steps_harmless")
    main, other = (steps, "save_steps_harmless") if method == "rl" else (harmless, "save_steps")
    if main is not None:
        out.emit("ckpt.save_steps", main)
    if ctx.has(other):
        reason = (
            "used only with --do_harmlessness_training"
            if method == "rl"
            else "the proposal's own checkpoints; every repulse checkpoint holds the whole training state"
        )
        out.ignore(other, reason)


def _fork_heldout_eval(ctx: _Ctx, out: _Out, group: int) -> None:
    """Held-out sampling after training: N·k samples per prompt at the training temperature.

    The fork drew ``--duplicate_rollout_batch_by`` samples per held-out prompt in each of
    ``--sampling_iters`` passes, with the training sampler. The held-out key/template must
    match the training ones: repulse reads both sets with ``data.input_key``/``input_template``.
    """
    out.consumed |= {
        "evaluate_heldout_sampling",
        "sampling_iters",
        "heldout_input_key",
        "heldout_input_template",
    }
    for name, ours, default in (
        ("heldout_input_key", ("input_key", "data.input_key"), DataSection().input_key),
        ("heldout_input_template", ("input_template", "data.input_template"), DataSection().input_template),
    ):
        value = ctx.one(name)
        if value is None:
            continue
        train_value = ctx.one(*ours) if ctx.has(*ours) else default
        if value != train_value:
            raise UserError(
                f"--{name} {value!r} differs from the training prompts' {train_value!r}: repulse reads the "
                f"held-out prompts with --data.{ours[0]}; give both files the same key/template."
            )
        out.ignore(
            name, "same as the training prompts'; repulse reads both with data.input_key/input_template"
        )
    if not ctx.has("evaluate_heldout_sampling"):
        if ctx.has("sampling_iters"):
            out.ignore("sampling_iters", "used only with --evaluate_heldout_sampling")
        return
    passes = ctx.integer("sampling_iters", 1)
    temperature = ctx.one("temperature", "rollout.temperature") or str(RolloutSection().temperature)
    out.emit("eval.n_samples_per_prompt", str(group * passes))
    out.emit("eval.temperature", temperature)
    out.notes.append(
        f"--evaluate_heldout_sampling --sampling_iters {passes}: --eval.n_samples_per_prompt {group * passes} "
        f"(duplicate_rollout_batch_by x sampling_iters) --eval.temperature {temperature} (the training sampler)."
    )


def _fork_negdata(ctx: _Ctx, out: _Out) -> None:
    """``--save_negdata`` was a switch writing a pickle under ``--save_path``; ours takes a file path."""
    out.consumed.add("save_negdata")
    values = ctx.get("save_negdata")
    if values is None:
        return
    if values:
        out.emit("repulse.save_negdata", values[0])
        return
    base = ctx.one("save_path", "ckpt.output_dir") or CkptSection().output_dir
    path = base.rstrip("/") + "/negdata.jsonl"
    out.emit("repulse.save_negdata", path)
    out.notes.append(
        f"--save_negdata -> --repulse.save_negdata {path} (JSON lines instead of the fork's pickle)."
    )


# Defaults of the fork that differ from ours and change results (spec §1.5, §7, §4.2).
_FORK_DEFAULTS: tuple[tuple[tuple[str, ...], str, str, str], ...] = (
    # (flags that set it, our field, the fork's default, which methods)
    (("init_kl_coef", "algo.kl.init_coef"), "algo.kl.init_coef", "1", "all"),
    (("lambd", "algo.advantage.lambd"), "algo.advantage.lambd", "0.95", "rl"),
    (("value_clip", "critic.value_clip"), "critic.value_clip", "0.2", "rl"),
    (("bf16", "param_dtype", "ds.param_dtype", "engine.param_dtype"), "engine.param_dtype", "fp32", "all"),
)


def _fork_defaults(ctx: _Ctx, out: _Out, method: str) -> None:
    """Make the fork's own defaults explicit where ours differ (fp32 weights, λ_GAE 0.95, ...)."""
    made = []
    for flags, dest, value, methods in _FORK_DEFAULTS:
        if (methods == "all" or methods == method) and not ctx.has(*flags):
            out.emit(dest, value)
            made.append(f"--{dest} {value}")
    if made:
        out.notes.append(f"the fork's defaults made explicit: {' '.join(made)}.")
