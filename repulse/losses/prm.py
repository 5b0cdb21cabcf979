"""Process-reward-model loss (spec §3.17, OpenRLHF ``PRMLoss`` before its removal in 0.9.6).

How OpenRLHF did it: the PRM is a causal LM. Each reasoning step in the input ends with
a placeholder token (``--placeholder_token``, e.g. "ки"). At those positions only, the
LM's next-token logits are trained with cross-entropy to predict a reward token
(``--reward_tokens``, e.g. "+" / "-"). When reward tokens are given, the logits are
first **restricted to the reward tokens' columns** (a softmax over K = 2 logits, not the
vocabulary). The label token ids are then mapped to the class indices 0..K−1 in the
order given. Without reward tokens, the cross-entropy runs over the whole vocabulary
with the label token id as the class. Soft labels (a float probability p that the step
is good, e.g. from Math-Shepherd rollouts) become the 2-class target [p, 1 − p] over
the logits of ("+", "−"). The soft cross-entropy −p log softmax_0 − (1−p) log softmax_1
is exactly the binary cross-entropy of σ(l_+ − l_−) against p.

:func:`gather_prm_steps` does the position selection and label mapping, and
:func:`prm_loss` does the loss. The score of a step at inference time is
softmax(l_+, l_−)[0].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE_INDEX = -100


def gather_prm_steps(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    placeholder_token_id: int,
    reward_token_ids: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select the step positions and map the labels: ``(step_logits [N, K], step_labels [N])``.

    ``logits`` [B, T, V] are the logits at each position, aligned with ``input_ids``
    [B, T]: ``logits[b, t]`` predicts the token after ``input_ids[b, t]``. ``labels`` [B, T]
    holds, at placeholder positions, either a reward-token id (hard label, integer
    dtype) or a probability that the step is good (soft label, floating dtype). The other
    positions are ignored.

    With ``reward_token_ids`` (K ids), the returned logits are those K columns (K = 2
    for soft labels, column 0 = "good"). Hard labels are mapped to their index in
    ``reward_token_ids``. A hard label that is not a reward token becomes
    ``IGNORE_INDEX``. Without ``reward_token_ids``, the logits keep the full vocabulary
    (K = V) and hard labels stay token ids.
    """
    at_steps = input_ids == placeholder_token_id
    step_logits = logits[at_steps]
    step_labels = labels[at_steps]
    if reward_token_ids is None:
        if step_labels.is_floating_point():
            raise ValueError("soft (float) PRM labels need reward_token_ids (the 'good' and 'bad' tokens)")
        return step_logits, step_labels
    ids = torch.as_tensor(list(reward_token_ids), dtype=torch.long, device=logits.device)
    step_logits = step_logits.index_select(-1, ids)
    if step_labels.is_floating_point():
        return step_logits, step_labels
    match = step_labels[:, None] == ids[None, :]
    mapped = match.to(torch.long).argmax(dim=-1)
    return step_logits, torch.where(match.any(dim=-1), mapped, torch.full_like(mapped, IGNORE_INDEX))


def prm_valid(labels: torch.Tensor) -> torch.Tensor:
    """Bool [N]: the steps that :func:`prm_loss` trains on.

    Hard labels (integer dtype) count when ≥ 0, so ``IGNORE_INDEX`` is skipped. Soft labels
    (floating dtype) count when they lie in [0, 1].
    """
    if labels.is_floating_point():
        return (labels >= 0) & (labels <= 1)
    return labels >= 0


def prm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy at the step positions: ``(per_step_loss [N], correct [N])``.

    ``logits`` [N, K] are the logits at the N placeholder positions. They are either
    restricted to the reward tokens (K = 2, column 0 = the positive "+" token, column 1 =
    "−") or span the whole vocabulary (K = V). Computed in fp32 or wider.

    - **Hard labels** (integer dtype, [N]): class indices in [0, K).

          ℓ_i = −log softmax(z_i)[y_i]

    - **Soft labels** (floating dtype, [N]; requires K = 2): p_i = P(step is positive).

          ℓ_i = −p_i log softmax(z_i)[0] − (1 − p_i) log softmax(z_i)[1]
              = BCE(σ(z_i0 − z_i1), p_i)

    ``correct`` (bool, detached) is ``argmax_k z_ik == y_i`` for hard labels and
    ``(p_i ≥ ½) == (argmax_k z_ik == 0)`` for soft labels. Ties p = ½ count as positive,
    as ``argmax([p, 1 − p])`` does in OpenRLHF.

    Ignored steps (see :func:`prm_valid`: hard label < 0, e.g. ``IGNORE_INDEX``, or a
    soft label outside [0, 1]) get ℓ_i = 0 and ``correct`` False. OpenRLHF's loss is the
    mean of ℓ over the valid steps: ``per_step_loss.sum() / prm_valid(labels).sum()``.
    Its accuracy is ``correct.sum()`` over the same count. A trainer may divide instead
    by a global step count (``repulse.losses.aggregation``).
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits [N, K] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    pred = logits.detach().argmax(dim=-1)
    valid = prm_valid(labels)
    if labels.is_floating_point():
        if logits.shape[-1] != 2:
            raise ValueError(f"soft PRM labels need 2 reward-token logits, got {logits.shape[-1]}")
        p = torch.where(valid, labels, torch.zeros_like(labels)).to(logp.dtype)
        per_step = -(p * logp[:, 0] + (1 - p) * logp[:, 1])
        target = torch.where(p >= 0.5, 0, 1)
    else:
        target = torch.where(valid, labels, torch.zeros_like(labels)).long()
        per_step = -logp.gather(-1, target[:, None]).squeeze(-1)
    zero = torch.zeros((), dtype=per_step.dtype, device=per_step.device)
    return torch.where(valid, per_step, zero), (pred == target) & valid
