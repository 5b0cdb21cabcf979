"""Mixture-of-experts models in training: the router's auxiliary (load-balancing) loss.

OpenRLHF adds ``aux_loss_coef x aux_loss`` to the training loss of an MoE model
(``--aux_loss_coef``), where ``aux_loss`` is the load-balancing loss transformers computes
from the router logits when a forward is asked for them (``output_router_logits=True``).
:class:`RouterAuxLoss` does the same for any trainer, without touching how the trainer calls
the model: two hooks on the model's decoder backbone ask every forward for its router logits
and turn them into :func:`repulse.losses.moe.load_balancing_loss` over that forward's real
tokens. The hooks sit on the backbone (``MixtralModel``, ``Qwen2MoeModel``, ...) rather than
on the top model so that every head - causal LM, sequence classifier (reward model, critic) -
and every wrapper (peft, FSDP2, DeepSpeed) gets the same loss; the model's config is not
changed, so what is saved loads and generates as before.

Use (offline trainers; the RL roles wrap their losses with ``take``, see
``repulse.trainers.rl.local_roles``)::

    aux = router_aux_loss(model, cfg.model.aux_loss_coef, "--model.aux_loss_coef")  # None when 0
    ...                                  # the method's own forward(s), as before
    if aux is not None:
        loss_sum, stats = aux.add(loss_sum, units)   # after the forward that carries gradients

A dense model with a coefficient > 0 is refused (there is no router, so nothing to add).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from repulse.errors import UserError
from repulse.losses.moe import load_balancing_loss, with_aux_loss


def router_config(model: nn.Module) -> tuple[int, int] | None:
    """``(num_experts, top_k)`` of an HF mixture-of-experts model, or None for a dense one.

    An MoE config is one that knows ``output_router_logits`` (the test OpenRLHF uses), with
    its expert count under ``num_local_experts`` (Mixtral) or ``num_experts`` (Qwen-MoE, OLMoE)
    and the experts per token under ``num_experts_per_tok``.
    """
    config = getattr(_hf_model(model), "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    fields = config.to_dict()
    if "output_router_logits" not in fields:
        return None
    experts = fields.get("num_local_experts") or fields.get("num_experts")
    top_k = fields.get("num_experts_per_tok")
    if not experts or not top_k:
        raise UserError(
            f"the {fields.get('model_type', 'MoE')} model's config has no num_local_experts/num_experts and "
            "num_experts_per_tok: its router auxiliary loss cannot be computed here; drop the aux-loss flag."
        )
    return int(experts), int(top_k)


def _hf_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (the model itself otherwise)."""
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def _backbone(model: nn.Module) -> nn.Module:
    """The decoder stack that returns ``router_logits`` (HF ``base_model``: ``MixtralModel``, ...)."""
    hf = _hf_model(model)
    return getattr(hf, "base_model", hf)


def real_tokens(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """``[B, L]`` 1 for the tokens a forward really holds, from the mask the backbone received.

    2-D masks are that already; None (packed rows) means every token. A 4-D boolean or
    additive mask ``[B, 1, L, L]`` (``shared_prompt_collate``) marks a token real when it
    attends to, or is attended by, another token: a pad sees only itself and nobody sees it,
    while every real token shares a segment of at least two tokens.
    """
    if attention_mask is None or attention_mask.dim() == 2:
        return attention_mask
    if attention_mask.dim() != 4:
        return None
    sees = attention_mask[:, 0] if attention_mask.dtype == torch.bool else attention_mask[:, 0] == 0
    sees = sees.clone()
    sees.diagonal(dim1=-2, dim2=-1).fill_(False)
    return (sees.any(-1) | sees.any(-2)).long()


class RouterAuxLoss:
    """The load-balancing loss of the latest forward of an HF MoE model (see the module docstring)."""

    def __init__(self, model: nn.Module, coef: float, experts: int, top_k: int):
        self.coef = float(coef)
        self.experts, self.top_k = experts, top_k
        self._last: torch.Tensor | None = None
        self._taken: list[torch.Tensor] | None = None  # between ``begin`` and ``take``: their losses
        backbone = _backbone(model)
        self._handles = [
            backbone.register_forward_pre_hook(self._ask_for_router_logits, with_kwargs=True),
            backbone.register_forward_hook(self._collect, with_kwargs=True),
        ]

    @staticmethod
    def _ask_for_router_logits(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "output_router_logits": True}

    def _collect(self, _module: nn.Module, _args: tuple, kwargs: dict, output: Any) -> None:
        logits = getattr(output, "router_logits", None)
        if not logits:
            raise RuntimeError("the MoE backbone returned no router_logits although they were asked for")
        mask = real_tokens(kwargs.get("attention_mask"))
        if mask is not None and mask.numel() != logits[0].shape[0] and mask.dim() == 2:
            # a cached decoding step routes only its new tokens, while its mask spans the cache too
            mask = mask[:, mask.shape[1] - logits[0].shape[0] // mask.shape[0] :]
        self._last = load_balancing_loss(tuple(logits), self.experts, self.top_k, mask)
        if self._taken is not None and torch.is_grad_enabled():
            self._taken.append(self._last)

    def begin(self) -> None:
        """Start collecting the losses of the forwards with gradients (for ``take``)."""
        self._taken = []

    def take(self) -> torch.Tensor | None:
        """The mean auxiliary loss of the forwards with gradients since ``begin`` (a loss that runs
        several, as RePULSe's policy loss over its own and the proposal's samples), or None; stops
        collecting, so no graph is held past the loss that uses it."""
        taken, self._taken = self._taken, None
        return torch.stack(taken).mean() if taken else None

    def last(self) -> torch.Tensor:
        """The auxiliary loss of the most recent forward (with its graph when that forward had one)."""
        if self._last is None:
            raise RuntimeError("no forward of the MoE model has run since RouterAuxLoss was attached")
        return self._last

    def add(
        self, loss_sum: torch.Tensor, units: float
    ) -> tuple[torch.Tensor, dict[str, tuple[float, float]]]:
        """``(loss_sum + coef·units·aux, {"aux_loss": (aux·units, units)})`` for the latest forward.

        The auxiliary loss is a training regulariser: it joins the loss only while gradients are
        on (training steps); evaluation forwards report it as ``aux_loss`` and leave the loss as
        the task's. See :func:`repulse.losses.moe.with_aux_loss` for the normalisation.
        """
        aux = self.last()
        stats = {"aux_loss": (float(aux.detach()) * float(units), float(units))}
        if torch.is_grad_enabled():
            loss_sum = with_aux_loss(loss_sum, aux, self.coef, units)
        return loss_sum, stats

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def router_aux_loss(
    model: nn.Module, coef: float, flag: str, path: str | None = None
) -> RouterAuxLoss | None:
    """A :class:`RouterAuxLoss` on ``model`` for ``flag``'s coefficient; None when it is 0.

    Refuses a negative coefficient and a dense model (no router: the flag would do nothing).
    """
    if coef == 0:
        return None
    if coef < 0:
        raise UserError(f"{flag} must be >= 0, got {coef}.")
    routing = router_config(model)
    if routing is None:
        name = path or type(_hf_model(model)).__name__
        raise UserError(
            f"{flag} {coef}: {name} is not a mixture-of-experts model (its config has no router: no "
            "output_router_logits), so it has no auxiliary load-balancing loss to add. Drop the flag, "
            "or train an MoE model (Mixtral, Qwen-MoE, ...)."
        )
    return RouterAuxLoss(model, coef, *routing)
