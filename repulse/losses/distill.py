"""Knowledge-distillation loss (spec §3.17, OpenRLHF ``KDLoss`` after MiniLLM).

Per token t the loss is the **cross-entropy from the teacher's distribution to the
student's** (forward direction, teacher → student):

    ℓ_t = −Σ_v p_T(v | t) · log p_S(v | t),   p_T = softmax(teacher logits), log p_S = log_softmax(student logits)

This equals KL(p_T ‖ p_S) + H(p_T). The teacher's entropy does not depend on the
student, so the gradient with respect to the student is the forward-KL gradient.
As in OpenRLHF, vocabulary entries whose **student** logit is ±inf (masked-out tokens)
contribute 0, not 0·(−inf) = nan.

Memory: with a large vocabulary, ``log_softmax(student.float())`` and
``softmax(teacher.float())`` over all tokens would be two full [B, T, V] fp32 tensors,
and autograd would keep them for backward. Here only the masked-in tokens are computed,
``chunk_size`` rows at a time. Each chunk is upcast to fp32 (only if it is not already
fp32 or wider), reduced to one number per token, and dropped. The backward pass
recomputes the chunk's softmaxes instead of storing them. The only full-size tensor ever
made is the student's gradient, in the student logits' own dtype. The teacher logits are
treated as constants (they come from a frozen, no-grad forward); no gradient flows to
them.

The trainer's objective is L = (1 − c)·L_SFT + c·L_KD (``--kd_coef`` c, default 0.4),
with both terms token-level (sum / global count, see ``repulse.losses.aggregation``).
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK = 1024


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    out = torch.float32
    for d in dtypes:
        out = torch.promote_types(out, d)
    return out


def _rows(x: torch.Tensor, idx: tuple[torch.Tensor, ...], dtype: torch.dtype) -> torch.Tensor:
    """The selected rows [n, V] of ``x`` [..., V] as ``dtype`` (one chunk-sized copy)."""
    return x[idx].to(dtype)


class _TeacherCrossEntropy(torch.autograd.Function):
    """ℓ_i = −Σ_v p_T,iv log p_S,iv for the rows ``idx`` of the logits; chunked both ways."""

    @staticmethod
    def forward(ctx, student, teacher, idx, chunk_size):  # type: ignore[override]
        dtype = _compute_dtype(student.dtype, teacher.dtype)
        n = idx[0].numel()
        out = torch.empty(n, dtype=dtype, device=student.device)
        for s in range(0, n, chunk_size):
            sel = tuple(i[s : s + chunk_size] for i in idx)
            x = _rows(student, sel, dtype)
            logp = torch.log_softmax(x, dim=-1)
            p_t = torch.softmax(_rows(teacher, sel, dtype), dim=-1)
            prod = (p_t * logp).masked_fill_(torch.isinf(x), 0.0)
            out[s : s + chunk_size] = -prod.sum(dim=-1)
            del x, logp, p_t, prod
        ctx.save_for_backward(student, teacher, *idx)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        student, teacher, *idx = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        dtype = _compute_dtype(student.dtype, teacher.dtype)
        chunk_size = ctx.chunk_size
        grad = torch.zeros_like(student)
        go = grad_out.to(dtype)
        n = idx[0].numel()
        for s in range(0, n, chunk_size):
            sel = tuple(i[s : s + chunk_size] for i in idx)
            x = _rows(student, sel, dtype)
            finite = ~torch.isinf(x)
            p_t = torch.softmax(_rows(teacher, sel, dtype), dim=-1).mul_(finite)
            # ℓ = −Σ_{v finite} p_T,v (x_v − lse(x))  ⇒  ∂ℓ/∂x_u = softmax(x)_u · Σ_{v finite} p_T,v − p_T,u·1[u finite]
            g = torch.softmax(x, dim=-1).mul_(p_t.sum(dim=-1, keepdim=True)).sub_(p_t)
            g.mul_(go[s : s + chunk_size, None])
            grad.index_put_(sel, g.to(grad.dtype))
            del x, finite, p_t, g
        return grad, None, None, None


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher → student cross-entropy summed over masked tokens: ``(loss_sum, n_tokens)``.

        loss_sum = Σ_t m_t · (−Σ_v softmax(z_T,t)_v · log_softmax(z_S,t)_v),   n_tokens = Σ_t m_t

    ``student_logits`` and ``teacher_logits`` are [..., V] of the same shape, e.g.
    [B, T, V]. Non-contiguous views such as ``logits[:, :-1]`` are fine and are not
    copied. ``mask`` has shape [...] (bool, 0/1, or non-negative weights; weight m_t
    scales token t). Terms whose student logit is ±inf are dropped (OpenRLHF's
    ``inf_mask``). OpenRLHF's ``KDLoss`` is ``loss_sum / n_tokens`` over the tokens
    whose label is not −100. The trainer divides by the global token count of the
    optimizer step instead (``repulse.losses.aggregation``). The gradient flows to the
    student only. The computation is chunked over tokens, ``chunk_size`` rows at a time
    (see the module docstring).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} logits differ in shape"
        )
    if mask.shape != student_logits.shape[:-1]:
        raise ValueError(f"mask {tuple(mask.shape)} must be the logits' shape without the vocabulary dim")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    idx = torch.nonzero(mask != 0, as_tuple=True)
    per_token = _TeacherCrossEntropy.apply(student_logits, teacher_logits.detach(), idx, chunk_size)
    weights = mask[idx].to(per_token.dtype)
    n_tokens = mask.to(per_token.dtype).sum().detach()
    return (per_token * weights).sum(), n_tokens
