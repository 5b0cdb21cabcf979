"""Rollout backends: turn prompts into sampled responses with token-level boundaries.

Prompt/response boundaries are kept as token indices (left-padded prompts of width
``prompt_len`` followed by the response), never found again by splitting strings.
"""

from __future__ import annotations

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

    @property
    def response(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_len :]

    @property
    def response_length(self) -> torch.Tensor:
        return self.action_mask.sum(-1)

    def to(self, device) -> Samples:
        return Samples(
            self.sequences.to(device),
            self.attention_mask.to(device),
            self.action_mask.to(device),
            self.prompt_len,
            self.prompt_index.to(device),
            self.truncated.to(device),
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
    """Sample ``n_samples`` responses per prompt with HF ``generate`` (KV cache), dropout off.

    Rows of one prompt are consecutive, which the group estimators (RLOO, GRPO, CTL)
    rely on. ``temperature == 0`` means greedy.
    """
    if max_new_tokens <= 0:
        raise UserError(
            "--rollout.max_new_tokens must be positive (or leave it unset to use --data.max_len)."
        )
    was_training = model.training
    model.eval()
    tiled = [p for p in prompts for _ in range(n_samples)]
    prompt_index = torch.arange(len(prompts)).repeat_interleave(n_samples)
    ids, mask = left_pad(tiled, pad_id)
    chunks = []
    for start in range(0, len(tiled), micro_batch_size):
        sl = slice(start, start + micro_batch_size)
        kwargs = dict(
            input_ids=ids[sl].to(device),
            attention_mask=mask[sl].to(device),
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
            use_cache=True,
            # sharded engines (FSDP2, ZeRO-3) gather weights in every forward: ranks must step together
            synced_gpus=torch.distributed.is_available()
            and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1,
        )
        if temperature > 0:
            kwargs.update(
                do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k if top_k > 0 else None
            )
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        out = model.generate(**kwargs)
        chunks.append(out[:, ids.shape[1] :].cpu())
    if was_training:
        model.train()
    width = max(c.shape[1] for c in chunks)
    response = torch.cat(
        [torch.nn.functional.pad(c, (0, width - c.shape[1]), value=pad_id) for c in chunks], dim=0
    )
    action_mask, truncated = response_mask(response, eos_id, pad_id)
    response = torch.where(action_mask.bool(), response, torch.full_like(response, pad_id))
    sequences = torch.cat([ids, response], dim=1)
    attention = torch.cat([mask, action_mask], dim=1)
    return Samples(sequences, attention, action_mask, ids.shape[1], prompt_index, truncated)
