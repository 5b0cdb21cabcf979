"""Prompts for RL rollouts and generation workflows.

Item: ``{"prompt_ids": list[int], "prompt": str, "question": str, "label": Any | None}``.
``question`` is the raw input (a conversation's last user turn), for reward models that score
(question, answer) pairs or apply their own chat template. ``prompt`` is the rendered text (input template, or chat template with the generation prompt) - what a
text-in engine such as vLLM receives; ``prompt_ids`` are its tokens (with the tokenizer's
leading special tokens for plain text, none added for chat text, which carries its own).
``label`` is ``row[--data.label_key]`` (e.g. the reference answer a reward function checks),
or None when no label key is set.

Prompts longer than ``max_prompt_len`` tokens (when given) are dropped and counted rather
than cut: a prompt cut from the right loses its generation prompt, cut from the left it
loses its instruction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from repulse.data.base import TokenDataset, get_field, row_label
from repulse.data.templates import (
    check_input_template,
    encode_many,
    question_text,
    render_prompt,
    special_prefix,
)
from repulse.errors import warn_once

if TYPE_CHECKING:
    from repulse.config.sections import DataSection


class PromptDataset(TokenDataset):
    """Rendered and tokenised prompts; ``stats`` counts ``too_long`` drops."""

    def __init__(self, rows: list[dict], tokenizer: Any, cfg: DataSection, max_prompt_len: int | None = None):
        super().__init__()
        self.tokenizer = tokenizer
        self.stats["rows"] = len(rows)
        self.stats["too_long"] = 0
        template = check_input_template(cfg.input_template)
        texts, questions, labels = [], [], []
        for i, row in enumerate(rows):
            value = get_field(row, cfg.input_key, "--data.input_key", i)
            questions.append(question_text(value))
            texts.append(
                render_prompt(
                    tokenizer,
                    value,
                    template,
                    cfg.apply_chat_template,
                    f"{row_label(row, i)} ('{cfg.input_key}')",
                )
            )
            labels.append(
                get_field(row, cfg.label_key, "--data.label_key", i, allow_none=True)
                if cfg.label_key
                else None
            )
        prefix = [] if cfg.apply_chat_template else special_prefix(tokenizer)
        for text, ids, question, label in zip(texts, encode_many(tokenizer, texts), questions, labels):
            ids = prefix + list(ids)
            if max_prompt_len is not None and len(ids) > max_prompt_len:
                self.stats["too_long"] += 1
                continue
            self.items.append({"prompt_ids": ids, "prompt": text, "question": question, "label": label})
        if self.stats["too_long"]:
            warn_once(
                f"prompts_too_long:{id(self)}",
                f"{self.stats['too_long']} of {len(rows)} prompts are longer than {max_prompt_len} tokens and were dropped.",
            )
