"""Advantage estimators with hand-derived numbers (spec §3.6–3.9, ``repulse.rl.advantages``).

Every expected value below is worked out by hand in the comments; the code is only
asked to reproduce it. Conventions: groups of n consecutive samples per prompt, action
mask m [B, T] (1 = action token), scalar reward on the last action token.
"""

from __future__ import annotations

import math

import pytest
import torch
from pytest import approx

from repulse.errors import UserError
from repulse.rl.advantages import (
    ESTIMATORS,
    GROUP,
    compute_advantages,
    discounted_returns,
    dynamic_filter_groups,
    gae,
    shape_group_rewards,
    token_rewards,
    whiten,
)

T = torch.tensor
NAN = float("nan")

# Two prompts × three samples. Group 1 has signal, group 2 is a zero-variance group.
#   group 1: r = (1, 0, 5), mean = 2, deviations (−1, −2, 3)
#            unbiased var = (1 + 4 + 9)/(3 − 1) = 7, std = √7 = 2.6457513
#   group 2: r = (3, 3, 3), mean = 3, deviations 0, std 0
REWARDS = T([1.0, 0.0, 5.0, 3.0, 3.0, 3.0])


def close(x: torch.Tensor, expected, abs: float = 1e-5) -> None:
    assert torch.isfinite(x).all(), x
    assert x.flatten().tolist() == approx(torch.as_tensor(expected).flatten().tolist(), abs=abs)


# ----------------------------------------------------------------------------- group baselines


def test_rloo_leave_one_out_baseline():
    # r_i − (Σ_j r_j − r_i)/(n − 1), Σ = 6, n − 1 = 2:
    #   1 − (6 − 1)/2 = −1.5;  0 − (6 − 0)/2 = −3;  5 − (6 − 5)/2 = 4.5
    # (= n/(n−1)·(r_i − mean) = 1.5·(−1, −2, 3)); group 2: 3 − (9 − 3)/2 = 0.
    close(shape_group_rewards("rloo", REWARDS, 3), [-1.5, -3.0, 4.5, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("name", ["reinforce_baseline", "dr_grpo"])
def test_mean_baseline(name):
    # r_i − mean_j r_j: (1, 0, 5) − 2 = (−1, −2, 3); (3, 3, 3) − 3 = 0.
    close(shape_group_rewards(name, REWARDS, 3), [-1.0, -2.0, 3.0, 0.0, 0.0, 0.0])


def test_group_norm_divides_by_unbiased_std():
    # (r_i − mean)/(std + 1e-9), std = √7:  −1/√7 = −0.3779645, −2/√7 = −0.7559289, 3/√7 = 1.1338934
    # The zero-variance group gives 0/(0 + 1e-9) = 0, not nan.
    s7 = math.sqrt(7.0)
    close(shape_group_rewards("group_norm", REWARDS, 3), [-1 / s7, -2 / s7, 3 / s7, 0.0, 0.0, 0.0])
    # n = 2: r = (1, 0): mean 0.5, unbiased std = √((0.25 + 0.25)/1) = √0.5, ±0.5/√0.5 = ±0.7071068
    close(shape_group_rewards("group_norm", T([1.0, 0.0]), 2), [0.5**0.5, -(0.5**0.5)])


@pytest.mark.parametrize("name", ["gae", "reinforce"])
def test_non_group_estimators_leave_rewards_alone(name):
    close(shape_group_rewards(name, REWARDS, 3), REWARDS)
    close(shape_group_rewards(name, REWARDS, 1), REWARDS)  # n = 1 is fine without groups


@pytest.mark.parametrize("name", sorted(GROUP))
@pytest.mark.parametrize("value", [3.0, -4.995, 0.1, 1e6 + 0.3])
def test_zero_variance_groups_are_exactly_zero(name, value):
    # All rewards equal ⇒ the baseline equals every reward ⇒ advantage 0 exactly.
    # Regression: in float32 mean(6 × −4.995) is one ulp off −4.995, and group_norm divided
    # that 5e-7 error by a ~5e-7 std, giving −0.911 to every sample (now float64 inside).
    r = torch.full((12,), value)
    out = shape_group_rewards(name, r, 6)
    assert out.dtype == r.dtype
    assert torch.equal(out, torch.zeros_like(r)), out


@pytest.mark.parametrize("name", sorted(GROUP))
def test_group_estimators_need_two_samples_per_prompt(name):
    with pytest.raises(UserError, match="--rollout.n_samples_per_prompt"):
        shape_group_rewards(name, REWARDS, 1)


def test_unknown_estimator_is_a_user_error():
    with pytest.raises(UserError, match="--algo.advantage.estimator"):
        shape_group_rewards("grpo", REWARDS, 3)
    with pytest.raises(UserError, match="--algo.advantage.estimator"):
        compute_advantages("ppo", token_rewards=torch.zeros(1, 2), mask=torch.ones(1, 2))


def test_rewards_that_do_not_fill_whole_groups_are_rejected():
    with pytest.raises(ValueError, match="groups of 4"):
        shape_group_rewards("rloo", REWARDS, 4)


# ----------------------------------------------------------------------------- token rewards


def test_token_rewards_put_the_reward_on_the_last_action_token_and_subtract_kl():
    # r_t = −(β k)_t·m_t + 1[t = last action]·r
    # row 0: m = 1 1 1 0, βk = .1 .2 .3 9 → (−.1, −.2, −.3 + 2, 0) = (−.1, −.2, 1.7, 0)
    # row 1: m = 1 0 0 0, βk = .5 9 9 9  → (−.5 − 1, 0, 0, 0)     = (−1.5, 0, 0, 0)
    # row 2: m = 0 1 1 0 (leading hole), βk = 0 → reward on t = 2, the last 1 of the mask
    # row 3: m = 1 1 0 1 (hole, e.g. an environment turn) → reward on t = 3
    # row 4: empty mask → no reward anywhere
    mask = T([[1, 1, 1, 0], [1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 0, 1], [0, 0, 0, 0]]).float()
    kl = T([[0.1, 0.2, 0.3, 9.0], [0.5, 9.0, 9.0, 9.0], [0.0] * 4, [0.0] * 4, [9.0] * 4])
    out = token_rewards(T([2.0, -1.0, 4.0, 7.0, 5.0]), kl, mask)
    close(
        out,
        [
            [-0.1, -0.2, 1.7, 0.0],
            [-1.5, 0.0, 0.0, 0.0],
            [0.0, 0.0, 4.0, 0.0],  # before the fix: 4.0 landed on t = 1 (mask.sum() − 1)
            [0.0, 0.0, 0.0, 7.0],  # before the fix: 7.0 landed on t = 2, an off-mask hole
            [0.0, 0.0, 0.0, 0.0],
        ],
    )
    # Without a KL term only the final reward is placed; nan KL at padding never leaks.
    close(token_rewards(T([2.0]), None, mask[:1]), [[0.0, 0.0, 2.0, 0.0]])
    close(token_rewards(T([2.0]), T([[0.0, 0.0, 0.0, NAN]]), mask[:1]), [[0.0, 0.0, 2.0, 0.0]])


# ----------------------------------------------------------------------------- returns and GAE


def test_discounted_returns_by_hand():
    # γ = 0.5, row 0: r = (1, 2, 4), G_2 = 4, G_1 = 2 + .5·4 = 4, G_0 = 1 + .5·4 = 3
    # row 1: r = (1, 8, 8) with m = (1, 0, 0): padding ignored, G_0 = 1, rest 0
    r = T([[1.0, 2.0, 4.0], [1.0, 8.0, NAN]])
    m = T([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    close(discounted_returns(r, m, 0.5), [[3.0, 4.0, 4.0], [1.0, 0.0, 0.0]])
    # γ = 1: plain suffix sums 7, 6, 4
    close(discounted_returns(r[:1], m[:1], 1.0), [[7.0, 6.0, 4.0]])


# GAE, γ = λ = 0.5 (γλ = 0.25).
#   row 0: m = 1 1 1, r = (0, 0, 1), V = (.5, .25, .5)
#     t=2: δ = 1 + .5·0 − .5 = .5                A = .5
#     t=1: δ = 0 + .5·.5 − .25 = 0               A = 0 + .25·.5 = .125
#     t=0: δ = 0 + .5·.25 − .5 = −.375           A = −.375 + .25·.125 = −.34375
#     R = A + V = (.15625, .375, 1)
#   row 1: m = 1 1 0, r = (0, −1, 7 pad), V = (.5, −.5, 3 pad) → padding zeroed first
#     t=2: δ = 0                                 A = 0
#     t=1: δ = −1 + .5·0 − (−.5) = −.5           A = −.5
#     t=0: δ = 0 + .5·(−.5) − .5 = −.75          A = −.75 + .25·(−.5) = −.875
#     R = (−.375, −1, 0)
GAE_R = T([[0.0, 0.0, 1.0], [0.0, -1.0, 7.0]])
GAE_V = T([[0.5, 0.25, 0.5], [0.5, -0.5, 3.0]])
GAE_M = T([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
GAE_A = [[-0.34375, 0.125, 0.5], [-0.875, -0.5, 0.0]]
GAE_RET = [[0.15625, 0.375, 1.0], [-0.375, -1.0, 0.0]]


def test_gae_by_hand():
    adv, ret = gae(GAE_R, GAE_V, GAE_M, gamma=0.5, lambd=0.5)
    close(adv, GAE_A)
    close(ret, GAE_RET)


def test_gae_with_lambda_one_is_monte_carlo_return_minus_value():
    # γ = λ = 1: A_t = Σ_{k≥t} r_k − V_t. Row 0: G = (1, 1, 1) → A = (.5, .75, .5); row 1: G = (−1, −1, 0)
    adv, ret = gae(GAE_R, GAE_V, GAE_M, gamma=1.0, lambd=1.0)
    close(adv, [[0.5, 0.75, 0.5], [-1.5, -0.5, 0.0]])
    close(ret, [[1.0, 1.0, 1.0], [-1.0, -1.0, 0.0]])


def test_compute_advantages_gae_whitens_over_action_tokens_only():
    # Action-token advantages: −.34375, .125, .5, −.875, −.5 (n = 5; the pad is excluded)
    #   μ = −1.09375/5 = −.21875
    #   E[A²] = (.1181640625 + .015625 + .25 + .765625 + .25)/5 = .2798828125
    #   σ² = .2798828125 − .21875² = .23203125, σ = .4816962
    #   Â = (A + .21875)/σ = −.2594996, .7136240, 1.4921230, −1.3623732, −.5838742
    adv, ret = compute_advantages("gae", token_rewards=GAE_R, mask=GAE_M, values=GAE_V, gamma=0.5, lambd=0.5)
    close(adv, [[-0.2594996, 0.7136240, 1.4921230], [-1.3623732, -0.5838742, 0.0]])
    close(ret, GAE_RET)  # returns are not whitened
    # no_std_norm: only centred, A + .21875
    adv, _ = compute_advantages(
        "gae", token_rewards=GAE_R, mask=GAE_M, values=GAE_V, gamma=0.5, lambd=0.5, no_std_norm=True
    )
    close(adv, [[-0.125, 0.34375, 0.71875], [-0.65625, -0.28125, 0.0]])
    with pytest.raises(UserError, match="critic"):
        compute_advantages("gae", token_rewards=GAE_R, mask=GAE_M)


def test_reinforce_plus_plus_discounted_returns_then_global_whitening():
    # REINFORCE++: r = (1, −1), β·k = (.1, .2, .4) and (.2, pad, pad), γ = 0.5
    #   token rewards: row 0 = (−.1, −.2, −.4 + 1) = (−.1, −.2, .6); row 1 = (−.2 − 1, 0, 0) = (−1.2, 0, 0)
    #   returns: row 0 G_2 = .6, G_1 = −.2 + .5·.6 = .1, G_0 = −.1 + .5·.1 = −.05; row 1 G_0 = −1.2
    #   whitening over the 4 action tokens: μ = (−.05 + .1 + .6 − 1.2)/4 = −.1375
    #   E[G²] = (.0025 + .01 + .36 + 1.44)/4 = .453125, σ² = .453125 − .1375² = .43421875, σ = .6589528
    #   Â = (−.05 + .1375)/σ = .1327865, (.1 + .1375)/σ = .3604204, (.6 + .1375)/σ = 1.1192001,
    #       (−1.2 + .1375)/σ = −1.6124069
    mask = T([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    kl = T([[0.1, 0.2, 0.4], [0.2, 5.0, 5.0]])
    tr = token_rewards(T([1.0, -1.0]), kl, mask)
    close(tr, [[-0.1, -0.2, 0.6], [-1.2, 0.0, 0.0]])
    adv, ret = compute_advantages("reinforce", token_rewards=tr, mask=mask, gamma=0.5)
    close(ret, [[-0.05, 0.1, 0.6], [-1.2, 0.0, 0.0]])
    close(adv, [[0.1327865, 0.3604204, 1.1192001], [-1.6124069, 0.0, 0.0]])
    assert float((adv * mask).sum()) == approx(0.0, abs=1e-6)


# reinforce_baseline (REINFORCE++-baseline), 2 prompts × 2 samples, final reward only.
#   r = (1, 0 | 3, 1) → group means .5 and 2 → shaped (.5, −.5 | 1, −1)
#   lengths (2, 1, 1, 2), γ = 1 ⇒ every action token carries its sample's shaped reward:
#     (.5, .5), (−.5), (1), (−1, −1)   — 6 action tokens
RB_MASK = T([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
RB_REWARDS = T([1.0, 0.0, 3.0, 1.0])


def test_reinforce_baseline_is_group_mean_then_batch_whitening():
    # μ = (.5 + .5 − .5 + 1 − 1 − 1)/6 = −1/12 = −.0833333
    # E[A²] = (.25·3 + 1·3)/6 = .625, σ² = .625 − 1/144 = .6180556, σ = .7861651
    # Â(.5) = .5833333/σ = .7419985, Â(−.5) = −.4166667/σ = −.5299989,
    # Â(1) = 1.0833333/σ = 1.3779972, Â(−1) = −.9166667/σ = −1.1659977
    shaped = shape_group_rewards("reinforce_baseline", RB_REWARDS, 2)
    close(shaped, [0.5, -0.5, 1.0, -1.0])
    tr = token_rewards(shaped, None, RB_MASK)
    adv, ret = compute_advantages("reinforce_baseline", token_rewards=tr, mask=RB_MASK, gamma=0.5)
    a, b, c, d = 0.7419985, -0.5299989, 1.3779972, -1.1659977
    close(adv, [[a, a, 0.0], [b, 0.0, 0.0], [c, 0.0, 0.0], [d, d, 0.0]])
    # γ is forced to 1 for group estimators (gamma=0.5 above is ignored): returns = shaped reward
    close(ret, [[0.5, 0.5, 0.0], [-0.5, 0.0, 0.0], [1.0, 0.0, 0.0], [-1.0, -1.0, 0.0]])
    # --algo.advantage.no_std_norm: only −μ, A + 1/12
    adv, _ = compute_advantages("reinforce_baseline", token_rewards=tr, mask=RB_MASK, no_std_norm=True)
    e, f, g, h = 0.5 + 1 / 12, -0.5 + 1 / 12, 1 + 1 / 12, -1 + 1 / 12
    close(adv, [[e, e, 0.0], [f, 0.0, 0.0], [g, 0.0, 0.0], [h, h, 0.0]])


@pytest.mark.parametrize(
    ("name", "shaped"),
    [
        ("rloo", [-1.5, -3.0, 4.5, 0.0, 0.0, 0.0]),
        ("group_norm", [-1 / 7**0.5, -2 / 7**0.5, 3 / 7**0.5, 0.0, 0.0, 0.0]),
        ("dr_grpo", [-1.0, -2.0, 3.0, 0.0, 0.0, 0.0]),
    ],
)
def test_unwhitened_group_estimators_broadcast_the_shaped_reward(name, shaped):
    # rloo / group_norm / dr_grpo: G_t with γ = 1, no whitening ⇒ every action token of
    # sample i gets exactly the shaped scalar of sample i (numbers from the tests above);
    # padding gets 0; no_std_norm has nothing to act on.
    mask = T([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]]).float()
    tr = token_rewards(shape_group_rewards(name, REWARDS, 3), None, mask)
    for flag in (False, True):
        adv, ret = compute_advantages(name, token_rewards=tr, mask=mask, gamma=0.5, no_std_norm=flag)
        close(adv, T(shaped)[:, None] * mask)
        close(ret, T(shaped)[:, None] * mask)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_padding_gets_zero_advantage_and_does_not_move_the_statistics(name):
    # Same batch twice: once with zeros, once with garbage (incl. nan) at the padded
    # positions of rewards and values. Results must be identical and exactly 0 there.
    mask = RB_MASK
    tr = token_rewards(shape_group_rewards(name, RB_REWARDS, 2), T([[0.1, 0.2, 0.3]] * 4), mask)
    values = T([[0.3, -0.2, 0.0], [0.1, 0.0, 0.0], [-0.4, 0.0, 0.0], [0.2, 0.5, 0.0]])
    junk = torch.where(mask == 0, T(NAN), torch.zeros(()))
    junk[3, 2] = 1e6  # and a huge finite value
    clean = compute_advantages(name, token_rewards=tr, mask=mask, values=values, gamma=0.9, lambd=0.8)
    dirty = compute_advantages(
        name, token_rewards=tr + junk, mask=mask, values=values + junk, gamma=0.9, lambd=0.8
    )
    for c, d in zip(clean, dirty):
        assert torch.equal(c, d)
        assert torch.equal(c[mask == 0], torch.zeros(int((mask == 0).sum())))


# ----------------------------------------------------------------------------- whitening


def test_whiten_by_hand_and_with_a_cross_process_reduce():
    # x = (1, 2, 3 | 9 pad), m = (1, 1, 1 | 0): μ = 2, σ² = (1 + 0 + 1)/3 = 2/3
    # → (−1, 0, 1)/√(2/3) = (−1.2247449, 0, 1.2247449), pad → 0
    x, m = T([1.0, 2.0, 3.0, 9.0]), T([1.0, 1.0, 1.0, 0.0])
    close(whiten(x, m), [-1.2247449, 0.0, 1.2247449, 0.0])
    close(whiten(x, m, std_norm=False), [-1.0, 0.0, 1.0, 0.0])
    # Two "processes" each holding half a batch: a reduce that adds the other half's
    # (Σx, Σm, Σx²) gives the statistics of the whole batch.
    other = torch.stack([T(3.0), T(1.0), T(9.0)]).double()  # the other rank holds one token x = 3
    # whole batch (1, 2, 3, 3): μ = 2.25, σ² = (1 + 4 + 9 + 9)/4 − 2.25² = 5.75 − 5.0625 = .6875
    s = 0.6875**0.5
    close(whiten(x, m, reduce=lambda t: t + other), [-1.25 / s, -0.25 / s, 0.75 / s, 0.0])


@pytest.mark.parametrize("value", [0.0, 3.0, -4.995, 0.1])
def test_whiten_constant_batch_gives_zero_not_nan(value):
    # σ² = 0 → rsqrt(max(0, 1e-8)) = 1e4, and x − μ = 0 exactly (float64 sums; in float32
    # a constant −4.995 batch used to come out at ±1e-2).
    x = torch.full((2, 37), value)
    out = whiten(x, torch.ones(2, 37))
    assert torch.equal(out, torch.zeros_like(x))


# ----------------------------------------------------------------------------- dynamic filtering


def test_dynamic_filtering_keeps_groups_with_mean_strictly_inside_the_range():
    # Groups of 3 with 0/1 scores: means 1 (all right), 0 (all wrong), 1/3, 2/3.
    r = T([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    keep = dynamic_filter_groups(r, 3, 0.0, 1.0)  # default range (0, 1), strict
    assert keep.tolist() == [False] * 6 + [True] * 6
    keep = dynamic_filter_groups(r, 3, 0.5, 1.0)  # 1/3 ∉ (.5, 1), 2/3 ∈
    assert keep.tolist() == [False] * 9 + [True] * 3
    keep = dynamic_filter_groups(r, 3, -0.1, 1.1)  # everything inside
    assert keep.all()
    # Real-valued rewards (exact in binary): group means (.25 + .5)/2 = .375 and
    # (.5 + .75)/2 = .625; range (.375, .8) drops the first (.375 is not > .375), keeps the second.
    r = T([0.25, 0.5, 0.5, 0.75])
    assert dynamic_filter_groups(r, 2, 0.375, 0.8).tolist() == [False, False, True, True]
