"""Chunked log-probs / entropy: exact equality with the naive formula, gradients, memory, alignment, packing."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from repulse.models.logprobs import token_entropy, token_logprobs, token_logprobs_from_model


def naive_logprobs(logits, labels):
    return torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None]).squeeze(-1)


def naive_entropy(logits):
    logp = torch.log_softmax(logits.float(), -1)
    return -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 10_000])
def test_chunked_equals_log_softmax_exactly_in_fp32(chunk):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 11, 50, generator=g) * 4
    labels = torch.randint(0, 50, (3, 11), generator=g)
    out = token_logprobs(logits, labels, chunk_size=chunk)
    assert out.dtype == torch.float32 and out.shape == (3, 11)
    assert torch.equal(out, naive_logprobs(logits, labels))


def test_bf16_input_matches_upcast_reference():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 9, 40, generator=g) * 3).to(torch.bfloat16)
    labels = torch.randint(0, 40, (2, 9), generator=g)
    out = token_logprobs(logits, labels, chunk_size=4)
    assert out.dtype == torch.float32
    # the upcast of bf16 is exact, so this is exact too ...
    assert torch.equal(out, naive_logprobs(logits, labels))
    # ... and close to a computation done entirely in bf16
    low = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1).float()
    torch.testing.assert_close(out, low, atol=0.1, rtol=0.02)


def test_temperature_and_ignore_index():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 30, generator=g)
    labels = torch.randint(0, 30, (2, 5), generator=g)
    out = token_logprobs(logits, labels, chunk_size=3, temperature=0.7)
    torch.testing.assert_close(out, naive_logprobs(logits / 0.7, labels))
    labels[0, 1] = -100
    out = token_logprobs(logits, labels, chunk_size=3)
    assert out[0, 1] == 0
    keep = labels != -100
    assert torch.equal(out[keep], naive_logprobs(logits, labels.clamp(min=0))[keep])


def test_gradients_match_autograd_of_the_naive_formula():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(2, 6, 25, generator=g)
    labels = torch.randint(0, 25, (2, 6), generator=g)
    labels[1, 2] = -100
    weights = torch.randn(2, 6, generator=g)
    keep = (labels != -100).float()

    a = base.clone().requires_grad_(True)
    (token_logprobs(a, labels, chunk_size=5, temperature=1.3) * weights).sum().backward()
    b = base.clone().requires_grad_(True)
    (naive_logprobs(b / 1.3, labels.clamp(min=0)) * weights * keep).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5)

    c = base.clone().requires_grad_(True)
    (token_entropy(c, chunk_size=4, temperature=0.8) * weights).sum().backward()
    d = base.clone().requires_grad_(True)
    (naive_entropy(d / 0.8) * weights).sum().backward()
    torch.testing.assert_close(c.grad, d.grad, atol=1e-6, rtol=1e-5)


def test_gradcheck_in_float64():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(7, 6, dtype=torch.float64, generator=g, requires_grad=True)
    labels = torch.randint(0, 6, (7,), generator=g)
    assert torch.autograd.gradcheck(
        lambda x: token_logprobs(x, labels, chunk_size=3, temperature=0.9), (logits,)
    )
    assert torch.autograd.gradcheck(lambda x: token_entropy(x, chunk_size=2, temperature=1.1), (logits,))


def test_entropy_equals_naive():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 4, 33, generator=g) * 2
    torch.testing.assert_close(
        token_entropy(logits, chunk_size=5), naive_entropy(logits), atol=1e-6, rtol=1e-6
    )
    bf = logits.to(torch.bfloat16)
    torch.testing.assert_close(token_entropy(bf, chunk_size=5), naive_entropy(bf), atol=1e-6, rtol=1e-6)


class _Allocations(TorchDispatchMode):
    """Records the size and dtype of every tensor an aten op produces."""

    def __init__(self):
        super().__init__()
        self.sizes: list[tuple[int, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.sizes.append((t.numel(), t.dtype))
        return out

    def largest(self, dtype: torch.dtype) -> int:
        return max((n for n, d in self.sizes if d == dtype), default=0)


@pytest.mark.parametrize("fn", ["logprobs", "entropy"])
def test_no_full_vocab_fp32_tensor_in_forward_or_backward(fn):
    """The only full-size tensor is the bf16 gradient; every fp32 temporary is chunk-sized."""
    n_rows, vocab, chunk = 64, 300, 8
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(n_rows, vocab, generator=g).to(torch.bfloat16).requires_grad_(True)
    labels = torch.randint(0, vocab, (n_rows,), generator=g)

    def run(f):
        out = f()
        out.sum().backward()

    chunked = _Allocations()
    with chunked:
        if fn == "logprobs":
            run(lambda: token_logprobs(logits, labels, chunk_size=chunk))
        else:
            run(lambda: token_entropy(logits, chunk_size=chunk))
    assert 0 < chunked.largest(torch.float32) <= chunk * vocab
    assert chunked.largest(torch.bfloat16) == n_rows * vocab  # the gradient of the logits

    # the instrument does see a naive implementation's full-size fp32 copy
    logits.grad = None
    naive = _Allocations()
    with naive:
        if fn == "logprobs":
            run(lambda: naive_logprobs(logits, labels))
        else:
            run(lambda: naive_entropy(logits))
    assert naive.largest(torch.float32) == n_rows * vocab


# --------------------------------------------------------------------------- from a model


def _model(tiny, attn="sdpa"):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny.config(attn_implementation=attn)).eval()


def test_from_model_alignment(tiny):
    model = _model(tiny)
    ids = tiny.batch(2, 9)
    with torch.no_grad():
        out = token_logprobs_from_model(model, ids)
        logits = model(ids).logits
    assert out.shape == (2, 8)
    expected = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    assert torch.equal(out, expected)
    with torch.no_grad():
        lp, ent = token_logprobs_from_model(model, ids, temperature=2.0, return_entropy=True)
    torch.testing.assert_close(
        lp, torch.log_softmax(logits[:, :-1] / 2.0, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    )
    torch.testing.assert_close(ent, naive_entropy(logits[:, :-1] / 2.0))


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_does_not_change_logprobs(tiny, side):
    model = _model(tiny)
    rows = [tiny.batch(1, 7, seed=1)[0], tiny.batch(1, 4, seed=2)[0]]
    ids, mask = tiny.pad(rows, side)
    with torch.no_grad():
        batched = token_logprobs_from_model(model, ids, mask)
        for i, r in enumerate(rows):
            alone = token_logprobs_from_model(model, r[None])[0]
            valid = mask[i, 1:].bool() & mask[i, :-1].bool()
            torch.testing.assert_close(batched[i][valid], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_equal_separate_sequences(tiny, attn):
    """Two samples in one row, position_ids restarting at 0, no attention_mask."""
    model = _model(tiny, attn)
    a, b = tiny.batch(1, 6, seed=3)[0], tiny.batch(1, 5, seed=4)[0]
    packed = torch.cat([a, b])[None]
    position_ids = torch.cat([torch.arange(len(a)), torch.arange(len(b))])[None]
    with torch.no_grad():
        lp = token_logprobs_from_model(model, packed, position_ids=position_ids)[0]
        lp_a = token_logprobs_from_model(model, a[None])[0]
        lp_b = token_logprobs_from_model(model, b[None])[0]
    # column len(a)-1 scores b's first token after a: it straddles the boundary, so is masked
    torch.testing.assert_close(lp[: len(a) - 1], lp_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lp[len(a) :], lp_b, atol=1e-5, rtol=1e-5)
    # sanity: without position_ids the second sample does see the first one
    with torch.no_grad():
        leaky = token_logprobs_from_model(model, packed)[0]
    assert not torch.allclose(leaky[len(a) :], lp_b, atol=1e-3)


def test_packed_rows_are_separated_even_if_the_config_enables_the_cache(tiny):
    """transformers only detects packing without a KV cache; we always switch it off."""
    model = _model(tiny)
    model.config.use_cache = True
    a, b = tiny.batch(1, 4, seed=5)[0], tiny.batch(1, 4, seed=6)[0]
    packed = torch.cat([a, b])[None]
    position_ids = torch.cat([torch.arange(4), torch.arange(4)])[None]
    with torch.no_grad():
        lp = token_logprobs_from_model(model, packed, position_ids=position_ids)[0]
        lp_b = token_logprobs_from_model(model, b[None])[0]
    torch.testing.assert_close(lp[4:], lp_b, atol=1e-5, rtol=1e-5)


def test_packed_rows_with_an_attention_mask_are_refused(tiny):
    model = _model(tiny)
    ids = tiny.batch(1, 6)
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 2]])
    with pytest.raises(ValueError, match="without attention_mask"):
        token_logprobs_from_model(model, ids, torch.ones_like(ids), position_ids)
    # monotone positions with a mask are fine
    token_logprobs_from_model(model, ids, torch.ones_like(ids), torch.arange(6)[None])
