"""Process-reward (Math-Shepherd style) data for PRM training.

A row's input text (``--data.input_key``) marks the end of every reasoning step with the
placeholder token (``--model.placeholder_token``, e.g. ``ки``); its labels
(``--data.label_key``, default ``value``) give one label per step, either

- a list of reward-token strings (``["+", "-", ...]``): *hard* labels, stored as class
  indices - 0 for ``reward_tokens[0]`` (the positive token), 1 for ``reward_tokens[1]``;
- a list of numbers: *soft* labels, stored as floats = probability of the positive token;
- a string equal to the input with each placeholder replaced by a reward token (the
  ``label`` column of Math-Shepherd): read back as hard labels.

Item: ``{"input_ids": list[int], "step_positions": list[int], "step_labels": list[int|float]}``.
``step_positions`` are the indices of the placeholder tokens in ``input_ids``; the trainer
reads the logits *at* those positions (the model's guess of the token after the placeholder)
over the two reward tokens (``self.reward_token_ids``).

The text is split on the placeholder string and the pieces are tokenised separately with the
placeholder id put back in between, so a step mark is found even where the tokenizer would
have merged it with a neighbouring character. Truncation at ``--data.max_len`` drops the steps
whose placeholder was cut (counted); a sample left with no step is dropped (counted).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from repulse.data.base import TokenDataset, get_field, row_label
from repulse.data.templates import encode, encode_many, special_prefix
from repulse.errors import UserError

if TYPE_CHECKING:
    from repulse.config.sections import DataSection


def single_token_id(tokenizer: Any, token: str, flag: str) -> int:
    """The id of ``token`` if the tokenizer encodes it as exactly one token, else a UserError."""
    ids = encode(tokenizer, token)
    if len(ids) != 1:
        raise UserError(
            f"{flag} {token!r} is not a single token of this tokenizer (it encodes to {len(ids)} tokens {ids}); "
            "choose a token in the vocabulary, or add it to the tokenizer first (tokenizer.add_tokens)."
        )
    return int(ids[0])


class ProcessRewardDataset(TokenDataset):
    """Tokenised PRM samples; see the module docstring."""

    def __init__(
        self,
        rows: list[dict],
        tokenizer: Any,
        cfg: DataSection,
        placeholder_token: str | None,
        reward_tokens: list[str] | None = None,
    ):
        super().__init__()
        if not placeholder_token:
            raise UserError(
                "--model.placeholder_token is required for PRM data (e.g. --model.placeholder_token 'ки')."
            )
        reward_tokens = list(reward_tokens) if reward_tokens else ["+", "-"]
        if len(reward_tokens) != 2:
            raise UserError(
                f"--model.reward_tokens takes two tokens (positive, negative), got {reward_tokens}."
            )
        self.tokenizer = tokenizer
        self.max_len = int(cfg.max_len)
        self.placeholder_token = placeholder_token
        self.placeholder_id = single_token_id(tokenizer, placeholder_token, "--model.placeholder_token")
        self.reward_tokens = reward_tokens
        self.reward_token_ids = [
            single_token_id(tokenizer, t, "--model.reward_tokens") for t in reward_tokens
        ]
        self.stats["rows"] = len(rows)
        self.stats["steps_cut"] = 0
        label_key = cfg.label_key or "value"

        pieces: list[str] = []
        plans: list[tuple[int, int, list[int | float]]] = []  # (first piece, n pieces, labels)
        for i, row in enumerate(rows):
            text = get_field(row, cfg.input_key, "--data.input_key", i)
            if not isinstance(text, str):
                raise UserError(
                    f"{row_label(row, i)}: '{cfg.input_key}' (--data.input_key) must be text with step "
                    "placeholders."
                )
            raw = get_field(row, label_key, "--data.label_key", i)
            parts = text.split(placeholder_token)
            n_steps = len(parts) - 1
            labels = self._labels(raw, text, parts, row_label(row, i), label_key)
            if len(labels) != n_steps:
                raise UserError(
                    f"{row_label(row, i)}: the input has {n_steps} step placeholder(s) "
                    f"{placeholder_token!r} but '{label_key}' (--data.label_key) has {len(labels)} label(s); "
                    "they must match one to one."
                )
            plans.append((len(pieces), len(parts), labels))
            pieces.extend(parts)
        enc = encode_many(tokenizer, pieces)
        prefix = special_prefix(tokenizer)
        for first, n, labels in plans:
            ids = list(prefix)
            positions = []
            for j in range(n):
                ids.extend(enc[first + j])
                if j < n - 1:
                    positions.append(len(ids))
                    ids.append(self.placeholder_id)
            truncated = len(ids) > self.max_len
            if truncated:
                ids = ids[: self.max_len]
                kept = sum(1 for p in positions if p < self.max_len)
                self.stats["steps_cut"] += len(positions) - kept
                positions, labels = positions[:kept], labels[:kept]
            if not positions:
                self.stats["dropped_empty"] += 1
                continue
            self.stats["truncated"] += int(truncated)
            self.items.append({"input_ids": ids, "step_positions": positions, "step_labels": list(labels)})
        self._report(self.max_len)

    def _labels(self, raw: Any, text: str, parts: list[str], row: str, key: str) -> list[int | float]:
        where = f"{row}: '{key}' (--data.label_key)"
        if isinstance(raw, str):
            return self._labels_from_text(raw, parts, where)
        if not isinstance(raw, (list, tuple)):
            raise UserError(
                f"{where} must be a list of step labels (or the input text with labels in place), got {raw!r}."
            )
        out: list[int | float] = []
        for v in raw:
            if isinstance(v, str):
                if v not in self.reward_tokens:
                    raise UserError(
                        f"{where}: label {v!r} is not one of --model.reward_tokens {self.reward_tokens}."
                    )
                out.append(self.reward_tokens.index(v))
            elif (
                isinstance(v, (int, float))
                and not isinstance(v, bool)
                and math.isfinite(v)
                and 0.0 <= v <= 1.0
            ):
                out.append(float(v))
            elif isinstance(v, bool):
                out.append(1.0 if v else 0.0)
            else:
                raise UserError(
                    f"{where}: label {v!r} is neither a reward token {self.reward_tokens} nor a probability in [0, 1]."
                )
        return out

    def _labels_from_text(self, label_text: str, parts: list[str], where: str) -> list[int | float]:
        """Math-Shepherd's label column: the input with each placeholder replaced by '+' or '-'."""
        out: list[int | float] = []
        pos = 0
        for j, part in enumerate(parts):
            if not label_text.startswith(part, pos):
                raise UserError(f"{where}: the label text does not match the input text around step {j + 1}.")
            pos += len(part)
            if j == len(parts) - 1:
                break
            for k, tok in enumerate(self.reward_tokens):
                if label_text.startswith(tok, pos):
                    out.append(k)
                    pos += len(tok)
                    break
            else:
                raise UserError(
                    f"{where}: at step {j + 1} the label text has {label_text[pos : pos + 5]!r} where one of "
                    f"--model.reward_tokens {self.reward_tokens} should replace the placeholder."
                )
        return out
