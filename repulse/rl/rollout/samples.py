"""A batch of sampled responses with token-level prompt/response boundaries.

Prompt/response boundaries are kept as token indices (left-padded prompts of width
``prompt_len`` followed by the response), never found again by splitting strings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Samples:
    """A batch of generated sequences (what every rollout engine returns).

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
    # [B, T] log-density of each drawn token under the distribution that drew it (temperature,
    # top-k and top-p applied and renormalised; greedy: log softmax of the raw logits); 0 off actions
    logprobs: torch.Tensor | None = None
    versions: torch.Tensor | None = None  # [B] the rollout engine's weight_version per row
    pack: bool = False  # forwards over these samples run padding-free (``repulse.rl.packing``)

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
            self.logprobs.to(device) if self.logprobs is not None else None,
            self.versions.to(device) if self.versions is not None else None,
            self.pack,
        )

    def select(self, rows: torch.Tensor | list[int]) -> Samples:
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.sequences.device)

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return t[rows.to(t.device)] if t is not None else None

        return Samples(
            self.sequences[rows],
            self.attention_mask[rows],
            self.action_mask[rows],
            self.prompt_len,
            self.prompt_index[rows],
            self.truncated[rows],
            pick(self.logprobs),
            pick(self.versions),
            self.pack,
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
