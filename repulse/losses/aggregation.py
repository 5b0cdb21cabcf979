"""Masked reductions and the token-level aggregation every trainer uses.

**Why sums and counts, not means.** A loss that is a mean per micro-batch gives a
different gradient when the same global batch is split differently (the micro-batches
hold different numbers of tokens, so their tokens get different weights). Every
token-level loss here is therefore returned as ``(sum, count)``: the sum of the
per-token losses over the micro-batch's masked tokens, and the number (total weight) of
those tokens. The training loop adds up the counts of **all micro-batches of one
optimizer step on all ranks** into a global count ``N`` and backpropagates
``sum_mb / N`` for each micro-batch (the engine's gradient averaging over ranks is
undone by its scaling contract, see ``repulse.engine.base``). The accumulated gradient is
then the gradient of

    L = Σ_{micro-batches, ranks} Σ_t m_t ℓ_t  /  Σ_{micro-batches, ranks} Σ_t m_t,

the global per-token mean, identically for any split into micro-batches and ranks
(OpenRLHF's ``iter_grad_accum_global_norm``, spec §3.1 / §3.4).

Masked positions never leak into the result, even if they hold ``nan``/``inf``
(e.g. log-probabilities of padding): they are selected out with ``torch.where`` rather
than multiplied by zero.
"""

from __future__ import annotations

import torch


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x·m where m ≠ 0, exactly 0 elsewhere (no 0·inf = nan)."""
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    if mask.dtype == torch.bool:
        return torch.where(mask, x, zero)
    return torch.where(mask != 0, x * mask.to(x.dtype), zero)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Σ_i m_i x_i over ``dim`` (all elements when ``None``).

    ``mask`` is bool or numeric (0/1 or non-negative weights) and broadcastable to ``x``.
    Positions with m_i = 0 contribute exactly 0 even when x_i is ``nan``/``inf``.
    """
    y = _masked(x, mask)
    return y.sum() if dim is None else y.sum(dim=dim)


def masked_mean(
    x: torch.Tensor,
    mask: torch.Tensor,
    dim: int | tuple[int, ...] | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Σ_i m_i x_i / max(Σ_i m_i, eps) over ``dim`` (all elements when ``None``).

    Where the mask is empty (Σ m = 0) the result is exactly 0, not ``nan``, for any
    ``eps`` ≥ 0. The ``eps`` floor only matters for tiny positive weight totals; with a
    0/1 mask the result is the exact mean. ``mask`` is bool or numeric and broadcastable
    to ``x``.
    """
    num = masked_sum(x, mask, dim)
    m = torch.broadcast_to(mask, x.shape).to(num.dtype)
    den = m.sum() if dim is None else m.sum(dim=dim)
    den = torch.where(den == 0, torch.ones_like(den), den)
    return num / (den.clamp(min=eps) if eps > 0 else den)


def token_sum_and_count(per_token: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-level aggregation: ``(Σ_t m_t ℓ_t, Σ_t m_t)`` over all elements.

    The caller (the fit loop) divides each micro-batch's sum by the **global** count of
    the optimizer step (all micro-batches, all ranks), never by this micro-batch's own
    count: that makes the loss, and its gradient, the global per-token mean whatever the
    split into micro-batches and ranks (see the module docstring). ``sum`` carries the
    gradient; ``count`` is a float tensor without gradient.
    """
    total = masked_sum(per_token, mask)
    count = torch.broadcast_to(mask, per_token.shape).to(total.dtype).sum().detach()
    return total, count
