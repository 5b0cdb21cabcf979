"""PPO policy loss (clip, asymmetric clip, dual clip), value loss, token-level aggregation,
and the actor objective's entropy / KL terms — hand-derived numbers (spec §3.4–3.5).

Ratios are set exactly: old log-probs 0, new log-probs log ρ, so ρ_t = exp(log ρ_t).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from pytest import approx

from repulse.losses.aggregation import token_sum_and_count
from repulse.losses.policy import ppo_policy_loss, value_loss

T = torch.tensor
NAN = float("nan")


def log_ratios(rho) -> torch.Tensor:
    return torch.tensor(rho).log()


def close(x: torch.Tensor, expected, abs: float = 1e-6) -> None:
    assert x.flatten().tolist() == approx(torch.as_tensor(expected).flatten().tolist(), abs=abs)


# ----------------------------------------------------------------------------- clipped surrogate

# ε_lo = ε_hi = .2, clip range [.8, 1.2]; ℓ = −min(ρA, clip(ρ)A)
#   row 0, A = +1:  ρ = 1.1 → min(1.1, 1.1) = 1.1       ℓ = −1.1   (inside)
#                   ρ = 1.5 → min(1.5, 1.2) = 1.2       ℓ = −1.2   (clipped: surr2 < surr1)
#                   ρ = 0.5 → min(0.5, 0.8) = 0.5       ℓ = −0.5   (pessimistic: unclipped)
#   row 1, A < 0:   ρ = 1.5, A = −1 → min(−1.5, −1.2) = −1.5   ℓ = 1.5 (unclipped)
#                   ρ = 0.5, A = −1 → min(−0.5, −0.8) = −0.8   ℓ = 0.8 (clipped)
#                   ρ = 0.9, A = −2 → min(−1.8, −1.8) = −1.8   ℓ = 1.8 (inside)
RHO = [[1.1, 1.5, 0.5], [1.5, 0.5, 0.9]]
ADV = T([[1.0, 1.0, 1.0], [-1.0, -1.0, -2.0]])
LOSS = [[-1.1, -1.2, -0.5], [1.5, 0.8, 1.8]]


def test_clipped_surrogate_both_signs_of_advantage():
    logp = log_ratios(RHO).requires_grad_()
    loss, m = ppo_policy_loss(logp, torch.zeros(2, 3), ADV, torch.ones(2, 3))
    close(loss, LOSS)
    # clip_frac = 2 clipped of 6; ratio mean = (1.1 + 1.5 + .5 + 1.5 + .5 + .9)/6 = 1
    # approx_kl = mean(log π_old − log π) = −(ln 1.1 + 2 ln 1.5 + 2 ln .5 + ln .9)/6
    #           = −(.0953102 + .8109302 − 1.3862944 − .1053605)/6 = .5854145/6 = .0975691
    assert float(m["clip_frac"]) == approx(2 / 6)
    assert float(m["ratio"]) == approx(1.0)
    assert float(m["approx_kl"]) == approx(0.0975691, abs=1e-6)
    # d ℓ / d log π = −ρA on unclipped tokens (dρ/dlog π = ρ) and 0 on clipped ones:
    #   (−1.1, 0, −.5 | 1.5, 0, 1.8)
    loss.sum().backward()
    close(logp.grad, [[-1.1, 0.0, -0.5], [1.5, 0.0, 1.8]], abs=1e-5)


def test_asymmetric_clip_higher():
    # ε_lo = .1, ε_hi = .3 (clip range [.9, 1.3]) vs symmetric .2 ([.8, 1.2]):
    #                        asymmetric                       symmetric
    #   ρ=1.25, A=+1   min(1.25, 1.25) → −1.25         min(1.25, 1.2) → −1.2 (clipped)
    #   ρ=1.5,  A=+1   min(1.5, 1.3)   → −1.3 (clip)   min(1.5, 1.2)  → −1.2 (clipped)
    #   ρ=0.85, A=+1   min(.85, .9)    → −.85          min(.85, .85)  → −.85
    #   ρ=0.85, A=−1   min(−.85, −.9)  → .9 (clip)     min(−.85, −.85) → .85
    #   ρ=1.25, A=−1   min(−1.25,−1.25)→ 1.25          min(−1.25, −1.2) → 1.25
    #   ρ=0.6,  A=−1   min(−.6, −.9)   → .9 (clip)     min(−.6, −.8)  → .8 (clipped)
    logp = log_ratios([1.25, 1.5, 0.85, 0.85, 1.25, 0.6])
    adv = T([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    mask = torch.ones(6)
    loss, m = ppo_policy_loss(logp, torch.zeros(6), adv, mask, eps_low=0.1, eps_high=0.3)
    close(loss, [-1.25, -1.3, -0.85, 0.9, 1.25, 0.9])
    assert float(m["clip_frac"]) == approx(3 / 6)
    loss, m = ppo_policy_loss(logp, torch.zeros(6), adv, mask)
    close(loss, [-1.2, -1.2, -0.85, 0.85, 1.25, 0.8])
    assert float(m["clip_frac"]) == approx(3 / 6)


def test_dual_clip_bounds_only_negative_advantages():
    # c = 3: for A < 0, ℓ = −max(min(ρA, clip(ρ)A), c·A); unchanged for A ≥ 0
    #   ρ=5, A=−1:  min(−5, −1.2) = −5; max(−5, −3) = −3     ℓ = 3   (without dual clip: 5)
    #   ρ=5, A=−2:  min(−10, −2.4) = −10; max(−10, −6) = −6  ℓ = 6   (without: 10)
    #   ρ=2, A=−1:  min(−2, −1.2) = −2; max(−2, −3) = −2      ℓ = 2   (bound not reached)
    #   ρ=.5, A=−1: min(−.5, −.8) = −.8; max(−.8, −3) = −.8   ℓ = .8
    #   ρ=5, A=+1:  min(5, 1.2) = 1.2                         ℓ = −1.2 (A > 0: untouched)
    #   ρ=5, A=0:   0                                         ℓ = 0
    logp = log_ratios([5.0, 5.0, 2.0, 0.5, 5.0, 5.0]).requires_grad_()
    adv = T([-1.0, -2.0, -1.0, -1.0, 1.0, 0.0])
    loss, _ = ppo_policy_loss(logp, torch.zeros(6), adv, torch.ones(6), dual_clip=3.0)
    close(loss, [3.0, 6.0, 2.0, 0.8, -1.2, 0.0], abs=1e-5)
    plain, _ = ppo_policy_loss(logp, torch.zeros(6), adv, torch.ones(6))
    close(plain, [5.0, 10.0, 2.0, 0.8, -1.2, 0.0], abs=1e-5)
    # the dual-clipped tokens (−c·A, a constant) carry no gradient; ρ=2, A=−1 keeps −ρA → 2
    loss.sum().backward()
    close(logp.grad, [0.0, 0.0, 2.0, 0.0, 0.0, 0.0], abs=1e-5)
    with pytest.raises(ValueError, match="dual_clip"):
        ppo_policy_loss(logp, torch.zeros(6), adv, torch.ones(6), dual_clip=1.0)


@pytest.mark.parametrize("kwargs", [{}, {"dual_clip": 3.0}, {"eps_low": 0.1, "eps_high": 0.28}])
def test_ratio_exactly_one_gives_minus_mean_advantage(kwargs):
    # ρ ≡ 1: surr1 = surr2 = A ⇒ ℓ = −A, nothing clipped, approx_kl = 0.
    # Token mean over m = (1 1 1 | 1 0 0): −(1 − 2 + 3 + .5)/4 = −2.5/4 = −.625
    logp = T([[-0.7, -1.2, -0.1], [-2.0, -0.3, NAN]])  # nan at a padded position
    adv = T([[1.0, -2.0, 3.0], [0.5, 4.0, 9.0]])
    mask = T([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    loss, m = ppo_policy_loss(logp, logp.clone(), adv, mask, **kwargs)
    total, count = token_sum_and_count(loss, mask)
    assert float(total / count) == approx(-0.625)
    assert float(m["clip_frac"]) == 0.0
    assert float(m["approx_kl"]) == 0.0
    assert float(m["ratio"]) == 1.0


def test_token_level_aggregation_is_split_invariant_and_ignores_padding():
    # ρ ≡ 1, A = (1, 1, 1) for a 3-token sample and (3, pad, pad) for a 1-token one.
    #   token level:    −(1 + 1 + 1 + 3)/4 = −1.5
    #   (sequence mean would be −(1 + 3)/2 = −2: the long sample would count as much as the short)
    # Two micro-batches of one sample each: (−3, 3) and (−3, 1) → (−3 − 3)/(3 + 1) = −1.5
    old = T([[-1.0, -1.0, -1.0], [-1.0, NAN, NAN]])
    adv = T([[1.0, 1.0, 1.0], [3.0, 7.0, 7.0]])
    mask = T([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    loss, metrics = ppo_policy_loss(old.clone(), old, adv, mask)
    total, count = token_sum_and_count(loss, mask)
    assert (float(total), float(count)) == approx((-6.0, 4.0))
    parts = [token_sum_and_count(loss[i : i + 1], mask[i : i + 1]) for i in range(2)]
    assert [float(x) for part in parts for x in part] == approx([-3.0, 3.0, -3.0, 1.0])
    assert float(sum(s for s, _ in parts) / sum(c for _, c in parts)) == approx(-1.5)
    # nan in padded log-probs does not reach the metrics (before: clip_frac = ratio = nan)
    assert all(math.isfinite(float(v)) for v in metrics.values()), metrics


def test_metrics_are_masked_means():
    # m = (1, 0): only the first token counts. ρ = (1.5, 0.5), A = (1, −1)
    #   clip_frac: token 0 clipped (1.2 < 1.5) → 1; token 1 (also clipped) is masked out → 1/1
    #   ratio = 1.5, approx_kl = −ln 1.5 = −.4054651
    loss, m = ppo_policy_loss(log_ratios([1.5, 0.5]), torch.zeros(2), T([1.0, -1.0]), T([1.0, 0.0]))
    assert float(m["clip_frac"]) == approx(1.0)
    assert float(m["ratio"]) == approx(1.5)
    assert float(m["approx_kl"]) == approx(-math.log(1.5))
    # an empty mask gives 0 metrics, not nan
    _, m = ppo_policy_loss(log_ratios([1.5, 0.5]), torch.zeros(2), T([1.0, -1.0]), torch.zeros(2))
    assert [float(v) for v in m.values()] == [0.0, 0.0, 0.0]


# ----------------------------------------------------------------------------- value loss


def test_clipped_value_loss_by_hand():
    # ε_v = .2, V_clip = V_old + clip(V − V_old, −.2, .2), ℓ = ½·max((V_clip − R)², (V − R)²)
    #   V=1.0, V_old=.5, R=1: V_clip = .7; max(.09, 0)   = .09 → .045
    #   V=0.6, V_old=.5, R=1: V_clip = .6; max(.16, .16) = .16 → .08
    #   V=0.0, V_old=.5, R=1: V_clip = .3; max(.49, 1)   = 1   → .5
    #   V=2.0, V_old=.5, R=1: V_clip = .7; max(.09, 1)   = 1   → .5
    #   V=0.2, V_old=.5, R=0: V_clip = .3; max(.09, .04) = .09 → .045
    v = T([1.0, 0.6, 0.0, 2.0, 0.2])
    old = T([0.5, 0.5, 0.5, 0.5, 0.5])
    ret = T([1.0, 1.0, 1.0, 1.0, 0.0])
    mask = T([1.0, 1.0, 1.0, 1.0, 0.0])
    out = value_loss(v, old, ret, mask, value_clip=0.2)
    close(out, [0.045, 0.08, 0.5, 0.5, 0.045])
    # without a clip: ½(V − R)² = (0, .08, .5, .5, .02)
    close(value_loss(v, old, ret, mask), [0.0, 0.08, 0.5, 0.5, 0.02])
    # token-level aggregate over the 4 unmasked tokens: (.045 + .08 + .5 + .5)/4 = .28125
    total, count = token_sum_and_count(out, mask)
    assert float(total / count) == approx(0.28125)


# ----------------------------------------------------------------------------- the actor objective


def test_actor_objective_adds_kl_loss_and_subtracts_entropy_bonus(monkeypatch):
    # ℓ_t = ℓ^pg_t + β·k_t − c·H_t, summed over action tokens (spec §3.4, PolicyUpdate).
    # mask (1, 1, 0); ρ ≡ 1 (log π = log π_old = ln .5); A = (1, −2, 5 pad) → ℓ^pg = (−1, 2)
    # π_ref = .25 ⇒ k1 = ln .5 − ln .25 = ln 2 per token, β = .1
    # H = (ln 2, ln 3, 9 pad), c = .01
    #   t0: −1 + .1 ln 2 − .01 ln 2 = −.9376168
    #   t1:  2 + .1 ln 2 − .01 ln 3 = 2.0583286
    #   sum = 1 + .2 ln 2 − .01 ln 6 = 1.1207118
    from repulse.trainers.rl import updates as rl_updates

    logp = torch.full((1, 3), math.log(0.5))
    ent = T([[math.log(2.0), math.log(3.0), 9.0]])
    monkeypatch.setattr(rl_updates, "action_logprobs", lambda *a, **k: (logp.clone(), ent))
    exp = SimpleNamespace(
        samples=None,
        action_mask=T([[1.0, 1.0, 0.0]]),
        old_logprobs=logp.clone(),
        advantages=T([[1.0, -2.0, 5.0]]),
        ref_logprobs=torch.full((1, 3), math.log(0.25)),
    )
    upd = rl_updates.PolicyLoss(
        eps_low=0.2,
        eps_high=0.2,
        dual_clip=None,
        temperature=1.0,
        kl_loss_coef=0.1,
        kl_estimator="k1",
        entropy_coef=0.01,
    )
    out = upd.loss(None, exp)
    assert float(out.loss_sum) == approx(1 + 0.2 * math.log(2) - 0.01 * math.log(6))
    assert out.stats["policy_loss"] == approx((1.0, 2.0))  # (−1 + 2, 2 tokens)
    assert out.stats["kl_loss"] == approx((2 * math.log(2), 2.0))
    assert out.stats["entropy"] == approx((math.log(6), 2.0))
    assert out.stats["clip_frac"] == approx((0.0, 2.0))


# ----------------------------------------------------------------------------- GSPO and the rollout IS correction


def test_gspo_sequence_ratio_and_clipped_loss_by_hand():
    # log π − log π_old = (0.2, 0.4) on the two action tokens → mean 0.3 → s = e^0.3 = 1.3498588
    # A = 1: surr1 = 1.34986, surr2 = clip(s, 0.8, 1.2) = 1.2 → ℓ = −1.2 per token (clipped)
    # A = −1 (second row, same ratio): surr1 = −1.34986, surr2 = −1.2 → ℓ = 1.34986 (unclipped)
    from repulse.losses.policy import gspo_policy_loss, gspo_sequence_ratio

    old = torch.zeros(2, 3)
    logp = T([[0.2, 0.4, 7.0], [0.2, 0.4, -3.0]])  # the third position is padding
    mask = T([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    s = gspo_sequence_ratio(logp, old, mask)
    assert s[:, :2].flatten().tolist() == approx([math.exp(0.3)] * 4)
    assert s[:, 2].tolist() == [0.0, 0.0]
    adv = T([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    loss, m = gspo_policy_loss(logp, old, adv, mask, 0.2, 0.2)
    assert (loss * mask)[0, :2].tolist() == approx([-1.2, -1.2])
    assert (loss * mask)[1, :2].tolist() == approx([math.exp(0.3)] * 2)
    assert float(m["clip_frac"]) == approx(0.5)
    # a token-level PPO ratio would differ per token (e^0.2, e^0.4): GSPO's does not
    from repulse.losses.policy import ppo_policy_loss

    ppo, _ = ppo_policy_loss(logp, old, adv, mask, 0.2, 0.2)
    assert (ppo * mask)[1, :2].tolist() == approx([math.exp(0.2), math.exp(0.4)])


def test_gspo_policy_loss_aggregates_per_sequence():
    # two sequences of 2 and 1 tokens, ρ ≡ 1, A = (1, 3 | 2): per-token ℓ = −A
    # GSPO: Σ_i mean_t ℓ = −(1 + 3)/2 − 2 = −4 over 2 units (sequences); PPO: Σ ℓ = −6 over 3 tokens
    from repulse.trainers.rl import updates as rl_updates

    logp = torch.zeros(2, 2)
    mask = T([[1.0, 1.0], [1.0, 0.0]])
    exp = SimpleNamespace(
        samples=SimpleNamespace(logprobs=None), action_mask=mask, old_logprobs=logp.clone(),
        advantages=T([[1.0, 3.0], [2.0, 0.0]]), ref_logprobs=None,
    )  # fmt: skip
    args = dict(
        eps_low=0.2, eps_high=0.2, dual_clip=None, temperature=1.0, kl_loss_coef=0.0, kl_estimator="k1"
    )
    import pytest

    mp = pytest.MonkeyPatch()
    mp.setattr(rl_updates, "action_logprobs", lambda *a, **k: (logp.clone(), torch.zeros(2, 2)))
    try:
        gspo = rl_updates.PolicyLoss(**args, entropy_coef=None, loss_type="gspo")
        ppo = rl_updates.PolicyLoss(**args, entropy_coef=None)
        assert float(gspo.loss(None, exp).loss_sum) == approx(-4.0) and gspo.units(exp) == 2.0
        assert float(ppo.loss(None, exp).loss_sum) == approx(-6.0) and ppo.units(exp) == 3.0
    finally:
        mp.undo()


def test_rollout_is_weights_by_hand():
    # π_old = (.5, .4, .1), π_roll = (.25, .8, .5) → w = (2, .5, .2); band [0.5, 5]
    #   tis:    clamp → (2, .5, .5)        icepop: drop outside → (2, .5, 0)
    #   seq-mask-tis: geometric mean (2·.5·.2)^(1/3) = .5848 ∈ band → w kept unclamped (2, .5, .2);
    #                 with the band [0.6, 5] the whole sequence is dropped
    from repulse.losses.policy import rollout_is_weights

    old = torch.log(T([[0.5, 0.4, 0.1]]))
    roll = torch.log(T([[0.25, 0.8, 0.5]]))
    mask = torch.ones(1, 3)
    w, m = rollout_is_weights(old, roll, mask, "tis", 0.5, 5.0)
    assert w.flatten().tolist() == approx([2.0, 0.5, 0.5])
    assert float(m["rollout_kl"]) == approx(-(math.log(2) + math.log(0.5) + math.log(0.2)) / 3)
    w, m = rollout_is_weights(old, roll, mask, "icepop", 0.5, 5.0)
    assert w.flatten().tolist() == approx([2.0, 0.5, 0.0])
    assert float(m["rollout_is_dropped"]) == approx(1 / 3)
    w, _ = rollout_is_weights(old, roll, mask, "seq-mask-tis", 0.5, 5.0)
    assert w.flatten().tolist() == approx([2.0, 0.5, 0.2])
    w, _ = rollout_is_weights(old, roll, mask, "seq-mask-tis", 0.6, 5.0)
    assert w.flatten().tolist() == approx([0.0, 0.0, 0.0])


def test_policy_loss_multiplies_by_the_rollout_is_weights():
    # ρ ≡ 1, A = (1, 1): ℓ^pg = (−1, −1); π_old/π_roll = (2, 8) with TIS band [0.5, 5] → ω = (2, 5)
    # → Σ ω ℓ = −7; without the correction −2
    from repulse.trainers.rl import updates as rl_updates

    logp = torch.log(T([[0.5, 0.8]]))
    exp = SimpleNamespace(
        samples=SimpleNamespace(logprobs=torch.log(T([[0.25, 0.1]]))), action_mask=torch.ones(1, 2),
        old_logprobs=logp.clone(), advantages=torch.ones(1, 2), ref_logprobs=None,
    )  # fmt: skip
    import pytest

    mp = pytest.MonkeyPatch()
    mp.setattr(rl_updates, "action_logprobs", lambda *a, **k: (logp.clone(), torch.zeros(1, 2)))
    try:
        args = dict(eps_low=0.2, eps_high=0.2, dual_clip=None, temperature=1.0, kl_loss_coef=0.0)
        on = rl_updates.PolicyLoss(**args, kl_estimator="k1", entropy_coef=None, rollout_is=("tis", 0.5, 5.0))
        off = rl_updates.PolicyLoss(**args, kl_estimator="k1", entropy_coef=None)
        assert float(on.loss(None, exp).loss_sum) == approx(-7.0)
        assert float(off.loss(None, exp).loss_sum) == approx(-2.0)
    finally:
        mp.undo()
