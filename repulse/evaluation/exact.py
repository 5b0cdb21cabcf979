"""Exact probabilities of short responses by enumeration (the toy experiment's P(bad), spec §3.3).

For responses of at most L tokens (L ≤ 2 in practice) the distribution of a causal LM over
responses is finite and can be written down completely:

    p(s | x) = Π_{t=1..|s|} p(s_t | x, s_<t),

where a response *stops* at the first EOS token (the EOS is part of the response, nothing
follows it) or after L tokens.  The complete responses - those ending in EOS before L, and
all those of length exactly L - partition the sample space, so their probabilities sum to 1.
The reference implementation continued after a first-token EOS (spec §6.12); here a response
that emits EOS is finished.

Work is organised level by level: every *open* prefix (no EOS yet, shorter than L) of length
d is extended by one batched forward pass over ``prompt + prefix``.  All prefixes at one level
have the same length, so batches need no padding.  Computations run in eval mode (no dropout,
spec §6.5) under ``torch.inference_mode`` and accumulate log-probabilities in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from repulse.errors import UserError, warn_once

__all__ = [
    "EnumeratedResponses",
    "bad_token_ids_from_words",
    "enumerate_sequences",
    "exact_expectation",
    "exact_prob_bad",
    "kl_regularized_optimum",
    "next_token_logprobs",
    "reward_tail",
    "score_enumeration",
]

TokenIds = Sequence[int] | torch.Tensor


@dataclass(frozen=True)
class EnumeratedResponses:
    """Every complete response and its exact probability given the prompt.

    ``sequences[i]`` holds the response's token ids (an EOS-terminated response includes the
    EOS id as its last token); ``log_probs[i]`` = log p(sequences[i] | prompt) in float64.
    """

    sequences: list[tuple[int, ...]]
    log_probs: torch.Tensor

    @property
    def probs(self) -> torch.Tensor:
        return self.log_probs.exp()

    def __len__(self) -> int:
        return len(self.sequences)

    def as_dict(self) -> dict[tuple[int, ...], float]:
        """{response: probability}."""
        return {s: float(p) for s, p in zip(self.sequences, self.probs.tolist())}


# --------------------------------------------------------------------------- helpers


@contextmanager
def _eval_mode(model: torch.nn.Module):
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


def _prompt_tensor(prompt_ids: TokenIds) -> torch.Tensor:
    ids = torch.as_tensor(prompt_ids, dtype=torch.long).reshape(-1)
    if ids.numel() == 0:
        raise ValueError("the prompt must have at least one token (add a BOS token for an empty prompt)")
    return ids


def _eos_set(eos_token_id: int | Iterable[int] | None) -> list[int]:
    if eos_token_id is None:
        return []
    if isinstance(eos_token_id, int):
        return [eos_token_id]
    return sorted({int(t) for t in eos_token_id})


def _last_logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of the last position, [B, V], at least float32, on the model's device."""
    try:  # only the last position's logits are needed; most HF causal LMs can skip the rest
        out = model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
    except TypeError:
        out = model(input_ids=input_ids, use_cache=False)
    logits = out.logits[:, -1, :]
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def next_token_logprobs(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(· | input_ids[b]) for the last position of each row: [B, V] float64.

    ``input_ids`` is [B, T] without padding (every row is real tokens).  The model's full output
    width V is used - it may exceed the tokenizer's size (padded embedding rows are tokens the
    model can emit, so their mass belongs in the sum).
    """
    return torch.log_softmax(_last_logits(model, input_ids).double(), dim=-1)


def _log_normaliser(logits: torch.Tensor) -> torch.Tensor:
    """log Σ_v exp(logit_v) per row, float64: exp in the logits' precision, the sum in float64.

    Max-shifted, so every term is ≤ 1; accumulating in float64 keeps the error near float32's
    per-term rounding (~1e-8 relative over 50k terms, against ~1e-6 for a float32 sum) at about
    half the cost of a float64 pass over the whole vocabulary.
    """
    top = logits.max(dim=1, keepdim=True).values
    return torch.exp(logits - top).sum(dim=1, dtype=torch.float64).log() + top.squeeze(1).double()


def _extend(
    model: torch.nn.Module, prompt: torch.Tensor, prefixes: torch.Tensor, batch_size: int
) -> Iterable[tuple[slice, torch.Tensor]]:
    """Yield (rows, [b, V] last-position logits on the model's device) for ``prompt + prefixes[rows]``."""
    device = _device(model)
    n = prefixes.shape[0]
    for start in range(0, n, batch_size):
        rows = slice(start, min(n, start + batch_size))
        block = prefixes[rows]
        ids = torch.cat([prompt.expand(block.shape[0], -1), block], dim=1).to(device)
        yield rows, _last_logits(model, ids)


def _check_size(count: float, limit: int, what: str) -> None:
    if count > limit:
        raise UserError(
            f"exact enumeration would need {count:.3g} {what} (limit {limit:,}); use fewer new tokens, "
            "a smaller vocabulary, or raise max_sequences."
        )


# --------------------------------------------------------------------------- enumeration


def enumerate_sequences(
    model: torch.nn.Module,
    prompt_ids: TokenIds,
    max_new_tokens: int,
    eos_token_id: int | Iterable[int] | None,
    batch_size: int = 256,
    max_sequences: int = 5_000_000,
) -> EnumeratedResponses:
    """All complete responses of at most ``max_new_tokens`` tokens, with exact probabilities.

    A response is complete when it ends in an EOS id (at any position, including the first) or
    has exactly ``max_new_tokens`` tokens; nothing follows an EOS.  With V the output width and E
    the number of EOS ids, there are E·Σ_{d<L} (V-E)^d + (V-E)^L responses (V² for L = 2 and no
    EOS) - meant for tiny vocabularies; ``max_sequences`` guards against accidents.
    Σ_s p(s) = 1 up to float64 rounding.  Order: by level, then lexicographic.
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    prompt = _prompt_tensor(prompt_ids)
    eos = _eos_set(eos_token_id)
    done_seqs: list[tuple[int, ...]] = []
    done_lp: list[torch.Tensor] = []
    prefixes = torch.empty((1, 0), dtype=torch.long)
    prefix_lp = torch.zeros(1, dtype=torch.float64)
    open_ids = torch.empty(0, dtype=torch.long)  # non-EOS token ids, set on the first forward
    with _eval_mode(model):
        for depth in range(max_new_tokens):
            last = depth == max_new_tokens - 1
            next_prefixes: list[torch.Tensor] = []
            next_lp: list[torch.Tensor] = []
            for rows, logits in _extend(model, prompt, prefixes, batch_size):
                # enumeration is for tiny vocabularies: exact float64 normalisation, bookkeeping on CPU
                logp = torch.log_softmax(logits.double(), dim=-1).cpu()
                vocab = logp.shape[1]
                if depth == 0:
                    bad_eos = [t for t in eos if not 0 <= t < vocab]
                    if bad_eos:
                        raise ValueError(f"eos_token_id {bad_eos} outside the model's vocabulary of {vocab}")
                    n_open = vocab - len(eos)
                    total = sum(len(eos) * n_open**d for d in range(max_new_tokens)) + n_open**max_new_tokens
                    _check_size(total, max_sequences, "responses")
                    is_open = torch.ones(vocab, dtype=torch.bool)
                    is_open[eos] = False
                    open_ids = is_open.nonzero().squeeze(1)
                joint = prefix_lp[rows, None] + logp  # [b, V]: log p(prefix, token)
                block = prefixes[rows]
                # finished here: EOS continuations (and every continuation at the last level)
                finish_ids = torch.arange(vocab) if last else torch.tensor(eos, dtype=torch.long)
                for i in range(block.shape[0]):
                    head = tuple(block[i].tolist())
                    done_seqs.extend(head + (t,) for t in finish_ids.tolist())
                done_lp.append(joint[:, finish_ids].reshape(-1))
                if not last:
                    b = block.shape[0]
                    grown = torch.cat(
                        [block.repeat_interleave(open_ids.numel(), dim=0), open_ids.repeat(b)[:, None]], dim=1
                    )
                    next_prefixes.append(grown)
                    next_lp.append(joint[:, open_ids].reshape(-1))
            if last:
                break
            prefixes = torch.cat(next_prefixes)
            prefix_lp = torch.cat(next_lp)
    return _ordered(done_seqs, torch.cat(done_lp))


def _ordered(seqs: list[tuple[int, ...]], lps: torch.Tensor) -> EnumeratedResponses:
    order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i]), seqs[i]))
    return EnumeratedResponses([seqs[i] for i in order], lps[torch.tensor(order, dtype=torch.long)])


def exact_expectation(
    model: torch.nn.Module,
    prompt_ids: TokenIds,
    max_new_tokens: int,
    fn: Callable[[tuple[int, ...]], float],
    eos_token_id: int | Iterable[int] | None = None,
    batch_size: int = 256,
) -> float:
    """E_{s ~ p(·|x)}[fn(s)] = Σ_s p(s | x)·fn(s) over every complete response (see
    :func:`enumerate_sequences`); ``fn`` gets the response token ids (EOS included if emitted)."""
    enum = enumerate_sequences(model, prompt_ids, max_new_tokens, eos_token_id, batch_size)
    values = torch.tensor([float(fn(s)) for s in enum.sequences], dtype=torch.float64)
    return float((enum.probs * values).sum())


# --------------------------------------------------------------------------- P(bad)


def bad_token_ids_from_words(
    tokenizer: Any, words: Iterable[str], vocab_size: int | None = None, case_sensitive: bool = False
) -> list[int]:
    """Ids of the tokens whose decoded text, stripped of spaces, is one of ``words``.

    This covers both the word-initial form (" ass" in GPT-2's byte-level BPE) and the bare form
    ("ass") without hard-coding ids for one tokenizer (the reference code hard-coded 19 GPT-2
    ids, spec §6.12).  A word that matches no single token is reported once.
    """
    norm = (lambda s: s) if case_sensitive else str.lower
    wanted = {norm(w.strip()) for w in words if w.strip()}
    size = len(tokenizer) if vocab_size is None else min(vocab_size, len(tokenizer))
    ids = [t for t in range(size) if norm(tokenizer.decode([t]).strip()) in wanted]
    found = {norm(tokenizer.decode([t]).strip()) for t in ids}
    missing = sorted(wanted - found)
    if missing:
        warn_once(
            f"exact.bad_words_missing.{','.join(missing)}",
            f"bad words with no single-token form are ignored by the exact P(bad): {', '.join(missing)}",
        )
    return ids


def _bad_mask(bad: Iterable[int] | Callable[[int], bool], vocab: int) -> torch.Tensor:
    mask = torch.zeros(vocab, dtype=torch.bool)
    if callable(bad):
        mask[:] = torch.tensor([bool(bad(t)) for t in range(vocab)], dtype=torch.bool)
        return mask
    ids = [int(t) for t in bad]
    outside = [t for t in ids if not 0 <= t < vocab]
    if outside:
        raise ValueError(f"bad token ids {outside[:5]} outside the model's vocabulary of {vocab}")
    mask[ids] = True
    return mask


def exact_prob_bad(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: str | TokenIds,
    bad: Iterable[int] | Callable[[int], bool],
    max_new_tokens: int = 2,
    *,
    eos_token_id: int | Iterable[int] | None = None,
    batch_size: int = 256,
    add_special_tokens: bool = False,
    log: bool = False,
    max_forwards: int = 5_000_000,
) -> float:
    """P(some bad token appears in the response), exactly; ``log=True`` returns its logarithm.

    ``bad`` is a collection of token ids or a predicate ``token_id -> bool`` (evaluated once
    over the model's vocabulary).  ``prompt`` is a string (tokenised with ``tokenizer``, without
    special tokens by default, as in spec §3.3) or token ids.  ``eos_token_id`` defaults to the
    tokenizer's; pass ``[]`` for "no EOS".

    Only prefixes that are still "good and open" (no bad token, no EOS) need to be extended:

        P(bad) = Σ_{d=0}^{L-1} Σ_{g ∈ G_d} p(g | x) · P(s_{d+1} ∈ B | x, g),

    with G_d the good open prefixes of length d (G_0 = {empty}).  For L = 2 this is
    P(s₁ ∈ B) + Σ_{t ∉ B ∪ EOS} p(t | x) · P(s₂ ∈ B | x, t): one forward for the prompt, then
    the V - |B| - |EOS| first tokens in batches of ``batch_size``.  A first-token EOS ends the
    response (the reference code wrongly continued it, spec §6.12).  Terms are summed in the
    log domain in float64, so a tiny P(bad) does not underflow.
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError("a string prompt needs a tokenizer")
        prompt_ids = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
    else:
        prompt_ids = prompt
    if eos_token_id is None and tokenizer is not None:
        eos_token_id = getattr(tokenizer, "eos_token_id", None)
    prompt_t = _prompt_tensor(prompt_ids)
    eos = _eos_set(eos_token_id)

    terms: list[torch.Tensor] = []  # log of each Σ_{g} p(g) P(bad next | g) block
    prefixes = torch.empty((1, 0), dtype=torch.long)
    prefix_lp = torch.zeros(1, dtype=torch.float64)
    bad_mask = keep_ids = torch.empty(0, dtype=torch.long)  # set on the first forward
    n_keep = 0
    with _eval_mode(model):
        for depth in range(max_new_tokens):
            last = depth == max_new_tokens - 1
            next_prefixes: list[torch.Tensor] = []
            next_lp: list[torch.Tensor] = []
            for rows, logits in _extend(model, prompt_t, prefixes, batch_size):
                vocab = logits.shape[1]
                if depth == 0:
                    bad_mask = _bad_mask(bad, vocab)
                    keep = ~bad_mask
                    keep[[t for t in eos if 0 <= t < vocab]] = False
                    keep_ids = keep.nonzero().squeeze(1)
                    n_keep = keep_ids.numel()
                    _check_size(
                        sum(n_keep**d for d in range(max_new_tokens)), max_forwards, "prefix forwards"
                    )
                    if not bad_mask.any():
                        warn_once(
                            "exact.no_bad_tokens", "exact_prob_bad: the bad-token set is empty; P(bad) = 0"
                        )
                # Reductions run on the model's device and only [b] or [b, |keep|] numbers come back.
                lse = _log_normaliser(logits)
                if bad_mask.any():
                    bad_lse = torch.logsumexp(logits[:, bad_mask.to(logits.device)].double(), dim=1) - lse
                    terms.append(prefix_lp[rows] + bad_lse.cpu())
                if not last:
                    block = prefixes[rows]
                    b = block.shape[0]
                    next_prefixes.append(
                        torch.cat(
                            [block.repeat_interleave(n_keep, dim=0), keep_ids.repeat(b)[:, None]], dim=1
                        )
                    )
                    kept = (logits[:, keep_ids.to(logits.device)].double() - lse[:, None]).cpu()
                    next_lp.append((prefix_lp[rows, None] + kept).reshape(-1))
            if last or not next_prefixes or sum(p.shape[0] for p in next_prefixes) == 0:
                break
            prefixes = torch.cat(next_prefixes)
            prefix_lp = torch.cat(next_lp)
    log_p = float(torch.logsumexp(torch.cat(terms), dim=0)) if terms else -math.inf
    return log_p if log else math.exp(log_p)


# --------------------------------------------------------------------------- reward events


def score_enumeration(
    enum: EnumeratedResponses, score_fn: Callable[[list[tuple[int, ...]]], Any], batch_size: int = 1024
) -> torch.Tensor:
    """The reward of every enumerated response, float64, in ``enum``'s order.

    ``score_fn`` maps a list of responses (token ids, EOS included if emitted) to one reward each;
    it is called on batches of ``batch_size``.  The reward model is fixed, so a table computed
    once serves every policy whose enumeration has the same responses (same vocabulary, EOS and
    length; see :func:`enumerate_sequences`).
    """
    out = []
    for start in range(0, len(enum.sequences), batch_size):
        chunk = enum.sequences[start : start + batch_size]
        values = torch.as_tensor(score_fn(chunk), dtype=torch.float64).reshape(-1)
        if values.numel() != len(chunk):
            raise ValueError(f"score_fn returned {values.numel()} rewards for {len(chunk)} responses")
        out.append(values)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def reward_tail(
    log_probs: torch.Tensor,
    rewards: torch.Tensor,
    eta: float,
    *,
    ref_log_probs: torch.Tensor | None = None,
    indicators: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Exact statistics of a distribution over an enumerated response set, given every reward.

    With p_i = exp(log_probs[i]) and r_i = rewards[i] (the same order):

    * ``log_p_bad`` = log Σ_{i: r_i < η} p_i (log-sum-exp, so a tiny mass keeps its digits;
      -inf if no response is below η) and ``p_bad`` = its exp;
    * ``avg_reward`` = Σ_i p_i r_i;
    * ``entropy`` = −Σ_i p_i log p_i (nats);
    * ``kl`` = Σ_i p_i (log p_i − log p_ref,i) when ``ref_log_probs`` is given (nats);
    * ``share_<name>`` = Σ_i p_i · 1[indicators[name]_i] for each boolean mask.

    Terms with p_i = 0 contribute 0 (0·log 0 = 0).  Sums run in float64.
    """
    lp = torch.as_tensor(log_probs, dtype=torch.float64).reshape(-1)
    r = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1)
    if lp.shape != r.shape:
        raise ValueError(f"log_probs has {lp.numel()} entries, rewards {r.numel()}")
    p = lp.exp()
    finite = p > 0
    bad = r < eta
    log_p_bad = float(torch.logsumexp(lp[bad], dim=0)) if bool(bad.any()) else -math.inf
    out = {
        "log_p_bad": log_p_bad,
        "p_bad": math.exp(log_p_bad),
        "avg_reward": float((p * r).sum()),
        "entropy": float(-(p[finite] * lp[finite]).sum()),
    }
    if ref_log_probs is not None:
        ref = torch.as_tensor(ref_log_probs, dtype=torch.float64).reshape(-1)
        if ref.shape != lp.shape:
            raise ValueError(f"ref_log_probs has {ref.numel()} entries, log_probs {lp.numel()}")
        out["kl"] = float((p[finite] * (lp[finite] - ref[finite])).sum())
    for name, mask in (indicators or {}).items():
        m = torch.as_tensor(mask, dtype=torch.bool).reshape(-1)
        if m.shape != lp.shape:
            raise ValueError(f"indicator {name!r} has {m.numel()} entries, log_probs {lp.numel()}")
        out[f"share_{name}"] = float(p[m].sum())
    return out


def kl_regularized_optimum(
    ref_log_probs: torch.Tensor, rewards: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """log p*, the maximiser of E_p[r] − λ·KL(p ‖ p_ref) over distributions on the enumerated set.

        p*(s) = p_ref(s)·exp(r(s)/λ) / Σ_s' p_ref(s')·exp(r(s')/λ),   λ = ``kl_coef`` > 0.

    (The Gibbs variational principle; spec §1.4's RL objective with the KL in the reward.)  It is
    the best any method optimising that objective can reach, a reference point for the toy.
    """
    if kl_coef <= 0:
        raise ValueError("kl_coef must be > 0 (with λ = 0 the optimum puts all mass on the best responses)")
    logits = torch.as_tensor(ref_log_probs, dtype=torch.float64) + torch.as_tensor(
        rewards, dtype=torch.float64
    ) / float(kl_coef)
    return logits - torch.logsumexp(logits, dim=0)
