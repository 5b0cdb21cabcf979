"""The mixture-of-experts router's load-balancing (auxiliary) loss, and how it joins a task loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def load_balancing_loss(
    router_logits: Sequence[torch.Tensor],
    num_experts: int,
    top_k: int,
    token_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Switch Transformer's load-balancing loss over all MoE layers (Fedus et al. 2021, eq. 4-6,
    with top-k routing, as transformers' Mixtral / Qwen-MoE compute their ``aux_loss``):

        p_lt   = softmax(router_logits_l[t])                      routing probabilities, layer l, token t
        f_e    = Σ_l Σ_t m_t · 1[e ∈ top_k(p_lt)] / (L · Σ_t m_t)  share of top-k assignments to expert e
        P_e    = Σ_l Σ_t m_t · p_lt[e]        / (L · Σ_t m_t)      mean routing probability of expert e
        aux    = N · Σ_e f_e · P_e

    with L layers, N = ``num_experts`` experts and m the token mask (1 = a real token; all ones
    when ``token_mask`` is None). Σ_e f_e = top_k, so perfectly uniform routing gives aux = top_k
    and aux grows as routing concentrates on few experts. Gradients flow through P (the router
    probabilities); the top-k counts f are constants.

    ``router_logits``: one ``[T, N]`` tensor per layer (T = all tokens of the batch, flattened
    row-major like ``token_mask.reshape(-1)``). Returns a 0-d fp32 tensor.
    """
    if not router_logits:
        raise ValueError("load_balancing_loss needs the router logits of at least one layer")
    device = router_logits[0].device
    tokens = router_logits[0].shape[0]
    mask = (
        torch.ones(tokens, dtype=torch.float32, device=device)
        if token_mask is None
        else token_mask.reshape(-1).to(device=device, dtype=torch.float32)
    )
    if mask.numel() != tokens:
        raise ValueError(f"token_mask has {mask.numel()} entries for {tokens} routed tokens")
    counts = torch.zeros(num_experts, dtype=torch.float32, device=device)
    probs = torch.zeros(num_experts, dtype=torch.float32, device=device)
    for logits in router_logits:
        p = torch.softmax(logits.to(device).float(), dim=-1)
        chosen = torch.topk(p, top_k, dim=-1).indices
        counts = counts.scatter_add(0, chosen.reshape(-1), mask.repeat_interleave(top_k))
        probs = probs + (p * mask[:, None]).sum(0)
    rows = mask.sum() * len(router_logits)
    return num_experts * torch.sum((counts / rows) * (probs / rows))


def with_aux_loss(loss_sum: torch.Tensor, aux: torch.Tensor, coef: float, units: float) -> torch.Tensor:
    """A micro-batch's summed task loss plus its share of the auxiliary loss: ``loss_sum + coef·units·aux``.

    The fit loop divides each micro-batch's ``loss_sum`` by the step's unit count U (tokens,
    pairs, samples over all micro-batches and processes), so the step's loss becomes

        L = Σ_mb loss_sum_mb / U  +  coef · Σ_mb (u_mb / U) · aux_mb

    the task loss plus ``coef`` times the units-weighted mean of the micro-batches' auxiliary
    losses. With one micro-batch that is exactly L_task + coef·aux - OpenRLHF's
    ``loss + aux_loss * aux_loss_coef`` - and with micro-batches of equal units it is OpenRLHF's
    mean over micro-batches.
    """
    return loss_sum + (coef * float(units)) * aux.to(loss_sum.dtype)
