"""Pieces shared by the tokenised datasets: field access with good errors, the
prompt/response split, truncation bookkeeping and the summary warning."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from repulse.data.templates import (
    Messages,
    as_messages,
    common_prefix_len,
    encode,
    encode_many,
    ends_with_special,
    eos_id,
    render_chat,
    render_prompt,
    special_ids,
    special_prefix,
)
from repulse.errors import UserError, warn_once


def row_label(row: Any, index: int) -> str:
    """``row N`` for the row at list position ``index``: 1-based, like the line numbers of the
    malformed-JSON errors, plus the file and line it was read from where known
    (:class:`~repulse.data.sources.Row`), e.g. ``row 2 (data/train.jsonl, line 2)``."""
    origin = getattr(row, "origin", "")
    return f"row {index + 1} ({origin})" if origin else f"row {index + 1}"


def get_field(row: dict, key: str | None, flag: str, index: int, allow_none: bool = False) -> Any:
    """``row[key]`` or a UserError naming the key, the row (see :func:`row_label`; ``index`` is
    the 0-based list position) and the flag that chose the key."""
    if key is None:
        raise UserError(f"{flag} is not set; it names the field of each row to read.")
    if not isinstance(row, dict):
        raise UserError(f"{row_label(row, index)} is a {type(row).__name__}, not a record with named fields.")
    if key not in row:
        keys = ", ".join(repr(k) for k in list(row)[:12])
        raise UserError(
            f"{row_label(row, index)} has no key '{key}' (chosen by {flag} {key}); "
            f"the row's keys are: {keys}."
        )
    value = row[key]
    if value is None and not allow_none:
        raise UserError(f"{row_label(row, index)}: the value of '{key}' ({flag}) is null.")
    return value


class TokenDataset(Sequence):
    """A list of tokenised items plus ``stats``; indexable, so any sampler/batcher works."""

    items: list[dict]
    stats: dict[str, int]

    def __init__(self) -> None:
        self.items = []
        self.stats = {"rows": 0, "truncated": 0, "dropped_empty": 0}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:  # type: ignore[override]
        return self.items[i]

    def _report(self, max_len: int, what: str = "samples") -> None:
        """One warning line that says how many samples were cut by ``--data.max_len``."""
        s = self.stats
        if not s["truncated"] and not s["dropped_empty"]:
            return
        msg = (
            f"{s['truncated'] + s['dropped_empty']} of {s['rows']} {what} exceeded --data.max_len {max_len}: "
            f"{s['truncated']} were truncated"
        )
        if s["dropped_empty"]:
            msg += f", {s['dropped_empty']} were dropped because no trained token was left"
        warn_once(f"{type(self).__name__}:{id(self)}:truncation", msg + ".")


def assistant_messages(value: Any, what: str) -> Messages:
    """A response value as assistant message(s): a string becomes one assistant message."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    return as_messages(value, what)


def split_last_assistant(messages: Messages, where: str, flag: str) -> tuple[Messages, Messages]:
    """(prompt messages, [last assistant message]) of a conversation whose last turn is the answer;
    ``where`` names the row in errors (:func:`row_label`)."""
    if not messages or messages[-1].get("role") != "assistant":
        raise UserError(
            f"{where}: the conversation in {flag} does not end with an assistant message, and no "
            "--data.output_key names the response; the last assistant turn is what gets trained."
        )
    return messages[:-1], messages[-1:]


class PromptResponse:
    """Collects (prompt, response) pairs as text, then tokenises all of them in two batched calls.

    Chat pairs: prompt = template(prompt messages) + generation prompt; response = the
    template over prompt + response minus that prompt text, with trailing whitespace removed
    (the model stops at its end-of-turn token); where the template renders the prompt
    differently once an answer follows, the split is where the two token sequences stop
    agreeing. Plain pairs: prompt = template-formatted
    text, response = text; the tokenizer's leading special tokens go first, unless the prompt
    text starts with them already (a prompt a chat template rendered earlier, as in a
    ``repulse generate`` output). Either way an eos is appended unless the response already ends
    with eos or another special (end-of-turn) token.
    """

    def __init__(self, tokenizer: Any, input_template: str | None, apply_chat_template: bool):
        self.tok = tokenizer
        self.template = input_template
        self.chat = apply_chat_template
        self.prompts: list[str] = []
        self.responses: list[str] = []
        self.plain: list[bool] = []
        self.unaligned: dict[int, tuple[str, str]] = {}  # pair index -> (prompt text, full text)

    def add(self, prompt: Any, response: Any, what: str) -> int:
        """Queue one pair; returns its index. ``prompt`` may be '' (no prompt)."""
        if self.chat:
            p_msgs = as_messages(prompt, what) if prompt not in ("", None) else []
            r_msgs = assistant_messages(response, what)
            p_text = render_chat(self.tok, p_msgs, add_generation_prompt=True) if p_msgs else ""
            full = render_chat(self.tok, p_msgs + r_msgs, add_generation_prompt=False)
            if full.startswith(p_text):
                self.prompts.append(p_text)
                self.responses.append(full[len(p_text) :].rstrip())
            else:  # the template renders the prompt differently once an answer follows
                self.unaligned[len(self.prompts)] = (p_text, full.rstrip())
                self.prompts.append("")
                self.responses.append("")
            self.plain.append(False)
        else:
            p_text = (
                render_prompt(self.tok, prompt, self.template, False, what)
                if prompt not in ("", None)
                else ""
            )
            if not isinstance(response, str):
                raise UserError(
                    f"{what}: the response is a {type(response).__name__}, not text; for chat messages add "
                    "--data.apply_chat_template."
                )
            self.prompts.append(p_text)
            self.responses.append(response)
            self.plain.append(True)
        return len(self.prompts) - 1

    def encode(self) -> list[tuple[list[int], list[int]]]:
        """(prompt ids incl. leading specials, response ids incl. eos) for every queued pair."""
        p_ids = encode_many(self.tok, self.prompts)
        r_ids = encode_many(self.tok, self.responses)
        prefix = special_prefix(self.tok)
        eos = eos_id(self.tok)
        specials = special_ids(self.tok)
        out = []
        for k, (p, r, plain) in enumerate(zip(p_ids, r_ids, self.plain)):
            p = list(p)
            r = list(r)
            if k in self.unaligned:
                # split the full tokens where they stop agreeing with the prompt's tokens
                p_text, full = self.unaligned[k]
                p_tokens, f_tokens = encode(self.tok, p_text), encode(self.tok, full)
                n = min(common_prefix_len(p_tokens, f_tokens), max(len(f_tokens) - 1, 0))
                p, r = f_tokens[:n], f_tokens[n:]
            if plain and p[: len(prefix)] != prefix:  # a prompt rendered earlier carries them already
                p = prefix + p
            if not ends_with_special(self.tok, r, specials):
                r = r + [eos]
            out.append((p, r))
        return out


def join_and_truncate(
    prompt: list[int], response: list[int], max_len: int
) -> tuple[list[int], list[int], bool]:
    """(ids, loss_mask, truncated): mask 1 on response tokens; cut at ``max_len``; first token never."""
    ids = prompt + response
    mask = [0] * len(prompt) + [1] * len(response)
    truncated = len(ids) > max_len
    if truncated:
        ids, mask = ids[:max_len], mask[:max_len]
    if mask:
        mask[0] = 0
    return ids, mask, truncated
