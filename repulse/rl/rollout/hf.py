"""The ``hf`` rollout backend: our KV-cached sampler over an HF causal LM, in this process.

One prefill per prompt, shared by its n samples; one token per step for every row; per-token
log-densities of the distribution that drew each token. ``HFRolloutEngine`` wraps it behind the
``RolloutEngine`` protocol, either sharing the trainer's module (colocated: the weights are
always current, an update only moves the version) or holding a copy that receives weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from repulse.errors import UserError
from repulse.rl.rollout.base import SamplingParams, refuse_mid_update
from repulse.rl.rollout.samples import Samples, left_pad, response_mask


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
    """Draw one token per row from ``logits`` [B, V]; return (token [B], its log-density [B]).

    The log-density is that of the distribution the token was drawn from:
    log q(a) = log softmax(logits / T)[a] − log Σ_{b kept} softmax(logits / T)[b], where the kept
    set is what top-k (``top_k`` > 0) and then top-p (``top_p`` < 1, applied to the top-k
    distribution renormalised, as vLLM and HF ``generate`` do) leave; without truncation it is
    log softmax(logits / T)[a], the training forward's value at temperature T. Importance weights
    of these samples need exactly this density (a proposal drawn at T = 0.7 with top-k is not
    softmax(logits)). ``temperature == 0``: greedy, log softmax(logits)[a] (the raw policy's
    value). Ties in top-p keep every token whose preceding mass is below ``top_p``.
    """
    logits = logits.float()
    if temperature <= 0:
        tok = logits.argmax(-1)
        return tok, torch.log_softmax(logits, -1).gather(-1, tok[:, None]).squeeze(-1)
    logp = torch.log_softmax(logits / temperature, -1)
    masked = logp
    if 0 < top_k < logp.shape[-1]:
        kth = torch.topk(logp, top_k, dim=-1).values[:, -1:]
        masked = torch.log_softmax(masked.masked_fill(masked < kth, -math.inf), -1)
    if top_p < 1.0:
        sorted_lp, order = torch.sort(masked, dim=-1, descending=True)
        probs = sorted_lp.exp()
        before = probs.cumsum(-1) - probs  # mass of the tokens ranked above each one
        drop_sorted = before >= top_p  # keep the smallest prefix whose mass reaches top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        masked = masked.masked_fill(drop, -math.inf)
    if masked is not logp:
        masked = torch.log_softmax(masked, -1)  # renormalise over the kept tokens
    tok = torch.multinomial(masked.exp(), 1).squeeze(-1)
    return tok, masked.gather(-1, tok[:, None]).squeeze(-1)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Penalise tokens already in the prompt or the response (CTRL's rule, as HF and vLLM apply it).

    For each row and each token a with ``seen[row, a]``: l'_a = l_a / θ when l_a > 0, else l_a · θ
    (θ = ``penalty`` > 1 makes repeats less likely whatever the sign of the logit); other logits are
    unchanged, and θ = 1 changes nothing. Applied to the raw logits, before temperature, top-k and
    top-p, so ``sample_next`` reports the density of the penalised distribution that drew the token.
    """
    if penalty == 1.0:
        return logits
    logits = logits.float()
    scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, scaled, logits)


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
    repetition_penalty: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KV-cached sampling of ``n`` responses for each of the P left-padded prompts ``ids`` [P, L].

    The prompt is run once (prefill) and its cache repeated n times (the n samples of a prompt
    share it), then one token per step for every row. Returns (response [P·n, T], per-token
    log-probs [P·n, T]); rows after their EOS hold ``pad_id`` and 0. With ``synced``, every
    process steps until all processes' rows are done (sharded weights are gathered per forward).
    ``repetition_penalty`` != 1 penalises the tokens each row has seen (``apply_repetition_penalty``).
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
    seen = None
    if repetition_penalty != 1.0:  # the tokens of each row's prompt (not its padding), then its response
        seen = torch.zeros(rows, logits.shape[-1], dtype=torch.bool, device=ids.device)
        prompt_ids = ids.repeat_interleave(n, 0)
        seen.scatter_(1, prompt_ids, mask.bool())
    tokens, logps = [], []
    for t in range(max_new_tokens):
        if seen is not None:
            logits = apply_repetition_penalty(logits, seen, repetition_penalty)
        tok, lp = sample_next(logits, temperature, top_p, top_k)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        if seen is not None:
            seen[torch.arange(rows, device=ids.device), tok] |= ~done
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
    repetition_penalty: float = 1.0,
) -> Samples:
    """Sample ``n_samples`` responses per prompt from an HF causal LM (KV cache), dropout off.

    Rows of one prompt are consecutive, which the group estimators (RLOO, GRPO, CTL) rely on;
    each prompt is prefilled once for its n samples. ``micro_batch_size`` bounds the rows of
    one decoding batch (whole prompt groups, at least one). ``temperature == 0`` means greedy.
    ``Samples.logprobs`` are the sampler's per-token log-densities (see ``sample_next``).
    ``repetition_penalty`` (1: off) is for batch generation; RL samples from the policy itself.
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
            top_k, eos_id, pad_id, synced, repetition_penalty,
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


class HFRolloutEngine:
    """``RolloutEngine`` over our sampler.

    ``model`` is a callable returning the module to sample from at call time (the trainer's
    engine may re-wrap it), so a colocated engine shares the trained weights: after an update
    there is nothing to copy and ``end_update`` only records the version. With ``copy=True``
    (a separate engine, e.g. on another Ray actor) the engine owns its module and ``load``
    copies tensors into it by name; ``name_map`` renames incoming names first.
    """

    def __init__(
        self,
        model: Callable[[], torch.nn.Module],
        *,
        eos_id: int | None,
        pad_id: int,
        micro_batch_size: int,
        device: torch.device,
        owns_weights: bool = False,
    ):
        self._model = model
        self.eos_id, self.pad_id = eos_id, pad_id
        self.micro_batch_size, self.device = micro_batch_size, device
        self.owns_weights = owns_weights
        self.weight_version = 0
        self._updating = False
        self._loaded: set[str] = set()

    def generate(self, prompt_ids: list[list[int]], n: int, sampling: SamplingParams) -> Samples:
        refuse_mid_update(self._updating, self.weight_version)
        seeded = sampling.seed is not None
        with torch.random.fork_rng(devices=[], enabled=seeded):
            if seeded:
                torch.manual_seed(sampling.seed)
            s = hf_generate(
                self._model(),
                prompt_ids,
                n_samples=n,
                max_new_tokens=sampling.max_new_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                eos_id=self.eos_id,
                pad_id=self.pad_id,
                micro_batch_size=self.micro_batch_size,
                device=self.device,
                repetition_penalty=sampling.repetition_penalty,
            )
        s.versions = torch.full((s.sequences.shape[0],), self.weight_version, dtype=torch.long)
        return s

    def sleep(self, level: int = 1) -> None:
        """Nothing to free: the sampler keeps no cache between calls."""

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Nothing was freed by ``sleep``."""

    def begin_update(self) -> None:
        self._updating = True
        self._loaded = set()

    @torch.no_grad()
    def load(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        if not self._updating:
            raise RuntimeError("load() outside begin_update() / end_update()")
        if not self.owns_weights:
            for _ in named_tensors:  # shared weights: already current
                pass
            return
        params = dict(self._model().named_parameters())
        params.update(dict(self._model().named_buffers()))
        for name, tensor in named_tensors:
            if name not in params:
                raise KeyError(f"the rollout model has no tensor named {name!r}")
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
            self._loaded.add(name)

    def end_update(self, version: int) -> None:
        if self.owns_weights:
            missing = {n for n, _ in self._model().named_parameters()} - self._loaded
            if missing:
                raise RuntimeError(
                    f"weight update incomplete: {len(missing)} tensors not sent, e.g. {sorted(missing)[:3]}"
                )
        self._updating = False
        self.weight_version = version
