"""RePULSe losses against numbers derived by hand (spec §1.3–1.5)."""

from __future__ import annotations

import math

import pytest
import torch

from repulse.losses.repulse import (
    REWARD_TRANSFORMS,
    ctl_loss,
    ctl_pi_weights,
    ctl_sigma_weights,
    minus_alpha_exp_beta_r,
    minus_alpha_ind,
    neg_training_loss,
    neg_training_weights,
    p_proposal_weights,
    paper_alpha_to_reference,
    rloo_reinforce_loss,
)


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def test_sigma_weights_use_the_papers_beta_sign():
    # one group of N=2: log w_i = Σlog p − β r − Σlog q_old
    # i=0: −1.0 − 2·1.0 − (−2.0) = −1.0 ; i=1: −3.0 − 2·(−1.0) − (−1.0) = 0.0
    w = ctl_sigma_weights(
        torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0]), torch.tensor([1.0, -1.0]), 2.0, 2
    )
    expected = softmax([-1.0, 0.0])  # [0.268941, 0.731059]: the low-reward sample gets more weight
    assert w.tolist() == pytest.approx(expected, abs=1e-6)
    assert w[1] > w[0]


def test_sigma_weights_normalise_per_group():
    w = ctl_sigma_weights(torch.zeros(4), torch.zeros(4), torch.tensor([0.0, 1.0, 5.0, 5.0]), 1.0, 2)
    # group 1: softmax([0, −1]) = [0.731059, 0.268941]; group 2: equal rewards -> [0.5, 0.5]
    assert w.tolist() == pytest.approx([0.731059, 0.268941, 0.5, 0.5], abs=1e-6)


def test_pi_weights_use_strictly_earlier_tokens_and_the_mask():
    # N=2, T=3. d = (log p − log q_old)·m
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -9.0]])
    logq = torch.tensor([[-2.0, -1.0, -0.5], [-1.0, -3.0, -1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # d row0 = [1, −1, 0]; row1 = [0, 2, 0 (masked: −8 ignored)]
    # prefix Σ_{k<t}: row0 = [0, 1, 0]; row1 = [0, 0, 2]
    w = ctl_pi_weights(logp, logq, mask, 2)
    t0 = softmax([0.0, 0.0])
    t1 = softmax([1.0, 0.0])  # [0.731059, 0.268941]
    t2 = softmax([0.0, 2.0])  # [0.119203, 0.880797]
    assert w[:, 0].tolist() == pytest.approx(t0, abs=1e-6)
    assert w[:, 1].tolist() == pytest.approx(t1, abs=1e-6)
    assert w[:, 2].tolist() == pytest.approx(t2, abs=1e-6)


def test_ctl_loss_value_and_gradient_only_through_q():
    # N=2, variable lengths; rewards drive w^σ, prefixes drive w^π.
    logp = torch.tensor([[-1.0, -2.0], [-1.5, -0.7]])
    logq_old = torch.tensor([[-1.0, -1.0], [-1.0, -5.0]])
    logq = logq_old.clone().requires_grad_(True)
    mask = torch.tensor([[1, 1], [1, 0]])
    rewards = torch.tensor([0.0, -1.0])
    beta = 1.0
    # Σ masked: log p = [−3.0, −1.5], log q_old = [−2.0, −1.0]
    # log w̃^σ = [−3 − 0 + 2, −1.5 + 1 + 1] = [−1.0, 0.5] -> w^σ = softmax = [0.182426, 0.817574]
    ws = softmax([-1.0, 0.5])
    # d = [[0, −1], [−0.5, 0 (masked)]]; prefix = [[0, 0], [0, −0.5]]
    # w^π at t0 = [0.5, 0.5]; at t1 = softmax([0, −0.5]) = [0.622459, 0.377541]
    wp1 = softmax([0.0, -0.5])
    # log ψ = log q − log p = [[0, 1], [0.5, −4.3]]
    # seq0 = ((0.5 − ws0)·0 + (wp1[0] − ws0)·1)/2 ; seq1 = ((0.5 − ws1)·0.5)/1   (t1 masked)
    seq0 = ((0.5 - ws[0]) * 0.0 + (wp1[0] - ws[0]) * 1.0) / 2
    seq1 = (0.5 - ws[1]) * 0.5
    loss, _ = ctl_loss(logq, logp, logq_old, rewards, mask, beta, 2)
    assert loss.item() == pytest.approx((seq0 + seq1) / 2, abs=1e-6)
    loss.backward()
    # d loss / d log q[0,1] = (wp1[0] − ws0)/2/2 ; masked token gets no gradient
    assert logq.grad[0, 1].item() == pytest.approx((wp1[0] - ws[0]) / 4, abs=1e-6)
    assert logq.grad[1, 1].item() == 0.0
    logp_req = logp.clone().requires_grad_(True)
    loss2, _ = ctl_loss(logq_old.clone().requires_grad_(True), logp_req, logq_old, rewards, mask, beta, 2)
    loss2.backward()
    assert logp_req.grad is None  # p is detached inside the CTL loss


def test_neg_training_weights_are_masked_unlike_the_reference_bug():
    logp_tok = torch.tensor([[-1.0, -2.0], [-1.0, -7.0]])  # row 1's second token is padding
    logq_tok = torch.tensor([[-1.0, -1.0], [-2.0, -0.5]])
    mask = torch.tensor([[1, 1], [1, 0]])
    r = torch.tensor([0.0, 0.0])
    # masked sums: p = [−3, −1], q = [−2, −2] -> log w = [−1, 1] -> softmax
    w = neg_training_weights(logp_tok, logq_tok, r, 1.0, 2, mask)
    assert w.tolist() == pytest.approx(softmax([-1.0, 1.0]), abs=1e-6)
    # the reference summed unmasked: p = [−3, −8], q = [−2, −2.5] -> [−1, −5.5]: a different answer
    buggy = softmax([-1.0, -5.5])
    assert w[1].item() != pytest.approx(buggy[1], abs=1e-3)


def test_neg_training_loss_and_the_alpha_normalisation():
    logp = torch.tensor([[-1.0, -3.0], [-2.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]])
    w = torch.tensor([0.25, 0.75])
    # ℓ = [−2.0, −2.0]; L_u = mean_i w_i ℓ_i = (0.25·−2 + 0.75·−2)/2 = −1.0
    loss = neg_training_loss(logp, mask, w)
    assert loss.item() == pytest.approx(-1.0)
    loss.backward()
    # d/dlogp[0,0] = w0/|s0|/N = 0.25/2/2 = 0.0625 (minimising pushes log p down)
    assert logp.grad[0, 0].item() == pytest.approx(0.0625)
    assert logp.grad[1, 1].item() == 0.0
    # weights sum to 1 per group, so mean_i carries 1/N: reference α = N · paper α
    assert paper_alpha_to_reference(0.02, 5) == pytest.approx(0.1)


def test_rloo_reinforce_loss_hand_values():
    logp = torch.tensor([[-1.0, -1.0], [-2.0, 0.0], [-0.5, -0.5]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0], [1, 1]])
    returns = torch.tensor([1.0, 4.0, 7.0])
    # b_i = (Σ − R_i)/2 = [5.5, 4.0, 2.5]; A = [−4.5, 0, 4.5]; ℓ = [−1, −2, −0.5]
    # L = mean(A·(−ℓ)) = (−4.5·1 + 0 + 4.5·0.5)/3 = −0.75
    loss, _ = rloo_reinforce_loss(logp, mask, returns, 3)
    assert loss.item() == pytest.approx(-0.75)
    with pytest.raises(ValueError):
        rloo_reinforce_loss(logp, mask, returns, 1)


def test_p_proposal_weights():
    w = p_proposal_weights(torch.tensor([1.0, 0.0, 2.0, 2.0]), 2.0, 2)
    assert w.tolist() == pytest.approx(softmax([-2.0, 0.0]) + [0.5, 0.5], abs=1e-6)


def test_reward_transforms():
    r = torch.tensor([-2.0, 0.0, 3.0])
    # r − 2·exp(−0.5 r): −2 − 2e^{1} = −7.436564 ; 0 − 2 = −2 ; 3 − 2e^{−1.5} = 2.553740
    assert minus_alpha_exp_beta_r(r, 2.0, 0.5).tolist() == pytest.approx(
        [-7.436564, -2.0, 2.553740], abs=1e-5
    )
    # r − 10·1[r < 0]
    assert minus_alpha_ind(r, 10.0, 0.0).tolist() == [-12.0, 0.0, 3.0]
    assert set(REWARD_TRANSFORMS) == {"minus_alpha_exp_beta_r", "minus_alpha_ind"}
