"""Rollout backends: turn prompts into sampled responses with token-level boundaries.

Prompt/response boundaries are kept as token indices (left-padded prompts of width
``prompt_len`` followed by the response), never found again by splitting strings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from repulse.errors import UserError


@dataclass
class Samples:
    """A batch of generated sequences.

    ``sequences`` = [left-padded prompt | response (right-padded)], shape [B, P + T].
    ``attention_mask`` covers real prompt and response tokens; ``action_mask`` [B, T]
    marks the response tokens that are actions (up to and including EOS).
    ``prompt_index`` maps each row to its prompt (rows of one prompt are consecutive).
    """

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    prompt_len: int
    prompt_index: torch.Tensor
    truncated: torch.Tensor  # [B] bool: hit max_new_tokens without EOS
    logprobs: torch.Tensor | None = None  # [B, T] the sampler's per-token log-probs (0 off actions)

    @property
    def response(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_len :]

    @property
    def response_length(self) -> torch.Tensor:
        return self.action_mask.sum(-1)

    def to(self, device) -> Samples:
        lp = self.logprobs.to(device) if self.logprobs is not None else None
        return Samples(
            self.sequences.to(device),
            self.attention_mask.to(device),
            self.action_mask.to(device),
            self.prompt_len,
            self.prompt_index.to(device),
            self.truncated.to(device),
            lp,
        )

    def select(self, rows: torch.Tensor | list[int]) -> Samples:
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.sequences.device)
        return Samples(
            self.sequences[rows],
            self.attention_mask[rows],
            self.action_mask[rows],
            self.prompt_len,
            self.prompt_index[rows],
            self.truncated[rows],
            self.logprobs[rows.to(self.logprobs.device)] if self.logprobs is not None else None,
        )


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
    return ids, mask


def response_mask(
    response: torch.Tensor, eos_id: int | None, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of action tokens: everything up to and including the first EOS.

    Returns (mask [B, T], truncated [B]) where truncated means no EOS was produced.
    """
    if eos_id is None:
        mask = torch.ones_like(response, dtype=torch.long)
        return mask, torch.ones(response.shape[0], dtype=torch.bool, device=response.device)
    is_eos = response == eos_id
    # position of first EOS (T if none); positions <= first EOS are actions
    t = torch.arange(response.shape[1], device=response.device).expand_as(response)
    first = torch.where(is_eos, t, torch.full_like(t, response.shape[1])).min(-1).values
    mask = (t <= first.unsqueeze(-1)).long()
    return mask, first >= response.shape[1]


def _synced() -> bool:
    """Sharded engines (FSDP2, ZeRO-3) gather weights in every forward: ranks must step together."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row from ``logits`` [B, V]; return (token [B], its log-prob [B]).

    The log-prob is that of the token under softmax(logits / temperature), the distribution the
    training forward evaluates (top-k / top-p only restrict which tokens can be drawn).
    ``temperature == 0``: greedy, log-prob under softmax(logits). ``top_k`` 0 = off, ``top_p``
    1 = off; ties in top-p keep every token at the cut-off probability's cumulative mass.
    """
    logits = logits.float()
    if temperature <= 0:
        tok = logits.argmax(-1)
        return tok, torch.log_softmax(logits, -1).gather(-1, tok[:, None]).squeeze(-1)
    logp = torch.log_softmax(logits / temperature, -1)
    masked = logp
    if 0 < top_k < logp.shape[-1]:
        kth = torch.topk(logp, top_k, dim=-1).values[:, -1:]
        masked = masked.masked_fill(masked < kth, -math.inf)
    if top_p < 1.0:
        sorted_lp, order = torch.sort(masked, dim=-1, descending=True)
        probs = sorted_lp.exp()
        before = probs.cumsum(-1) - probs  # mass of the tokens ranked above each one
        drop_sorted = before >= top_p  # keep the smallest prefix whose mass reaches top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        masked = masked.masked_fill(drop, -math.inf)
    tok = torch.multinomial(torch.softmax(masked, -1), 1).squeeze(-1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


@torch.no_grad()
def _decode(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    eos_id: int | None,
    pad_id: int,
    synced: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KV-cached sampling of ``n`` responses for each of the P left-padded prompts ``ids`` [P, L].

    The prompt is run once (prefill) and its cache repeated n times (the n samples of a prompt
    share it), then one token per step for every row. Returns (response [P·n, T], per-token
    log-probs [P·n, T]); rows after their EOS hold ``pad_id`` and 0. With ``synced``, every
    process steps until all processes' rows are done (sharded weights are gathered per forward).
    """
    from transformers import DynamicCache

    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    prefill = dict(
        input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=DynamicCache(), use_cache=True
    )
    try:  # only the last position's logits are needed
        out = model(**prefill, logits_to_keep=1)
    except TypeError:  # a model class without logits_to_keep
        prefill["past_key_values"] = DynamicCache()
        out = model(**prefill)
    cache = out.past_key_values
    logits = out.logits[:, -1].repeat_interleave(n, 0)
    if n > 1:
        cache.batch_repeat_interleave(n)
    mask = mask.repeat_interleave(n, 0)
    next_pos = pos[:, -1:].repeat_interleave(n, 0) + 1
    rows = ids.shape[0] * n
    done = torch.zeros(rows, dtype=torch.bool, device=ids.device)
    tokens, logps = [], []
    for t in range(max_new_tokens):
        tok, lp = sample_next(logits, temperature, top_p, top_k)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        tokens.append(tok)
        logps.append(torch.where(done, torch.zeros_like(lp), lp))
        if eos_id is not None:
            done = done | (tok == eos_id)
        unfinished = torch.tensor([float(not bool(done.all()))], device=ids.device)
        if synced:
            torch.distributed.all_reduce(unfinished, op=torch.distributed.ReduceOp.MAX)
        if t + 1 == max_new_tokens or unfinished.item() == 0:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(
            input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos, past_key_values=cache,
            use_cache=True,
        )  # fmt: skip
        cache = out.past_key_values
        logits = out.logits[:, -1]
        next_pos = next_pos + 1
    return torch.stack(tokens, 1), torch.stack(logps, 1)


@torch.no_grad()
def hf_generate(
    model: torch.nn.Module,
    prompts: list[list[int]],
    *,
    n_samples: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    eos_id: int | None,
    pad_id: int,
    micro_batch_size: int,
    device: torch.device,
) -> Samples:
    """Sample ``n_samples`` responses per prompt from an HF causal LM (KV cache), dropout off.

    Rows of one prompt are consecutive, which the group estimators (RLOO, GRPO, CTL) rely on;
    each prompt is prefilled once for its n samples. ``micro_batch_size`` bounds the rows of
    one decoding batch (whole prompt groups, at least one). ``temperature == 0`` means greedy.
    ``Samples.logprobs`` are the sampler's per-token log-probs (see ``sample_next``).
    """
    if max_new_tokens <= 0:
        raise UserError(
            "--rollout.max_new_tokens must be positive (or leave it unset to use --data.max_len)."
        )
    was_training = model.training
    model.eval()
    prompt_index = torch.arange(len(prompts)).repeat_interleave(n_samples)
    ids, mask = left_pad(prompts, pad_id)
    per_chunk = max(1, micro_batch_size // n_samples)
    synced = _synced()
    chunks, chunk_logps = [], []
    n_chunks = -(-len(prompts) // per_chunk)
    if synced:  # every process runs as many decoding batches as the one with the most prompts
        count = torch.tensor([float(n_chunks)], device=device)
        torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
        n_chunks_all = int(count.item())
    else:
        n_chunks_all = n_chunks
    for c in range(n_chunks_all):
        sl = slice(c * per_chunk, (c + 1) * per_chunk) if c < n_chunks else slice(0, 1)  # a dropped copy
        resp, lps = _decode(
            model, ids[sl].to(device), mask[sl].to(device), n_samples, max_new_tokens, temperature, top_p,
            top_k, eos_id, pad_id, synced,
        )  # fmt: skip
        if c < n_chunks:
            chunks.append(resp.cpu())
            chunk_logps.append(lps.float().cpu())
    if was_training:
        model.train()
    width = max(c.shape[1] for c in chunks)
    response = torch.cat([torch.nn.functional.pad(c, (0, width - c.shape[1]), value=pad_id) for c in chunks])
    logprobs = torch.cat([torch.nn.functional.pad(c, (0, width - c.shape[1])) for c in chunk_logps])
    action_mask, truncated = response_mask(response, eos_id, pad_id)
    response = torch.where(action_mask.bool(), response, torch.full_like(response, pad_id))
    ids, mask = ids.repeat_interleave(n_samples, 0), mask.repeat_interleave(n_samples, 0)
    sequences = torch.cat([ids, response], dim=1)
    attention = torch.cat([mask, action_mask], dim=1)
    return Samples(
        sequences, attention, action_mask, ids.shape[1], prompt_index, truncated, logprobs * action_mask
    )
