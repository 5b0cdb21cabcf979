"""Preference losses: reward-model pairwise losses, the DPO family and KTO (spec §3.2, §3.3, §3.17).

All functions take per-example (per-pair) scalars — rewards, or sequence log-probability
**sums** log π(y|x) = Σ_t log π(y_t | x, y_<t) over the response tokens — and return
**per-example** losses: the trainer takes their mean over the micro-batch (OpenRLHF's
convention for RM/DPO/KTO: plain micro-batch means, no global token normaliser) or
divides their sum by a global example count, as it chooses.

Sign conventions: r_c / r_r are the rewards of the chosen / rejected response, σ is the
logistic function, and log σ(x) = −softplus(−x) is evaluated in its numerically stable form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Margin = torch.Tensor | float | None


def _check_pair(chosen: torch.Tensor, rejected: torch.Tensor) -> None:
    if chosen.shape != rejected.shape:
        raise ValueError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} differ in shape")


def _group_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ``mask`` (bool), 0 when the group is empty; detached."""
    x = x.detach()
    n = mask.sum()
    return torch.where(mask, x, torch.zeros_like(x)).sum() / n.clamp(min=1).to(x.dtype)


# --------------------------------------------------------------------------- reward models


def pairwise_sigmoid_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: Margin = None
) -> torch.Tensor:
    """Bradley–Terry loss per pair: ℓ = −log σ(r_c − r_r − m).

    ``margin`` m is ``None`` (m = 0), a float, or a per-pair tensor (OpenRLHF's ``margin``
    column with ``--model.margin_loss_enable``): the chosen reward must beat the rejected
    one by at least m before the loss gets small. Returns ℓ with the shape of ``chosen``.
    """
    _check_pair(chosen, rejected)
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def pairwise_logexp_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: Margin = None) -> torch.Tensor:
    """Log-exp loss per pair: ℓ = log(1 + exp(r_r − r_c + m)), m = 0 by default.

    With m = 0 this is OpenRLHF's ``LogExpLoss``. It equals the Bradley–Terry loss
    −log σ(r_c − r_r − m) term by term. OpenRLHF evaluates log(1 + exp(·)) literally,
    which overflows to ``inf`` above about 88 in fp32. Here it is ``softplus``, which gives
    the same value wherever OpenRLHF's is finite.

    **Convention (differs from OpenRLHF):** OpenRLHF's ``LogExpLoss`` silently ignores
    the margin. Here a given margin is applied (the same m as in
    :func:`pairwise_sigmoid_loss`), so ``margin_loss_enable`` means the same thing for
    both loss types. To reproduce OpenRLHF exactly, the trainer passes ``margin=None``
    for the log-exp loss.
    """
    _check_pair(chosen, rejected)
    x = rejected - chosen
    if margin is not None:
        x = x + margin
    return F.softplus(x)


def rm_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    """Detached reward-model metrics over the pairs:

    ``acc`` = mean 1[r_c > r_r] (ties count as wrong, as in OpenRLHF), ``chosen_reward`` =
    mean r_c, ``rejected_reward`` = mean r_r, ``margin`` = mean (r_c − r_r).
    """
    _check_pair(chosen, rejected)
    c, r = chosen.detach(), rejected.detach()
    return {
        "acc": (c > r).to(c.dtype).mean(),
        "chosen_reward": c.mean(),
        "rejected_reward": r.mean(),
        "margin": (c - r).mean(),
    }


# --------------------------------------------------------------------------- DPO family


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    ipo: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO / cDPO / IPO loss per pair (OpenRLHF ``DPOLoss``).

    With sequence log-probs of the policy π_θ and the frozen reference π_ref,

        h = (log π_θ(y_c) − log π_ref(y_c)) − (log π_θ(y_r) − log π_ref(y_r))

    - DPO (ε = 0) / cDPO (``label_smoothing`` ε > 0: each label is assumed flipped with
      probability ε; Mitchell, "A note on DPO with noisy preferences"):

          ℓ = −(1 − ε) · log σ(β h) − ε · log σ(−β h)

    - IPO (``ipo=True``; Azar et al. 2023, eq. 17): ℓ = (h − 1/(2β))².

    Implicit rewards (detached): r_c = β (log π_θ(y_c) − log π_ref(y_c)), likewise r_r.

    **Convention (OpenRLHF, differs from the IPO paper and TRL):** the log-probs are
    whatever the caller passes. OpenRLHF's trainer passes response-token **sums** for DPO
    and for IPO alike, and so does ours. The IPO paper's setting and TRL's ``ipo`` loss use
    the **mean** per-token log-prob instead. To get that, pass length-normalised log-probs.
    With sums, the IPO target 1/(2β) applies to the whole-sequence log-ratio.

    To add the NLL regulariser ("Llama 3.1 style", ``--model.nll_loss_coef`` c), use
    ``ℓ + c · nll_term(policy_chosen_logps, chosen_len)`` per pair before averaging:
    total = mean(ℓ_DPO) + c · mean(nll).

    Returns ``(ℓ [B], r_c [B], r_r [B])``; the rewards are detached. For OpenRLHF's
    logged metrics (reward accuracy 1[r_c > r_r], chosen/rejected reward means, margin),
    call :func:`rm_metrics` on ``(r_c, r_r)``.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if ipo and label_smoothing != 0.0:
        raise ValueError("label_smoothing (cDPO) and ipo are exclusive: IPO has no label smoothing")
    for t in (policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
        _check_pair(policy_chosen_logps, t)

    chosen_logratio = policy_chosen_logps - ref_chosen_logps
    rejected_logratio = policy_rejected_logps - ref_rejected_logps
    h = chosen_logratio - rejected_logratio
    if ipo:
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h)
        if label_smoothing:
            losses = losses - label_smoothing * F.logsigmoid(-beta * h)
    chosen_rewards = beta * chosen_logratio.detach()
    rejected_rewards = beta * rejected_logratio.detach()
    return losses, chosen_rewards, rejected_rewards


def nll_term(chosen_logp_sum: torch.Tensor, chosen_len: torch.Tensor) -> torch.Tensor:
    """Length-normalised NLL of the chosen response, per pair: −log π_θ(y_c) / |y_c|.

    ``chosen_logp_sum`` [B] is the response-token sum of log π_θ and ``chosen_len`` [B] is
    the number of response tokens (clamped to ≥ 1). OpenRLHF's DPO trainer takes the mean
    of this over the micro-batch and adds it as ``loss + nll_loss_coef · nll`` (Llama 3.1
    report): total = dpo + nll_loss_coef · nll. Per pair, that is
    ``dpo_loss(...)[0] + nll_loss_coef · nll_term(...)``, then the mean.
    """
    _check_pair(chosen_logp_sum, chosen_len)
    return -chosen_logp_sum / chosen_len.to(chosen_logp_sum.dtype).clamp(min=1)


# --------------------------------------------------------------------------- KTO


def kto_kl_estimate(kl_policy_logps: torch.Tensor, kl_ref_logps: torch.Tensor) -> torch.Tensor:
    """Unclamped, detached KL estimate for KTO's reference point: mean(log π_θ(y'|x) − log π_ref(y'|x)).

    The inputs are sequence log-prob sums of **mismatched** pairs (prompt i with the
    response of another example, e.g. i+1). To reproduce OpenRLHF across ranks: compute
    this on each rank, all-reduce the mean, then pass it to :func:`kto_loss` as ``z0``.
    The clamp at 0 is applied after averaging.
    """
    _check_pair(kl_policy_logps, kl_ref_logps)
    if kl_policy_logps.numel() == 0:
        return torch.zeros((), dtype=kl_policy_logps.dtype, device=kl_policy_logps.device)
    return (kl_policy_logps - kl_ref_logps).mean().detach()


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    labels: torch.Tensor,
    kl_policy_logps: torch.Tensor,
    kl_ref_logps: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    z0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KTO loss per example (Ethayarajh et al. 2024; OpenRLHF ``KTOLoss``, after HALOs).

    For example (x, y), with label "desirable" (``labels`` True) or "undesirable" (False):

        r(x, y) = log π_θ(y|x) − log π_ref(y|x)                   (sequence log-prob sums)
        z0      = max(0, mean_{(x, y') mismatched} [log π_θ(y'|x) − log π_ref(y'|x)])
        ℓ       = λ_D · (1 − σ(β (r − z0)))     if desirable
                  λ_U · (1 − σ(β (z0 − r)))     if undesirable

    z0 is a batch estimate of KL(π_θ ‖ π_ref), computed from the mismatched
    prompt/completion pairs ``kl_policy_logps`` / ``kl_ref_logps``. It is clamped at 0
    and **detached**: no gradient flows through the reference point. This is the paper's
    L_KTO = E[λ_y − v(x, y)] with v = λ_D σ(β(r − z0)) or λ_U σ(β(z0 − r)), the same as
    OpenRLHF. Pass ``z0`` (e.g. the all-reduced :func:`kto_kl_estimate`) to override the
    local estimate. It is still clamped at 0 and detached.

    The mean of the returned ℓ over the micro-batch is OpenRLHF's loss. OpenRLHF
    concatenates the weighted desirable and undesirable losses, then takes the mean.

    Returns ``(ℓ [B], metrics)``. The metrics are detached: ``kl`` = z0; ``chosen_reward``
    and ``rejected_reward`` = mean of β·r over the desirable and undesirable examples
    (0 when a group is empty).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    _check_pair(policy_logps, ref_logps)
    if labels.shape != policy_logps.shape:
        raise ValueError(
            f"labels {tuple(labels.shape)} must have the shape of the log-probs {tuple(policy_logps.shape)}"
        )
    desirable = labels.to(torch.bool)
    kl = kto_kl_estimate(kl_policy_logps, kl_ref_logps) if z0 is None else z0.detach()
    kl = kl.to(policy_logps.dtype).clamp(min=0)

    logratio = policy_logps - ref_logps
    chosen_losses = desirable_weight * (1.0 - torch.sigmoid(beta * (logratio - kl)))
    rejected_losses = undesirable_weight * (1.0 - torch.sigmoid(beta * (kl - logratio)))
    losses = torch.where(desirable, chosen_losses, rejected_losses)
    rewards = beta * logratio.detach()
    metrics = {
        "kl": kl,
        "chosen_reward": _group_mean(rewards, desirable),
        "rejected_reward": _group_mean(rewards, ~desirable),
    }
    return losses, metrics
