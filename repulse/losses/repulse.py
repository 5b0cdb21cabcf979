"""RePULSe losses (Zhao, Li, Brekelmans, Grosse, NeurIPS 2025), as the reference code computes them.

Sign convention: the paper's β > 0, target σ_θ(s | s₀) ∝ p_θ(s | s₀)·exp(−β·r(s₀, s)).
The reference code's ``--target_dist_beta`` is β_c = −β.

Samples come in prompt groups of N consecutive rows. ℓ_θ(s) = (1/|s|) Σ_t m_t log p_θ(s_t | ·)
is the token-mean log-likelihood (all reference losses use the mean, not the sum).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _groups(x: torch.Tensor, n: int) -> torch.Tensor:
    if x.shape[0] % n:
        raise ValueError(f"{x.shape[0]} rows are not whole groups of {n}")
    return x.view(-1, n, *x.shape[1:])


def token_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(1/|s|) Σ_t m_t x_t per row (|s| ≥ 1 guarded)."""
    m = mask.to(x.dtype)
    return (x * m).sum(-1) / m.sum(-1).clamp(min=1)


def ctl_sigma_weights(
    logp_sum: torch.Tensor, logq_old_sum: torch.Tensor, rewards: torch.Tensor, beta: float, group_size: int
) -> torch.Tensor:
    """w^σ_i = softmax_i(Σ_t log p(s_i) − β·r_i − Σ_t log q_old(s_i)) within each prompt group; detached.

    Self-normalised importance weights of q-samples for the target σ ∝ p·exp(−β r).
    """
    logw = (logp_sum - beta * rewards - logq_old_sum).detach()
    return torch.softmax(_groups(logw, group_size), dim=1).reshape(logw.shape)


def ctl_pi_weights(
    logp_tok: torch.Tensor, logq_old_tok: torch.Tensor, mask: torch.Tensor, group_size: int
) -> torch.Tensor:
    """w^π_{i,t} = softmax_i(Σ_{k<t} m_k (log p(s_{i,k}) − log q_old(s_{i,k}))) per prompt group and position.

    With the q/p twist parameterisation, the intermediate target π_t ∝ p(s_{1:t−1})·q(s_t | ·), so
    its importance weight on q-samples only involves the tokens strictly before t. Detached.
    """
    diff = ((logp_tok - logq_old_tok) * mask.to(logp_tok.dtype)).detach()
    prefix = torch.cumsum(diff, dim=-1) - diff  # Σ_{k<t}
    return torch.softmax(_groups(prefix, group_size), dim=1).reshape(prefix.shape)


def ctl_loss(
    logq_tok: torch.Tensor,
    logp_tok: torch.Tensor,
    logq_old_tok: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    group_size: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The proposal's CTL loss (SIS estimate of the contrastive twist-learning gradient, spec §1.3):

        log ψ_{i,t} = log q(s_{i,t}) − sg(log p(s_{i,t}))
        L_q = mean_j mean_i (1/|s_i|) Σ_t m_{i,t} (w^π_{i,t} − w^σ_i) · log ψ_{i,t}

    Gradients flow only through log q. Departures from the paper's formula, kept so that the
    published hyper-parameters transfer: tokens are averaged (1/|s_i|), and the mean over the N
    samples adds a 1/N. Inputs are [B, T] per-token log-probs of q-samples (B = prompts·N) and
    rewards [B].
    """
    m = mask.to(logq_tok.dtype)
    logp_tok = logp_tok.detach()
    w_sigma = ctl_sigma_weights((logp_tok * m).sum(-1), (logq_old_tok * m).sum(-1), rewards, beta, group_size)
    w_pi = ctl_pi_weights(logp_tok, logq_old_tok, m, group_size)
    log_psi = logq_tok - logp_tok
    per_seq = token_mean((w_pi - w_sigma.unsqueeze(-1)) * log_psi, m)
    ess = 1.0 / (_groups(w_sigma, group_size) ** 2).sum(1)
    return per_seq.mean(), {"ess_sigma": ess.mean().detach()}


def neg_training_weights(
    logp_sum: torch.Tensor,
    logq_old_sum: torch.Tensor,
    rewards: torch.Tensor,
    beta: float,
    group_size: int,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """w_i = softmax_i(Σ_t m_t log p(s'_i) − β·r_i − Σ_t m_t log q_old(s'_i)) per prompt group; detached.

    The sums must run over the response mask only: the reference code summed the padded
    per-token log-probs unmasked, which lets padding change the weights (a bug, spec §6).
    ``logp_sum``/``logq_old_sum`` are given already masked; ``mask`` is accepted for callers that
    want to pass per-token tensors instead (then both are [B, T] and are summed under it).
    """
    if mask is not None and logp_sum.dim() == 2:
        m = mask.to(logp_sum.dtype)
        logp_sum, logq_old_sum = (logp_sum * m).sum(-1), (logq_old_sum * m).sum(-1)
    return ctl_sigma_weights(logp_sum, logq_old_sum, rewards, beta, group_size)


def p_proposal_weights(rewards: torch.Tensor, beta: float, group_size: int) -> torch.Tensor:
    """The q := p ablation: with s' ~ p itself, w_i = softmax_i(−β r_i) per prompt group (spec §1.5)."""
    return torch.softmax(_groups(-beta * rewards.detach(), group_size), dim=1).reshape(rewards.shape)


def neg_training_loss(logp_tok: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """L_u = mean_j mean_i w_i · ℓ_θ(s'_i).

    Minimising +α·L_u lowers the likelihood of the proposal's low-reward samples (gradient ascent
    on their NLL). Since Σ_i w_i = 1 per group, mean_i carries a 1/N: the reference α equals
    N × the paper's α on E_σ[ℓ] (see ``paper_alpha_to_reference``).
    """
    return (weights.detach() * token_mean(logp_tok, mask)).mean()


def rloo_reinforce_loss(
    logp_tok: torch.Tensor, mask: torch.Tensor, returns: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_r = mean_j mean_i (R_i − b_i)·(−ℓ_θ(s_i)), b_i = (Σ_k R_k − R_i)/(N − 1) (leave-one-out)."""
    if group_size < 2:
        raise ValueError("the leave-one-out baseline needs at least 2 samples per prompt")
    r = _groups(returns.detach(), group_size)
    baseline = (r.sum(1, keepdim=True) - r) / (group_size - 1)
    adv = (r - baseline).reshape(returns.shape)
    return (adv * -token_mean(logp_tok, mask)).mean(), {"advantage_abs": adv.abs().mean()}


def paper_alpha_to_reference(alpha_paper: float, group_size: int) -> float:
    """Reference α = N · paper α: L_u averages w_i·ℓ_i over the N samples, whose weights sum to 1."""
    return alpha_paper * group_size


def minus_alpha_exp_beta_r(r: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """r̃ = r − a·exp(−b·r), b > 0 (the reference writes exp(b_c·r) with b_c = −b < 0)."""
    return r - a * torch.exp(-b * r)


def minus_alpha_ind(r: torch.Tensor, a: float, eta: float) -> torch.Tensor:
    """r̃ = r − a·1[r < η]."""
    return r - a * (r < eta).to(r.dtype)


REWARD_TRANSFORMS: dict[str, Callable[[torch.Tensor, float, float], torch.Tensor]] = {
    "minus_alpha_exp_beta_r": minus_alpha_exp_beta_r,
    "minus_alpha_ind": minus_alpha_ind,
}
