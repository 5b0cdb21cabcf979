"""KL estimators and KL controllers with hand-derived numbers (spec §3.7, ``repulse.losses.kl``).

Sign convention (Schulman's note, as in OpenRLHF): tokens come from π, every estimator
targets KL(π ‖ π_ref). With δ = log π − log π_ref and r = π_ref/π = e^{−δ}:

    k1 = −log r = δ,   k2 = ½(log r)² = ½δ²,   k3 = (r − 1) − log r = e^{−δ} − 1 + δ.

(k1 is *minus* log r for r = π_ref/π — i.e. log(π/π_ref) — so it is positive where the
policy is more confident than the reference.)
"""

from __future__ import annotations

import math

import pytest
import torch
from pytest import approx

from repulse.losses.kl import KL_ESTIMATORS, AdaptiveKLController, FixedKLController, kl_k1, kl_k2, kl_k3

LN2 = math.log(2.0)  # 0.6931472


def logs(*p: float) -> torch.Tensor:
    return torch.tensor([math.log(x) for x in p])


# Two tokens:
#   token a: π = .5,  π_ref = .25 → δ = ln 2 = .6931472,  r = .5
#   token b: π = .25, π_ref = .5  → δ = −ln 2,            r = 2
LOGP, REF = logs(0.5, 0.25), logs(0.25, 0.5)


def test_k1_is_minus_log_r():
    # a: −ln .5 = ln 2 = .6931472;  b: −ln 2 = −.6931472 (k1 can be negative)
    assert kl_k1(LOGP, REF).tolist() == approx([LN2, -LN2])


def test_k2_is_half_squared_log_ratio():
    # a, b: ½(±ln 2)² = ½·.4804530 = .2402265
    assert kl_k2(LOGP, REF).tolist() == approx([0.5 * LN2**2] * 2)


def test_k3_is_r_minus_one_minus_log_r():
    # a: (.5 − 1) − ln .5 = −.5 + .6931472 = .1931472
    # b: (2 − 1) − ln 2  = 1 − .6931472   = .3068528
    out = kl_k3(LOGP, REF)
    assert out.tolist() == approx([-0.5 + LN2, 1.0 - LN2])
    assert (out >= 0).all()


def test_identical_policies_give_zero_for_every_estimator():
    lp = logs(0.1, 0.7, 0.2)
    for name, fn in KL_ESTIMATORS.items():
        assert torch.equal(fn(lp, lp), torch.zeros(3)), name


def test_k1_and_k3_are_unbiased_for_kl_under_the_policy():
    # π = (.5, .25, .25), π_ref = (.25, .25, .5) over three tokens:
    #   KL(π ‖ π_ref) = .5 ln 2 + .25 ln 1 + .25 ln .5 = .25 ln 2 = .1732868
    #   E_π[k1] = Σ π δ = KL;   E_π[k3] = Σ π_ref − Σ π + KL = KL
    #   E_π[k2] = ½ Σ π δ² = ½(.5 + .25)(ln 2)² = .375·.4804530 = .1801699 (biased upwards)
    p, q = torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.25, 0.25, 0.5])
    kl = 0.25 * LN2
    assert float((p * kl_k1(p.log(), q.log())).sum()) == approx(kl)
    assert float((p * kl_k3(p.log(), q.log())).sum()) == approx(kl)
    assert float((p * kl_k2(p.log(), q.log())).sum()) == approx(0.375 * LN2**2)


def test_every_estimator_is_clamped_to_plus_minus_ten():
    # δ = +15: k1 = 15 → 10;  k2 = 112.5 → 10;  k3 = e^{−15} − 1 + 15 ≈ 14 → 10
    # δ = −15: k1 = −15 → −10; k2 → 10;          k3 = e^{15} − 16 ≈ 3.3e6 → 10
    # δ = −60 (beyond the ±20 pre-clamp of the exponent): k3 = 10, finite, not inf
    lp, ref = torch.tensor([15.0, -15.0, -60.0]), torch.zeros(3)
    assert kl_k1(lp, ref).tolist() == [10.0, -10.0, -10.0]
    assert kl_k2(lp, ref).tolist() == [10.0, 10.0, 10.0]
    assert kl_k3(lp, ref).tolist() == [10.0, 10.0, 10.0]


def test_registry_names():
    assert KL_ESTIMATORS == {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


# ----------------------------------------------------------------------------- controllers


def test_fixed_controller_never_moves():
    ctl = FixedKLController(0.01)
    ctl.update(current_kl=123.0, n_steps=1000)
    assert ctl.value == 0.01


def test_adaptive_controller_update_formula():
    # β ← β·(1 + clip(KL/target − 1, −.2, .2)·n/horizon), target 6, horizon 10000
    ctl = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10000)
    # KL = 9: err = 9/6 − 1 = .5 → clipped to .2; mult = 1 + .2·1000/10000 = 1.02 → β = .102
    ctl.update(current_kl=9.0, n_steps=1000)
    assert ctl.value == approx(0.102)
    # KL = 5.4: err = .9 − 1 = −.1 (inside the clip); mult = 1 − .1·.1 = .99 → β = .102·.99 = .10098
    ctl.update(current_kl=5.4, n_steps=1000)
    assert ctl.value == approx(0.10098)
    # KL = 0: err = −1 → −.2; n = 500: mult = 1 − .2·.05 = .99 → β = .10098·.99 = .0999702
    ctl.update(current_kl=0.0, n_steps=500)
    assert ctl.value == approx(0.0999702)
    # KL on target: err = 0 → β unchanged
    ctl.update(current_kl=6.0, n_steps=1000)
    assert ctl.value == approx(0.0999702)


def test_controller_state_round_trip():
    ctl = AdaptiveKLController(0.1, 6.0, 10000)
    ctl.update(9.0, 1000)
    other = AdaptiveKLController(0.5, 6.0, 10000)
    other.load_state_dict(ctl.state_dict())
    assert other.value == approx(0.102)


@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_kl_gradients_are_finite_at_zero(name):
    lp = torch.zeros(2, requires_grad=True)
    KL_ESTIMATORS[name](lp, torch.zeros(2)).sum().backward()
    # d/dδ at δ = 0: k1 → 1, k2 → δ = 0, k3 → 1 − e^{−δ} = 0
    assert lp.grad.tolist() == approx([1.0, 1.0] if name == "k1" else [0.0, 0.0])
