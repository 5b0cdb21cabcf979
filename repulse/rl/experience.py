"""Experience: everything an RL update needs about a batch of samples.

One forward per model per sample set: the policy's old log-probs, the reference's
log-probs (only when a KL term is on), the critic's values (only for ``gae``).
All are computed with dropout off and with the same micro-batches the update uses,
so the first update of a fresh rollout sees an importance ratio of exactly 1.

The old log-probs are skipped (``old_logprobs`` None) when nothing reads them before the
update and the whole rollout is one optimizer step: the update's own forward then runs at
the very weights that sampled, so π_old = sg(π) exactly and a forward is saved.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from repulse.rl.rollout import Samples


@dataclass
class Experience:
    """A batch of samples and the tensors computed from them ([B, T] unless noted)."""

    samples: Samples
    old_logprobs: torch.Tensor | None  # None: one optimizer step per rollout, π_old = sg(π)
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    rewards: torch.Tensor | None = None  # [B] sequence reward after shaping
    raw_rewards: torch.Tensor | None = None  # [B] reward sources' output
    kl: torch.Tensor | None = None  # per-token KL estimate to the reference
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    info: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def action_mask(self) -> torch.Tensor:
        return self.samples.action_mask

    def select(self, rows: list[int] | torch.Tensor) -> Experience:
        rows_t = torch.as_tensor(rows, dtype=torch.long)
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "samples":
                out[f.name] = v.select(rows_t)
            elif f.name == "info":
                out[f.name] = {k: t[rows_t] for k, t in v.items()}
            elif isinstance(v, torch.Tensor):
                out[f.name] = v[rows_t.to(v.device)]
            else:
                out[f.name] = v
        return Experience(**out)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as HF ``generate`` uses them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def forward_logits(model: torch.nn.Module, samples: Samples) -> torch.Tensor:
    """Logits predicting each response token: shape [B, T, V].

    Only the last T + 1 positions go through the LM head (``logits_to_keep``): the prompt's
    logits would be computed and thrown away. ``samples.pack``: a padding-free forward
    (``repulse.rl.packing``), the same logits up to float rounding.
    """
    kwargs = dict(
        input_ids=samples.sequences,
        attention_mask=samples.attention_mask,
        position_ids=position_ids_from_mask(samples.attention_mask),
        use_cache=False,
    )
    t = samples.sequences.shape[1] - samples.prompt_len
    if samples.pack:
        from repulse.rl.packing import pack_capacity, packed_response_logits

        return packed_response_logits(
            model, samples.sequences, samples.attention_mask, samples.prompt_len, pack_capacity(model)
        )
    try:
        logits = model(**kwargs, logits_to_keep=t + 1).logits
    except TypeError:  # a model class without logits_to_keep
        logits = model(**kwargs).logits
    return logits[:, -(t + 1) : -1, :]


def action_logprobs(
    model: torch.nn.Module,
    samples: Samples,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(a_t | s, a_<t) of every response token (logits / temperature), masked to 0 off actions.

    ``with_entropy``: also the per-token entropy of π(· | s, a_<t), with a gradient only when
    ``entropy_grad`` (an entropy bonus); else it is a metric and builds no graph.
    """
    from repulse.models.logprobs import token_entropy, token_logprobs

    logits = forward_logits(model, samples)
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    logp = token_logprobs(logits, samples.response)
    ent = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            ent = token_entropy(logits if entropy_grad else logits.detach())
    mask = samples.action_mask.to(logp.dtype)
    return logp * mask, (ent * mask if ent is not None else None)


@torch.no_grad()
def batched_logprobs(model, samples: Samples, micro: int, temperature: float = 1.0) -> torch.Tensor:
    """``action_logprobs`` over micro-batches, in eval mode (dropout off)."""
    was_training = model.training
    model.eval()
    outs = []
    for s in range(0, samples.sequences.shape[0], micro):
        rows = list(range(s, min(s + micro, samples.sequences.shape[0])))
        outs.append(action_logprobs(model, samples.select(rows), temperature)[0].float())
    if was_training:
        model.train()
    return torch.cat(outs, 0)


@torch.no_grad()
def batched_values(critic, samples: Samples, micro: int) -> torch.Tensor:
    """Critic value of every state before a response token: [B, T]."""
    from repulse.models.loading import token_values

    was_training = critic.training
    critic.eval()
    outs = []
    p = samples.prompt_len
    for s in range(0, samples.sequences.shape[0], micro):
        sub = samples.select(list(range(s, min(s + micro, samples.sequences.shape[0]))))
        v = sample_values(critic, sub, token_values)
        outs.append(v[:, p - 1 : -1].float() * sub.action_mask)
    if was_training:
        critic.train()
    return torch.cat(outs, 0)


def sample_values(model, samples: Samples, values_fn) -> torch.Tensor:
    """A scalar head's output at every position of ``samples`` [B, P + T] (``values_fn``:
    ``token_values`` or ``tied_token_values``), padded or padding-free as ``samples.pack`` says."""
    if samples.pack:
        from repulse.rl.packing import pack_capacity, packed_token_values

        return packed_token_values(
            model, samples.sequences, samples.attention_mask, pack_capacity(model), values_fn
        )
    return values_fn(
        model, samples.sequences, samples.attention_mask, position_ids_from_mask(samples.attention_mask)
    )
