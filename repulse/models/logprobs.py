"""Token log-probabilities and entropies, chunked so no full-vocabulary fp32 copy exists.

With a 150k vocabulary, ``log_softmax(logits.float())`` on 16k tokens is a 10 GB fp32
tensor, and autograd would keep it for backward. Here rows (tokens) are processed
``chunk_size`` at a time: each chunk is upcast to fp32, reduced, and dropped. Backward
recomputes the chunk's softmax instead of storing it (custom autograd functions), so the
only full-size tensor ever made is the gradient of the logits, in the logits' own dtype.
The forward values are bit-identical to ``torch.log_softmax(logits.float(), -1).gather``
because each row is computed by the same kernel on the same fp32 values.

Outputs are fp32 (fp64 for fp64 inputs): the losses that consume them want the precision.
"""

from __future__ import annotations

import torch
from torch import nn

from repulse.models.positions import check_not_packed, positions_from_mask

DEFAULT_CHUNK = 512  # rows of [chunk, V] fp32 per step: 512 x 150k x 4 B = 300 MB
IGNORE_INDEX = -100


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _chunk(logits2d: torch.Tensor, start: int, end: int, temperature: float) -> torch.Tensor:
    x = logits2d[start:end].to(_compute_dtype(logits2d.dtype))
    return x / temperature if temperature != 1.0 else x


class _TokenLogProbs(torch.autograd.Function):
    """log softmax(logits / T)[label] per row; backward recomputes softmax per chunk."""

    @staticmethod
    def forward(ctx, logits2d, labels, chunk_size, temperature, ignore_index):  # type: ignore[override]
        n = logits2d.shape[0]
        ignored = (
            labels == ignore_index if ignore_index is not None else torch.zeros_like(labels, dtype=torch.bool)
        )
        safe = labels.masked_fill(ignored, 0)
        out = torch.empty(n, dtype=_compute_dtype(logits2d.dtype), device=logits2d.device)
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            logp = torch.log_softmax(_chunk(logits2d, s, e, temperature), dim=-1)
            out[s:e] = logp.gather(-1, safe[s:e, None]).squeeze(-1)
            del logp
        out.masked_fill_(ignored, 0.0)
        ctx.save_for_backward(logits2d, safe, ignored)
        ctx.chunk_size, ctx.temperature = chunk_size, temperature
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        logits2d, safe, ignored = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        chunk_size, temperature = ctx.chunk_size, ctx.temperature
        go = grad_out.masked_fill(ignored, 0.0).to(_compute_dtype(logits2d.dtype))
        grad = torch.empty_like(logits2d)
        for s in range(0, logits2d.shape[0], chunk_size):
            e = min(s + chunk_size, logits2d.shape[0])
            # d/dx log softmax(x/T)[y] = (onehot(y) - softmax(x/T)) / T
            g = torch.softmax(_chunk(logits2d, s, e, temperature), dim=-1)
            g.mul_(-go[s:e, None])
            g.scatter_add_(-1, safe[s:e, None], go[s:e, None])
            if temperature != 1.0:
                g.div_(temperature)
            grad[s:e] = g
            del g
        return grad, None, None, None, None


class _TokenEntropy(torch.autograd.Function):
    """Entropy of softmax(logits / T) per row; backward recomputes per chunk."""

    @staticmethod
    def forward(ctx, logits2d, chunk_size, temperature):  # type: ignore[override]
        n = logits2d.shape[0]
        out = torch.empty(n, dtype=_compute_dtype(logits2d.dtype), device=logits2d.device)
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            logp = torch.log_softmax(_chunk(logits2d, s, e, temperature), dim=-1)
            out[s:e] = -(logp.exp() * logp).sum(-1)
            del logp
        ctx.save_for_backward(logits2d, out)
        ctx.chunk_size, ctx.temperature = chunk_size, temperature
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        logits2d, entropy = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        chunk_size, temperature = ctx.chunk_size, ctx.temperature
        go = grad_out.to(entropy.dtype)
        grad = torch.empty_like(logits2d)
        for s in range(0, logits2d.shape[0], chunk_size):
            e = min(s + chunk_size, logits2d.shape[0])
            # dH/dx_j = -p_j (log p_j + H) / T
            logp = torch.log_softmax(_chunk(logits2d, s, e, temperature), dim=-1)
            p = logp.exp()
            g = logp.add_(entropy[s:e, None]).mul_(p).mul_(-go[s:e, None] / temperature)
            grad[s:e] = g
            del logp, p, g
        return grad, None, None


def _check(logits: torch.Tensor, chunk_size: int) -> None:
    if logits.dim() < 1:
        raise ValueError("logits need a vocabulary dimension")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def token_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK,
    temperature: float = 1.0,
    ignore_index: int | None = IGNORE_INDEX,
) -> torch.Tensor:
    """``log softmax(logits / temperature)`` gathered at ``labels``: ``[..., V], [...] -> [...]``.

    No alignment is done here: ``labels[b, t]`` is scored against ``logits[b, t]``.
    Positions whose label is ``ignore_index`` get 0 (and no gradient); ``None`` ignores nothing. Pass contiguous
    logits: a non-viewable tensor is copied once (in its own dtype) to flatten it.
    """
    _check(logits, chunk_size)
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels {tuple(labels.shape)} must match logits {tuple(logits.shape)} minus the vocab dim"
        )
    flat = logits.reshape(-1, logits.shape[-1])
    out = _TokenLogProbs.apply(
        flat, labels.reshape(-1).long(), int(chunk_size), float(temperature), ignore_index
    )
    return out.view(labels.shape)


def token_entropy(
    logits: torch.Tensor, chunk_size: int = DEFAULT_CHUNK, temperature: float = 1.0
) -> torch.Tensor:
    """Entropy of ``softmax(logits / temperature)`` per position: ``[..., V] -> [...]``, chunked."""
    _check(logits, chunk_size)
    flat = logits.reshape(-1, logits.shape[-1])
    return _TokenEntropy.apply(flat, int(chunk_size), float(temperature)).view(logits.shape[:-1])


def token_logprobs_from_model(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each next token under a causal LM: ``[B, T] -> [B, T-1]`` (fp32).

    Alignment: ``out[:, t] = log p(input_ids[:, t+1] | input_ids[:, :t+1])``, i.e. column
    t scores the token at position t+1; a loss mask over tokens is used as ``mask[:, 1:]``.

    Padding: with an ``attention_mask`` and no ``position_ids``, positions count only
    attended tokens (as ``generate`` does), so left padding does not shift them. Values at
    padded positions are meaningless; mask them.

    Packing: pass ``position_ids`` restarting at 0 for each sample and no
    ``attention_mask``; transformers 5.x then builds a block-diagonal
    causal mask from the position ids for eager/sdpa/flex (flash-attention derives
    varlen boundaries from them), so samples do not see each other. The column where one sample
    ends and the next begins scores the next sample's first token given the previous
    sample: mask it. The cache is switched off for this call because transformers only
    looks for packed sequences when there is no KV cache.

    ``return_entropy`` adds the per-position entropy of the same distributions
    ``[B, T-1]`` computed from the same logits.
    """
    if position_ids is None and attention_mask is not None:
        position_ids = positions_from_mask(attention_mask)
    elif position_ids is not None and attention_mask is not None:
        check_not_packed(position_ids, attention_mask)
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    )
    logits = out.logits if hasattr(out, "logits") else out[0]
    # Score the whole (contiguous) logits tensor against inputs shifted left by one and
    # drop the last column, rather than slicing logits[:, :-1] (a copy to flatten).
    labels = torch.roll(input_ids, shifts=-1, dims=1)
    logp = token_logprobs(logits, labels, chunk_size=chunk_size, temperature=temperature, ignore_index=None)
    if not return_entropy:
        return logp[:, :-1]
    ent = token_entropy(logits, chunk_size=chunk_size, temperature=temperature)
    return logp[:, :-1], ent[:, :-1]
