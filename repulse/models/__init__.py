"""Models floor: load tokenizers, causal LMs and scalar (reward / value) models; token log-probs.

Light to import: torch and transformers only (peft and bitsandbytes load on demand).
"""

from repulse.models.loading import (
    enable_gradient_checkpointing,
    load_causal_lm,
    load_scalar_model,
    load_tokenizer,
    merge_lora,
    resolve_attn,
    resolve_dtype,
)
from repulse.models.logprobs import token_entropy, token_logprobs, token_logprobs_from_model
from repulse.models.positions import check_not_packed, last_token_index, positions_from_mask
from repulse.models.scalar import (
    get_reward_stats,
    sequence_scores,
    set_reward_stats,
    token_values,
)

__all__ = [
    "check_not_packed",
    "enable_gradient_checkpointing",
    "get_reward_stats",
    "last_token_index",
    "load_causal_lm",
    "load_scalar_model",
    "load_tokenizer",
    "merge_lora",
    "positions_from_mask",
    "resolve_attn",
    "resolve_dtype",
    "sequence_scores",
    "set_reward_stats",
    "token_entropy",
    "token_logprobs",
    "token_logprobs_from_model",
    "token_values",
]
