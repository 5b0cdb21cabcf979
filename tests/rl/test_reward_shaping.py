"""Reward shaping before the advantage, hand-derived (spec §3.6, ``repulse.rl.reward_shaping``):
DAPO overlong penalty, reward clip range, running mean/std normalisation."""

from __future__ import annotations

import math

import torch
from pytest import approx

from repulse.rl.reward_shaping import RunningMeanStd, clip_rewards, overlong_penalty

T = torch.tensor


def test_overlong_penalty_linear_ramp():
    # L_max = 10, B = 4 ⇒ the ramp starts at L_max − B = 6; e = len − 6
    #   len:      5    6    7     8    10   12
    #   e:       −1    0    1     2     4    6
    #   penalty:  0    0  −1/4  −2/4  −4/4  −min(6, 4)/4 = −1      (f = 1)
    lengths = T([5, 6, 7, 8, 10, 12])
    assert overlong_penalty(lengths, 10, 4, 1.0).tolist() == approx([0, 0, -0.25, -0.5, -1, -1])
    # f = .5 halves every penalty; the penalty never exceeds f in size
    assert overlong_penalty(lengths, 10, 4, 0.5).tolist() == approx([0, 0, -0.125, -0.25, -0.5, -0.5])
    # a float buffer (the flag is a float): B = 2.5, start at 7.5: len 8 → −.5/2.5 = −.2; len 9 → −.6
    assert overlong_penalty(T([7, 8, 9]), 10, 2.5, 1.0).tolist() == approx([0.0, -0.2, -0.6])


def test_clip_range():
    # --reward.clip_range (−10, 10)
    r = T([-12.0, -3.0, 0.0, 5.0, 11.0])
    assert clip_rewards(r, -10.0, 10.0).tolist() == [-10.0, -3.0, 0.0, 5.0, 10.0]
    assert clip_rewards(r, -1.0, 2.0).tolist() == [-1.0, -1.0, 0.0, 2.0, 2.0]


def test_running_mean_std_merges_batches_exactly():
    rms = RunningMeanStd()
    # batch 1 = (1, 2, 3): μ = 2, σ² = (1 + 0 + 1)/3 = 2/3, count 3
    rms.update(T([1.0, 2.0, 3.0]))
    assert (rms.mean, rms.var, rms.count) == approx((2.0, 2 / 3, 3.0))
    # batch 2 = (5, 7): μ_b = 6, σ²_b = 1, n = 2. N = 5, δ = 6 − 2 = 4
    #   μ  = 2 + 4·2/5 = 3.6
    #   σ² = (2/3·3 + 1·2 + 16·3·2/5)/5 = (2 + 2 + 19.2)/5 = 4.64
    # check against all five values (1, 2, 3, 5, 7): μ = 18/5 = 3.6,
    #   Σ(x − μ)² = 6.76 + 2.56 + .36 + 1.96 + 11.56 = 23.2 → σ² = 4.64 ✓
    rms.update(T([5.0, 7.0]))
    assert (rms.mean, rms.var, rms.count) == approx((3.6, 4.64, 5.0))
    # normalize: (x − μ)/√(σ² + 1e-8): 5 → 1.4/2.1540659 = .6499337; 3.6 → 0
    out = rms.normalize(T([5.0, 3.6]))
    assert out.dtype == torch.float32
    assert out.tolist() == approx([1.4 / math.sqrt(4.64), 0.0], abs=1e-6)
    # an empty batch changes nothing
    rms.update(torch.zeros(0))
    assert (rms.mean, rms.var, rms.count) == approx((3.6, 4.64, 5.0))


def test_running_mean_std_first_batch_and_state_round_trip():
    rms = RunningMeanStd()
    # before any update: μ = 0, σ² = 1 → identity (up to the 1e-8 eps)
    assert rms.normalize(T([2.0])).tolist() == approx([2.0])
    # one constant batch: σ² = 0 → (x − μ)/√1e-8 is 0 at x = μ, finite elsewhere
    rms.update(T([4.0, 4.0]))
    assert (rms.mean, rms.var) == (4.0, 0.0)
    assert rms.normalize(T([4.0])).tolist() == [0.0]
    other = RunningMeanStd()
    other.load_state_dict(rms.state_dict())
    assert other.state_dict() == {"mean": 4.0, "var": 0.0, "count": 2.0}
