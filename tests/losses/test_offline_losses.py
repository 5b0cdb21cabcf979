"""Offline-trainer losses (SFT, RM, DPO family, KTO, PRM, KD) against numbers derived by hand."""

from __future__ import annotations

import math

import pytest
import torch

from repulse.losses.aggregation import masked_mean, masked_sum, token_sum_and_count
from repulse.losses.distill import kd_loss
from repulse.losses.preference import (
    dpo_loss,
    kto_kl_estimate,
    kto_loss,
    nll_term,
    pairwise_logexp_loss,
    pairwise_sigmoid_loss,
    rm_metrics,
)
from repulse.losses.prm import IGNORE_INDEX, gather_prm_steps, prm_loss, prm_valid
from repulse.losses.sft import sft_loss

T = torch.tensor


def approx(x, abs=1e-6):
    return pytest.approx(x, abs=abs)


# ----------------------------------------------------------------------------- aggregation


def test_masked_mean_and_sum_with_a_mask():
    x = T([[1.0, 2.0, 3.0], [4.0, 5.0, float("nan")]])
    m = T([[1, 1, 0], [0, 1, 0]])
    # kept: 1, 2, 5 → sum 8, count 3, mean 8/3 = 2.666667; the nan sits under a 0 and must not leak
    assert masked_sum(x, m).item() == approx(8.0)
    assert masked_mean(x, m).item() == approx(8.0 / 3.0)
    # per row: (1+2)/2 = 1.5 ; 5/1 = 5
    assert masked_mean(x, m, dim=1).tolist() == approx([1.5, 5.0])
    # bool mask and an empty row (mean 0, not nan)
    mb = T([[True, False, True], [False, False, False]])
    assert masked_mean(x, mb, dim=1).tolist() == approx([2.0, 0.0])
    # weighted mask: (0.5·1 + 2·3) / (0.5 + 2) = 6.5 / 2.5 = 2.6
    assert masked_mean(x[0], T([0.5, 0.0, 2.0])).item() == approx(2.6)
    # eps floors a tiny positive weight total: 1e-9·1 / max(1e-9, 1e-8) = 0.1 ; eps=0 gives the exact 1
    assert masked_mean(x[0], T([1e-9, 0.0, 0.0]), eps=1e-8).item() == approx(0.1)
    assert masked_mean(x[0], T([1e-9, 0.0, 0.0]), eps=0.0).item() == approx(1.0)
    assert masked_mean(x, torch.zeros(2, 3), eps=0.0).item() == 0.0  # empty mask → 0 even without eps


def test_token_sum_and_count():
    s, n = token_sum_and_count(T([[1.0, 2.0], [3.0, 4.0]]), T([[1, 0], [1, 1]]))
    assert (s.item(), n.item()) == (8.0, 3.0)  # 1 + 3 + 4 = 8 over 3 tokens


def test_micro_batch_split_gives_the_same_value_and_gradient():
    torch.manual_seed(0)
    w = torch.randn(4, requires_grad=True)
    feats = torch.randn(6, 5, 4)
    mask = (torch.rand(6, 5) > 0.4).to(torch.float32)
    mask[0, 0] = 1.0

    def per_token(f):
        return torch.tanh(f @ w) ** 2

    # one batch: Σ_t m_t ℓ_t / Σ_t m_t
    s, n = token_sum_and_count(per_token(feats), mask)
    (s / n).backward()
    full_value, full_grad = (s / n).item(), w.grad.clone()

    # micro-batches of uneven size (1, 2, 3 rows), each sum divided by the GLOBAL count
    w.grad = None
    splits = [(0, 1), (1, 3), (3, 6)]
    global_n = sum(token_sum_and_count(per_token(feats[a:b]), mask[a:b])[1] for a, b in splits)
    total = 0.0
    for a, b in splits:
        s_mb, _ = token_sum_and_count(per_token(feats[a:b]), mask[a:b])
        (s_mb / global_n).backward()
        total += (s_mb / global_n).item()
    assert total == approx(full_value)
    assert torch.allclose(w.grad, full_grad, atol=1e-6)

    # and the naive mean of micro-batch means is NOT the same (the invariance is not vacuous)
    means = [masked_mean(per_token(feats[a:b]), mask[a:b]) for a, b in splits]
    assert abs(sum(m.item() for m in means) / len(means) - full_value) > 1e-4


# ----------------------------------------------------------------------------- SFT


def test_sft_loss_sums_nll_over_loss_tokens():
    logp = T([[math.log(0.5), math.log(0.25), -99.0], [float("-inf"), math.log(0.125), 0.0]])
    mask = T([[1, 1, 0], [0, 1, 0]])
    total, n, metrics = sft_loss(logp, mask)
    # −(ln ½ + ln ¼ + ln ⅛) = (1 + 2 + 3)·ln 2 = 6·0.693147 = 4.158883 over 3 tokens; the −inf is masked out
    assert total.item() == approx(6 * math.log(2))
    assert n.item() == 3.0
    assert metrics["nll"].item() == approx(2 * math.log(2))


# ----------------------------------------------------------------------------- reward model


def test_pairwise_sigmoid_loss_with_and_without_margin():
    c, r = T([1.0, 2.0]), T([0.5, 2.0])
    # diff 0.5: σ(0.5) = 0.622459, −log → 0.474077 ; diff 0: −log ½ = 0.693147
    assert pairwise_sigmoid_loss(c, r).tolist() == approx([0.474077, 0.693147])
    # scalar margin 0.5: diffs 0 and −0.5 → 0.693147 ; −log σ(−0.5) = 0.474077 + 0.5 = 0.974077
    assert pairwise_sigmoid_loss(c, r, margin=0.5).tolist() == approx([0.693147, 0.974077])
    # per-pair margin [0.5, −0.5]: diffs 0 and +0.5
    assert pairwise_sigmoid_loss(c, r, margin=T([0.5, -0.5])).tolist() == approx([0.693147, 0.474077])


def test_pairwise_logexp_loss_with_and_without_margin():
    c, r = T([1.0, 2.0]), T([0.5, 2.0])
    # log(1 + e^{−0.5}) = log(1.606531) = 0.474077 ; log 2 = 0.693147
    assert pairwise_logexp_loss(c, r).tolist() == approx([0.474077, 0.693147])
    # margin m: log(1 + e^{r_r − r_c + m}); 0.5 → log 2 and log(1 + e^{0.5}) = 0.974077
    assert pairwise_logexp_loss(c, r, margin=0.5).tolist() == approx([0.693147, 0.974077])
    # equal to the sigmoid loss term by term
    m = T([0.3, -1.2])
    assert torch.allclose(pairwise_logexp_loss(c, r, m), pairwise_sigmoid_loss(c, r, m))
    # no overflow where log(1 + exp(100)) would be inf in fp32: log(1 + e^100) = 100 + log(1 + e^−100) ≈ 100
    assert pairwise_logexp_loss(T([0.0]), T([100.0])).item() == approx(100.0, abs=1e-4)


def test_rm_loss_gradient_pushes_rewards_apart():
    c = T([0.2], requires_grad=True)
    r = T([0.7], requires_grad=True)
    pairwise_sigmoid_loss(c, r).sum().backward()
    # dℓ/dr_c = −σ(r_r − r_c) = −σ(0.5) = −0.622459 ; dℓ/dr_r = +0.622459
    assert c.grad.item() == approx(-0.622459) and r.grad.item() == approx(0.622459)


def test_rm_metrics():
    m = rm_metrics(T([1.0, 0.0, 3.0, 1.0]), T([0.0, 1.0, 1.0, 1.0]))
    # wins: yes, no, yes, tie(no) → 0.5 ; means 1.25 and 0.75 ; margin (1 − 1 + 2 + 0)/4 = 0.5
    assert m["acc"].item() == 0.5
    assert m["chosen_reward"].item() == approx(1.25)
    assert m["rejected_reward"].item() == approx(0.75)
    assert m["margin"].item() == approx(0.5)


# ----------------------------------------------------------------------------- DPO family

# policy chosen/rejected −10 / −12, reference −11 / −11:
# chosen log-ratio +1, rejected log-ratio −1, h = 1 − (−1) = 2
DPO_ARGS = (T([-10.0]), T([-12.0]), T([-11.0]), T([-11.0]))


def test_dpo_loss_and_implicit_rewards():
    pc = T([-10.0], requires_grad=True)
    loss, rc, rr = dpo_loss(pc, *DPO_ARGS[1:], beta=0.1)
    # βh = 0.2: σ(0.2) = 0.549834, −log → 0.598139
    assert loss.item() == approx(0.598139)
    # implicit rewards β·(log π − log π_ref): 0.1·1 = 0.1 and 0.1·(−1) = −0.1, detached
    assert (rc.item(), rr.item()) == (approx(0.1), approx(-0.1))
    assert not rc.requires_grad and loss.requires_grad
    metrics = rm_metrics(rc, rr)  # the logged DPO metrics
    assert metrics["acc"].item() == 1.0
    assert metrics["margin"].item() == approx(0.2)


def test_cdpo_label_smoothing():
    loss, _, _ = dpo_loss(*DPO_ARGS, beta=0.1, label_smoothing=0.1)
    # 0.9·(−log σ(0.2)) + 0.1·(−log σ(−0.2)) = 0.9·0.598139 + 0.1·0.798139 = 0.538325 + 0.079814 = 0.618139
    assert loss.item() == approx(0.618139)
    # ε = 0.5 makes the loss symmetric in h: ½(0.598139 + 0.798139) = 0.698139
    assert dpo_loss(*DPO_ARGS, beta=0.1, label_smoothing=0.5)[0].item() == approx(0.698139)


def test_ipo_loss():
    # (h − 1/(2β))²: β = 0.1 → (2 − 5)² = 9 ; β = 0.5 → (2 − 1)² = 1 ; β = 0.25 → (2 − 2)² = 0
    assert dpo_loss(*DPO_ARGS, beta=0.1, ipo=True)[0].item() == approx(9.0)
    assert dpo_loss(*DPO_ARGS, beta=0.5, ipo=True)[0].item() == approx(1.0)
    assert dpo_loss(*DPO_ARGS, beta=0.25, ipo=True)[0].item() == approx(0.0)
    with pytest.raises(ValueError):
        dpo_loss(*DPO_ARGS, beta=0.1, ipo=True, label_smoothing=0.1)
    with pytest.raises(ValueError):
        dpo_loss(*DPO_ARGS, beta=0.0)


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    pc, pr = T([-10.0], requires_grad=True), T([-12.0], requires_grad=True)
    loss, _, _ = dpo_loss(pc, pr, T([-11.0]), T([-11.0]), beta=0.1)
    loss.sum().backward()
    # dℓ/dh = −β·σ(−βh) = −0.1·σ(−0.2) = −0.1·0.450166 = −0.045017 ; dh/dπ_c = 1, dh/dπ_r = −1
    assert pc.grad.item() == approx(-0.045017)
    assert pr.grad.item() == approx(0.045017)
    # a gradient-descent step raises log π(y_c) and lowers log π(y_r)
    assert pc.grad.item() < 0 < pr.grad.item()


def test_nll_term_and_the_combined_dpo_objective():
    # −log π(y_c)/|y_c|: −(−6)/3 = 2 ; −(−10)/4 = 2.5 ; a zero length is clamped to 1
    nll = nll_term(T([-6.0, -10.0, -1.0]), T([3, 4, 0]))
    assert nll.tolist() == approx([2.0, 2.5, 1.0])
    # Llama-3.1-style objective: mean(ℓ_DPO + c·nll) with c = 0.2 → 0.598139 + 0.2·2 = 0.998139
    loss, _, _ = dpo_loss(*DPO_ARGS, beta=0.1)
    assert (loss + 0.2 * nll_term(T([-6.0]), T([3]))).mean().item() == approx(0.998139)


# ----------------------------------------------------------------------------- KTO

# two examples: desirable with log-ratio −2 − (−3) = +1, undesirable with −6 − (−5) = −1
KTO_POLICY, KTO_REF, KTO_LABELS = T([-2.0, -6.0]), T([-3.0, -5.0]), T([True, False])


def test_kto_loss_with_unequal_weights():
    # mismatched pairs: [−3 − (−4), −4 − (−4)] = [1, 0] → z0 = 0.5
    losses, metrics = kto_loss(
        KTO_POLICY, KTO_REF, KTO_LABELS, T([-3.0, -4.0]), T([-4.0, -4.0]),
        beta=0.5, desirable_weight=1.0, undesirable_weight=2.0,
    )  # fmt: skip
    # desirable: 1·(1 − σ(0.5·(1 − 0.5))) = 1 − σ(0.25) = 1 − 0.562177 = 0.437823
    # undesirable: 2·(1 − σ(0.5·(0.5 − (−1)))) = 2·(1 − σ(0.75)) = 2·(1 − 0.679179) = 0.641643
    assert losses.tolist() == approx([0.437823, 0.641643])
    assert metrics["kl"].item() == approx(0.5)
    # rewards β·log-ratio: 0.5 and −0.5
    assert metrics["chosen_reward"].item() == approx(0.5)
    assert metrics["rejected_reward"].item() == approx(-0.5)


def test_kto_reference_point_is_clamped_at_zero_and_detached():
    kl_pol = T([-5.0], requires_grad=True)
    pol = KTO_POLICY.clone().requires_grad_(True)
    # mismatched: −5 − (−4) = −1 → z0 = max(0, −1) = 0
    losses, metrics = kto_loss(pol, KTO_REF, KTO_LABELS, kl_pol, T([-4.0]), 0.5, 1.0, 2.0)
    # desirable: 1 − σ(0.5·1) = 1 − 0.622459 = 0.377541 ; undesirable: 2·(1 − σ(0.5·(0 + 1))) = 0.755082
    assert losses.tolist() == approx([0.377541, 0.755082])
    assert metrics["kl"].item() == 0.0
    losses.sum().backward()
    assert kl_pol.grad is None  # no gradient through z0
    # dℓ_d/dr = −β·σ'(0.5) = −0.5·0.622459·0.377541 = −0.117502 ; dℓ_u/dr = +2·0.117502 = 0.235004
    assert pol.grad.tolist() == approx([-0.117502, 0.235004])


def test_kto_z0_override_and_estimate():
    est = kto_kl_estimate(T([-3.0, -4.0]), T([-4.0, -4.0]))
    assert est.item() == approx(0.5)
    # an all-reduced z0 replaces the local estimate; a negative one is clamped to 0
    a, _ = kto_loss(KTO_POLICY, KTO_REF, KTO_LABELS, T([9.0]), T([0.0]), 0.5, 1.0, 2.0, z0=T(0.5))
    assert a.tolist() == approx([0.437823, 0.641643])
    b, m = kto_loss(KTO_POLICY, KTO_REF, KTO_LABELS, T([9.0]), T([0.0]), 0.5, 1.0, 2.0, z0=T(-3.0))
    assert b.tolist() == approx([0.377541, 0.755082]) and m["kl"].item() == 0.0
    # a group with no examples reports a 0 mean reward, not nan
    _, m = kto_loss(KTO_POLICY, KTO_REF, T([True, True]), T([0.0]), T([0.0]), 0.5)
    assert m["rejected_reward"].item() == 0.0


# ----------------------------------------------------------------------------- PRM


def test_prm_hard_labels():
    logits = T([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.0]])
    labels = T([0, 1, 1, IGNORE_INDEX])
    per_step, correct = prm_loss(logits, labels)
    # −log softmax: row 0 log(1 + e^−2) = 0.126928 ; row 1 log(1 + e^−1) = 0.313262 ;
    # row 2 (label 1, logits 3 vs 0) log(1 + e^3) = 3.048587 ; row 3 ignored → 0
    assert per_step.tolist() == approx([0.126928, 0.313262, 3.048587, 0.0])
    assert correct.tolist() == [True, True, False, False]  # rows 0, 1 right, row 2 wrong, row 3 ignored
    assert prm_valid(labels).sum().item() == 3  # OpenRLHF's mean: 3.488777 / 3


def test_prm_soft_labels():
    logits = T([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    labels = T([0.8, 0.5, -100.0])
    per_step, correct = prm_loss(logits, labels)
    # row 0: −0.8·log σ(1) − 0.2·log σ(−1) = 0.8·0.313262 + 0.2·1.313262 = 0.513262
    # row 1: −0.5·log σ(−2) − 0.5·log σ(2) = 0.5·(2.126928 + 0.126928) = 1.126928 ; row 2 ignored → 0
    assert per_step.tolist() == approx([0.513262, 1.126928, 0.0])
    assert prm_valid(labels).tolist() == [True, True, False]
    # row 0 predicts "+" and p ≥ ½ → right ; row 1 predicts "−" but p = ½ counts as "+" → wrong
    assert correct.tolist() == [True, False, False]
    # the soft cross-entropy is the BCE of σ(l₊ − l₋) against p
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        T([1.0, -2.0]), T([0.8, 0.5]), reduction="none"
    )
    assert per_step[:2].tolist() == approx(bce.tolist())
    # gradient: dℓ/dz₊ = σ(z₊ − z₋) − p = σ(1) − 0.8 = 0.731059 − 0.8 = −0.068941 (row 0)
    z = logits.clone().requires_grad_(True)
    prm_loss(z, labels)[0].sum().backward()
    assert z.grad[0].tolist() == approx([-0.068941, 0.068941])
    assert z.grad[2].tolist() == [0.0, 0.0]  # ignored rows get no gradient


def test_gather_prm_steps_selects_placeholders_and_maps_reward_tokens():
    # vocab 6, placeholder id 2, reward tokens "+" = 4, "−" = 5
    input_ids = T([[1, 2, 3, 2], [2, 1, 0, 0]])
    labels = T([[-100, 5, -100, 4], [4, -100, -100, -100]])
    logits = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(2, 4, 6)
    step_logits, step_labels = gather_prm_steps(logits, input_ids, labels, 2, [4, 5])
    # placeholders at (0,1), (0,3), (1,0); columns 4, 5 of those rows
    assert step_logits.tolist() == [[10.0, 11.0], [22.0, 23.0], [28.0, 29.0]]
    assert step_labels.tolist() == [1, 0, 0]  # token 5 → class 1 ("−"), token 4 → class 0 ("+")
    # without reward tokens: full vocabulary, labels stay token ids
    full_logits, full_labels = gather_prm_steps(logits, input_ids, labels, 2)
    assert full_logits.shape == (3, 6) and full_labels.tolist() == [5, 4, 4]
    # and a full-vocabulary hard-label loss runs on that
    per_step, correct = prm_loss(full_logits, full_labels)
    # each row is a + [0..5]: lse = 5 + log(1 + e^−1 + … + e^−5) = 5 + log 1.578055 = 5 + (0.405465 + log 1.052037) = 5.456193
    # −log softmax at column 5 = 0.456193, at column 4 = 1.456193 ; argmax is column 5 in every row
    assert per_step.tolist() == approx([0.456193, 1.456193, 1.456193])
    assert correct.tolist() == [True, False, False]


# ----------------------------------------------------------------------------- KD


def brute_kd(student, teacher, mask):
    logp = torch.log_softmax(student.double(), -1)
    p = torch.softmax(teacher.double(), -1)
    prod = torch.where(torch.isinf(student), torch.zeros_like(logp), p * logp)
    per_tok = -prod.sum(-1)
    return (per_tok * mask.double()).sum(), mask.double().sum()


def test_kd_loss_by_hand():
    # uniform teacher over 2 tokens; student probs ¼, ¾ (logits ln 1, ln 3)
    # −½(ln ¼ + ln ¾) = ½(1.386294 + 0.287682) = 0.836988 ; second token masked out
    student = T([[[0.0, math.log(3.0)], [7.0, -7.0]]])
    teacher = T([[[0.0, 0.0], [0.0, 9.0]]])
    s, n = kd_loss(student, teacher, T([[1, 0]]))
    assert s.item() == approx(0.836988) and n.item() == 1.0


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_kd_loss_matches_brute_force_value_and_gradient(chunk_size):
    torch.manual_seed(0)
    full = torch.randn(2, 6, 11, dtype=torch.float64)
    teacher = torch.randn(2, 5, 11, dtype=torch.float64) * 2
    mask = T([[1.0, 1.0, 0.0, 1.0, 0.5], [0.0, 1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)

    a = full.clone().requires_grad_(True)
    s, n = kd_loss(a[:, :-1], teacher, mask, chunk_size=chunk_size)  # a non-contiguous view
    s.backward()
    b = full.clone().requires_grad_(True)
    s_ref, n_ref = brute_kd(b[:, :-1], teacher, mask)
    s_ref.backward()
    assert s.item() == approx(s_ref.item(), abs=1e-10) and n.item() == n_ref.item() == 6.5
    assert torch.allclose(a.grad, b.grad, atol=1e-10)
    assert a.grad[:, -1].abs().sum() == 0 and a.grad[0, 2].abs().sum() == 0  # masked rows get no gradient


def test_kd_loss_drops_inf_student_logits_and_keeps_dtype():
    student = T([[0.0, float("-inf"), 1.0]], requires_grad=True)
    teacher = T([[0.0, 0.0, 0.0]])
    s, _ = kd_loss(student, teacher, T([True]))
    # the −inf column contributes 0 (not nan): −⅓(log_softmax 0 + log_softmax 1) over the two finite logits
    lse = math.log(1 + math.e)
    assert s.item() == approx(-(1 / 3) * ((0 - lse) + (1 - lse)))
    s.backward()
    assert torch.isfinite(student.grad).all()
    # bf16 logits: computed in fp32, gradient comes back in bf16
    sb = torch.randn(3, 7).to(torch.bfloat16).requires_grad_(True)
    tb = torch.randn(3, 7).to(torch.bfloat16)
    out, _ = kd_loss(sb, tb, torch.ones(3))
    out.backward()
    assert out.dtype == torch.float32 and sb.grad.dtype == torch.bfloat16
    ref, _ = brute_kd(sb.detach().float(), tb.float(), torch.ones(3))
    assert out.item() == approx(ref.item(), abs=1e-4)


def test_kd_micro_batch_invariance():
    torch.manual_seed(1)
    st = torch.randn(4, 3, 5, requires_grad=True)
    te = torch.randn(4, 3, 5)
    mask = T([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 1]])
    s, n = kd_loss(st, te, mask)
    (s / n).backward()
    g_full = st.grad.clone()
    st.grad = None
    for a, b in [(0, 1), (1, 4)]:
        s_mb, _ = kd_loss(st[a:b], te[a:b], mask[a:b])
        (s_mb / n).backward()
    assert torch.allclose(st.grad, g_full, atol=1e-6)
