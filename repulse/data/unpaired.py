"""Unpaired (prompt, response, desirable?) samples for KTO.

Item: ``{"input_ids": list[int], "loss_mask": list[int], "label": bool}``. Prompt and response
are built exactly as in SFT instruction mode (``--data.input_key`` / ``--data.output_key``,
input template or chat template; with the chat template and no output key, the last
assistant message of the conversation is the response). The prompt length of an item is the
index of the first 1 in ``loss_mask``; the KTO collate uses it to pair prompt i with
completion i+1 for the KL reference batch.

The label (``--data.label_key``, default ``label``) must be a boolean or the integer 0/1; a
string such as "good" is refused rather than guessed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from repulse.data.base import (
    PromptResponse,
    TokenDataset,
    get_field,
    join_and_truncate,
    row_label,
    split_last_assistant,
)
from repulse.data.templates import as_messages, check_input_template
from repulse.errors import UserError

if TYPE_CHECKING:
    from repulse.config.sections import DataSection


def parse_label(value: Any, where: str, key: str) -> bool:
    """A KTO label as a bool; ``where`` names the row in errors (:func:`~repulse.data.base.row_label`)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, float) and value in (0.0, 1.0):
        return bool(value)
    raise UserError(
        f"{where}: the label '{key}' (--data.label_key) is {value!r}; KTO labels must be true/false or 1/0 "
        "(1 = desirable response)."
    )


class UnpairedDataset(TokenDataset):
    """Tokenised KTO samples; ``stats`` adds ``desirable`` and ``undesirable`` counts."""

    def __init__(self, rows: list[dict], tokenizer: Any, cfg: DataSection):
        super().__init__()
        self.tokenizer = tokenizer
        self.max_len = int(cfg.max_len)
        self.stats["rows"] = len(rows)
        label_key = cfg.label_key or "label"
        template = check_input_template(cfg.input_template)
        pr = PromptResponse(tokenizer, template, cfg.apply_chat_template)
        labels = []
        for i, row in enumerate(rows):
            where = row_label(row, i)
            prompt = get_field(row, cfg.input_key, "--data.input_key", i)
            if cfg.output_key is not None:
                response = get_field(row, cfg.output_key, "--data.output_key", i)
            elif cfg.apply_chat_template:
                prompt, response = split_last_assistant(
                    as_messages(prompt, where), where, f"--data.input_key {cfg.input_key}"
                )
            else:
                raise UserError(
                    "--data.output_key is not set: name the response field, e.g. --data.output_key response."
                )
            labels.append(parse_label(get_field(row, label_key, "--data.label_key", i), where, label_key))
            pr.add(prompt, response, where)
        for (p, r), label in zip(pr.encode(), labels):
            ids, mask, truncated = join_and_truncate(p, r, self.max_len)
            if not any(mask):
                self.stats["dropped_empty"] += 1
                continue
            self.stats["truncated"] += int(truncated)
            self.items.append({"input_ids": ids, "loss_mask": mask, "label": label})
        self.stats["desirable"] = sum(1 for it in self.items if it["label"])
        self.stats["undesirable"] = len(self.items) - self.stats["desirable"]
        self._report(self.max_len)
