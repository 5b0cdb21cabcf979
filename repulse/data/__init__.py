"""Data floor of repulse: sources, mixing, templates, tokenised datasets, collation, sampling.

Import cost matters (the CLI imports config first): submodules import torch/datasets lazily
where they can, and this package re-exports the public names lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_rows": "sources",
    "load_mixture": "sources",
    "mix_rows": "sources",
    "parse_probs": "sources",
    "check_input_template": "templates",
    "render_prompt": "templates",
    "render_chat": "templates",
    "set_chat_template": "templates",
    "SFTDataset": "sft",
    "PreferenceDataset": "preference",
    "UnpairedDataset": "unpaired",
    "ProcessRewardDataset": "process",
    "PromptDataset": "prompts",
    "pad_collate": "collate",
    "pack_collate": "collate",
    "packed_attention_mask": "collate",
    "preference_collate": "collate",
    "kto_collate": "collate",
    "prompt_collate": "collate",
    "epoch_order": "collate",
    "MicroBatcher": "collate",
    "batches": "collate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"repulse.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'repulse.data' has no attribute {name!r}")
