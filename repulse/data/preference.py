"""Preference pairs for reward models and DPO.

Item: ``{"chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask": list[int], "margin": float}``;
the masks mark response tokens as in SFT (``mask[t] = 1`` iff the prediction of token t is
trained; first token never).

Where the prompt comes from:

- ``--data.prompt_key`` set: ``row[prompt_key]`` rendered like an SFT prompt; chosen and
  rejected are the responses (text, or assistant message(s); a conversation that repeats the
  prompt messages first has them stripped).
- no prompt key, chat data (``--data.apply_chat_template``): chosen and rejected are whole
  conversations; the prompt is their longest common prefix of messages (at least the last
  message of each stays a response).
- no prompt key, plain text: chosen and rejected are whole texts, and the prompt is their
  longest common prefix of *tokens* (at least one token of each stays a response). The DPO
  margin is unchanged by this choice (shared tokens cancel); it keeps the NLL term and the
  logged log-probs about the part that differs.

``margin`` is the row's ``margin`` field (for ``--model.margin_loss_enable``), 0.0 without one.
Pairs with identical chosen and rejected tokens carry no signal: they are kept, counted in
``stats["identical"]`` and reported once.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from repulse.data.base import (
    PromptResponse,
    TokenDataset,
    assistant_messages,
    get_field,
    join_and_truncate,
    row_label,
)
from repulse.data.templates import (
    as_messages,
    check_input_template,
    common_prefix_len,
    encode_many,
    ends_with_special,
    eos_id,
    special_ids,
    special_prefix,
)
from repulse.errors import UserError, warn_once

if TYPE_CHECKING:
    from repulse.config.sections import DataSection


def _strip_prompt(response: Any, prompt_msgs: list[dict]) -> Any:
    if (
        isinstance(response, list)
        and len(response) > len(prompt_msgs)
        and response[: len(prompt_msgs)] == prompt_msgs
    ):
        return response[len(prompt_msgs) :]
    return response


def _margin(row: dict, index: int) -> float:
    value = row.get("margin", 0.0)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise UserError(f"{row_label(row, index)}: 'margin' must be a finite number, got {value!r}.")
    return float(value)


class PreferenceDataset(TokenDataset):
    """Tokenised (chosen, rejected) pairs; see the module docstring."""

    def __init__(self, rows: list[dict], tokenizer: Any, cfg: DataSection):
        super().__init__()
        self.tokenizer = tokenizer
        self.max_len = int(cfg.max_len)
        self.stats["rows"] = len(rows)
        self.stats["identical"] = 0
        self.stats["no_margin"] = sum("margin" not in row for row in rows)  # see the rm trainer
        template = check_input_template(cfg.input_template)
        margins = []
        pairs: list[tuple[list[int], list[int], list[int], list[int]]] = []  # (p_c, r_c, p_r, r_r)
        plain_full: list[tuple[str, str]] = []
        pr = PromptResponse(tokenizer, template, cfg.apply_chat_template)
        for i, row in enumerate(rows):
            chosen = get_field(row, cfg.chosen_key, "--data.chosen_key", i)
            rejected = get_field(row, cfg.rejected_key, "--data.rejected_key", i)
            margins.append(_margin(row, i))
            what = row_label(row, i)
            if cfg.prompt_key is not None:
                prompt = get_field(row, cfg.prompt_key, "--data.prompt_key", i)
                if cfg.apply_chat_template:
                    p_msgs = as_messages(prompt, f"{what} ('{cfg.prompt_key}')")
                    chosen, rejected = _strip_prompt(chosen, p_msgs), _strip_prompt(rejected, p_msgs)
                pr.add(prompt, chosen, what)
                pr.add(prompt, rejected, what)
            elif cfg.apply_chat_template:
                c_msgs = assistant_messages(chosen, f"{what} ('{cfg.chosen_key}')")
                r_msgs = assistant_messages(rejected, f"{what} ('{cfg.rejected_key}')")
                n = min(common_prefix_len(c_msgs, r_msgs), len(c_msgs) - 1, len(r_msgs) - 1)
                prompt = c_msgs[:n]
                pr.add(prompt or "", c_msgs[n:], what)
                pr.add(prompt or "", r_msgs[n:], what)
            else:
                for key, value in ((cfg.chosen_key, chosen), (cfg.rejected_key, rejected)):
                    if not isinstance(value, str):
                        raise UserError(
                            f"{what}: '{key}' is a {type(value).__name__}, not text; for chat messages add "
                            "--data.apply_chat_template, or name the prompt field with --data.prompt_key."
                        )
                plain_full.append((chosen, rejected))
        if cfg.prompt_key is not None or cfg.apply_chat_template:
            enc = pr.encode()
            pairs = [(*enc[2 * j], *enc[2 * j + 1]) for j in range(len(enc) // 2)]
        else:
            pairs = self._split_plain(plain_full)
        for (p_c, r_c, p_r, r_r), margin in zip(pairs, margins):
            if p_c + r_c == p_r + r_r:
                self.stats["identical"] += 1
            c_ids, c_mask, c_trunc = join_and_truncate(p_c, r_c, self.max_len)
            r_ids, r_mask, r_trunc = join_and_truncate(p_r, r_r, self.max_len)
            if not any(c_mask) or not any(r_mask):
                self.stats["dropped_empty"] += 1
                continue
            if c_trunc or r_trunc:
                self.stats["truncated"] += 1
            self.items.append(
                {
                    "chosen_ids": c_ids,
                    "chosen_mask": c_mask,
                    "rejected_ids": r_ids,
                    "rejected_mask": r_mask,
                    "margin": margin,
                }
            )
        if self.stats["identical"]:
            warn_once(
                f"preference_identical:{id(self)}",
                f"{self.stats['identical']} of {len(rows)} preference pairs have identical chosen and rejected "
                "tokens; they carry no preference signal (kept).",
            )
        self._report(self.max_len, "pairs")

    def _split_plain(
        self, texts: list[tuple[str, str]]
    ) -> list[tuple[list[int], list[int], list[int], list[int]]]:
        tok = self.tokenizer
        flat = encode_many(tok, [t for pair in texts for t in pair])
        prefix = special_prefix(tok)
        eos = eos_id(tok)
        specials = special_ids(tok)
        out = []
        for j in range(len(texts)):
            c, r = prefix + list(flat[2 * j]), prefix + list(flat[2 * j + 1])
            if not ends_with_special(tok, c, specials):
                c.append(eos)
            if not ends_with_special(tok, r, specials):
                r.append(eos)
            n = min(common_prefix_len(c, r), len(c) - 1, len(r) - 1)
            out.append((c[:n], c[n:], r[:n], r[n:]))
        return out


# --------------------------------------------------------------------------- the reward-model input format

REWARD_FORMAT_VERSION = 1
REWARD_FORMAT_KINDS = ("prompt_response", "chat", "text")


def reward_format(cfg: DataSection, tokenizer: Any) -> dict[str, Any]:
    """How a reward model trained on these pairs saw its inputs, for scoring it the same way later.

    Saved in the model's config (``repulse_reward_format``) by ``repulse rm``: a reward model
    scored in another format than it was trained on gives other numbers (a missing eos alone
    can flip the sign of the score). ``kind``:

    - ``prompt_response`` (``--data.prompt_key``, plain text): the tokenizer's leading
      special tokens, the prompt through ``input_template`` (None: as is), the response,
      each tokenised separately;
    - ``chat`` (``--data.apply_chat_template``): ``chat_template`` over [user, assistant];
    - ``text`` (neither): the whole text, tokenised as one piece after the leading specials.

    ``eos``: an eos is appended unless the sequence already ends with eos or another special
    token (the only convention of this version; recorded so that a reader never guesses).
    """
    if cfg.apply_chat_template:
        kind = "chat"
    elif cfg.prompt_key is not None:
        kind = "prompt_response"
    else:
        kind = "text"
    return {
        "version": REWARD_FORMAT_VERSION,
        "kind": kind,
        "input_template": check_input_template(cfg.input_template) if kind == "prompt_response" else None,
        "chat_template": getattr(tokenizer, "chat_template", None) if kind == "chat" else None,
        "eos": True,
    }


def check_reward_format(fmt: Any, where: str) -> dict[str, Any]:
    """``fmt`` as read from a model config, or a UserError naming ``where`` if this version cannot score it."""
    if (
        not isinstance(fmt, dict)
        or fmt.get("version") != REWARD_FORMAT_VERSION
        or fmt.get("kind") not in REWARD_FORMAT_KINDS
        or fmt.get("eos") is not True
    ):
        raise UserError(
            f"{where}: its config records a reward input format this version of repulse does not know "
            f"(repulse_reward_format = {str(fmt)[:200]}); score it with the repulse version that trained it."
        )
    return fmt


def describe_reward_format(fmt: dict[str, Any]) -> str:
    """One phrase for messages: what the reward model was trained on."""
    if fmt["kind"] == "chat":
        return "chat-template conversations ending with eos"
    if fmt["kind"] == "prompt_response":
        template = fmt.get("input_template")
        return f"prompt{f' in the template {template!r}' if template else ''} + response + eos"
    return "whole texts + eos"


def encode_reward_inputs(
    tokenizer: Any, fmt: dict[str, Any], prompts: list[Any], responses: list[str], rendered: bool
) -> list[tuple[list[int], list[int]]]:
    """(prompt-side ids, answer ids) of each pair, as a reward model trained in ``fmt`` saw them.

    ``rendered=False``: ``prompts`` are the raw questions, rendered here with the recorded
    template (exactly as :class:`PreferenceDataset` did in training). ``rendered=True``: they
    are already rendered text (a client that sends only the full text), taken as they are.
    ``text`` formats tokenise prompt + response as one text, as training did; their split
    point is then where the response's own tokens would start (only truncation uses it).
    """
    specials = special_ids(tokenizer)
    eos = eos_id(tokenizer)

    def with_eos(ids: list[int]) -> list[int]:
        return ids if ends_with_special(tokenizer, ids, specials) else ids + [eos]

    if fmt["kind"] == "text" or rendered:
        prefix = [] if fmt["kind"] == "chat" else special_prefix(tokenizer)
        if fmt["kind"] == "text":
            full = encode_many(tokenizer, [str(p) + r for p, r in zip(prompts, responses)])
            answers = encode_many(tokenizer, list(responses))
            out = []
            for ids, ans in zip(full, answers):
                plain = prefix + list(ids)
                ids = with_eos(plain)
                cut = max(len(prefix), len(plain) - len(ans))
                out.append((ids[:cut], ids[cut:]))
            return out
        p_ids = encode_many(tokenizer, [str(p) for p in prompts])
        r_ids = encode_many(tokenizer, list(responses))
        return [(prefix + list(p), with_eos(list(r))) for p, r in zip(p_ids, r_ids)]
    chat = fmt["kind"] == "chat"
    pr = PromptResponse(tokenizer, fmt.get("input_template"), chat)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        pr.add(p, r, f"reward input {i}")
    return pr.encode()
