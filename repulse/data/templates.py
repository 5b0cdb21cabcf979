"""Turning a row's prompt into text and token ids: ``--data.input_template`` or the chat template.

Conventions shared by every tokenised dataset (why they matter):

- Prompt and response are tokenised **separately** and concatenated, so the boundary is
  exact and the prompt tokens are those the model sees when it generates from the prompt
  alone (a BPE merge across the boundary cannot shift the loss mask by a token).
- Chat-rendered text carries its own special tokens (BOS, turn markers), so it is encoded
  with ``add_special_tokens=False``. Plain text (input template / pretrain mode) gets the
  tokenizer's own leading special tokens (e.g. Llama's BOS) once, at the start of the
  sequence - :func:`special_prefix` - and never trailing ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from repulse.errors import UserError, warn_once

Messages = list[dict[str, Any]]


def check_input_template(template: str | None, flag: str = "--data.input_template") -> str | None:
    """Validate ``--data.input_template``; returns the template, or None when unset.

    An empty string means "no template" (the seed's rejection-sampling recipe passes
    ``--input_template ""``). A template without ``{}`` would silently drop the prompt, so it
    is an error. A literal backslash-n (two characters) usually means the shell did not
    expand ``\\n`` (write ``$'User: {}\\nAssistant: '`` in bash): a warning, not an error,
    since it could be intended.
    """
    if template is None or template == "":
        return None
    if "{}" not in template:
        raise UserError(
            f"{flag} {template!r} has no '{{}}' where the prompt goes; e.g. {flag} $'User: {{}}\\nAssistant: '."
        )
    try:
        template.format("x")
    except (IndexError, KeyError, ValueError) as exc:
        raise UserError(
            f"{flag} {template!r} is not a valid format string ({exc!r}); it may hold one '{{}}' for the "
            "prompt, and literal braces must be doubled ('{{' and '}}')."
        ) from None
    if "\\n" in template:
        warn_once(
            "input_template_literal_newline",
            f"{flag} {template!r} contains a literal backslash-n (two characters), not a newline; "
            "the shell did not expand it (in bash write $'User: {}\\nAssistant: ').",
        )
    return template


def as_messages(value: Any, what: str) -> Messages:
    """A prompt value as chat messages: a string becomes one user message."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, dict) and "role" in value:
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(m, dict) and "role" in m for m in value):
        return list(value)
    raise UserError(
        f"{what} must be text or a list of chat messages ({{'role': ..., 'content': ...}}), "
        f"got {type(value).__name__}: {str(value)[:80]!r}."
    )


def question_text(value: Any) -> str:
    """The user's question, without any template: the text itself, or a conversation's last user turn.

    Reward models that score (question, answer) pairs or render their own chat template need
    this rather than the policy's rendered prompt, which carries the policy's template markers.
    """
    if isinstance(value, str):
        return value
    users = [m for m in as_messages(value, "the prompt") if m.get("role") == "user"]
    return str(users[-1].get("content", "")) if users else ""


def _require_chat_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            "--data.apply_chat_template is set but the tokenizer has no chat template; pass one with "
            "--data.tokenizer_chat_template (a jinja string or file), or use --data.input_template instead."
        )


def render_chat(tokenizer: Any, messages: Messages, add_generation_prompt: bool) -> str:
    """The chat template over ``messages`` as text."""
    _require_chat_template(tokenizer)
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - jinja errors (e.g. raise_exception in the template)
        raise UserError(f"the chat template failed on {str(messages)[:120]!r}: {exc}") from None


def render_prompt(
    tokenizer: Any,
    text_or_messages: str | Messages,
    input_template: str | None = None,
    apply_chat_template: bool = False,
    what: str = "the prompt",
) -> str:
    """The prompt as text, ready for the response to follow it.

    Chat path: a string is one user message, a list is used as is, and the template adds
    the assistant's generation prompt. Template path: ``input_template.format(text)``, or the
    text itself when there is no template.
    """
    if apply_chat_template:
        return render_chat(tokenizer, as_messages(text_or_messages, what), add_generation_prompt=True)
    if not isinstance(text_or_messages, str):
        raise UserError(
            f"{what} is a {type(text_or_messages).__name__}, not text; for chat messages add "
            "--data.apply_chat_template."
        )
    return input_template.format(text_or_messages) if input_template else text_or_messages


def set_chat_template(tokenizer: Any, template_string_or_file: str | None) -> Any:
    """Apply ``--data.tokenizer_chat_template`` (a jinja string, or a path to a file holding one).

    The template is tried on a two-message conversation so that a syntax error surfaces
    here, naming the flag, rather than in the middle of tokenising the data.
    """
    if not template_string_or_file:
        return tokenizer
    value = template_string_or_file
    is_jinja = "{%" in value or "{{" in value
    if not is_jinja:
        path = Path(value).expanduser()
        if not path.is_file():
            raise UserError(
                f"--data.tokenizer_chat_template {value!r} is neither a jinja template (no '{{%' or '{{{{') "
                "nor an existing file."
            )
        value = path.read_text(encoding="utf-8")
    tokenizer.chat_template = value
    try:
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], tokenize=False
        )
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"--data.tokenizer_chat_template does not render: {exc}") from None
    return tokenizer


# --------------------------------------------------------------------------- token helpers


def encode_many(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without any special tokens added (one fast batched call)."""
    if not texts:
        return []
    return list(tokenizer(texts, add_special_tokens=False)["input_ids"])


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def special_prefix(tokenizer: Any) -> list[int]:
    """Leading special tokens the tokenizer adds to plain text (Llama: [bos]; GPT-2: [])."""
    cache = getattr(tokenizer, "_repulse_special_prefix", None)
    if cache is not None:
        return list(cache)
    probe = "a b"
    with_special = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    prefix: list[int] = []
    for i in range(len(with_special) - len(plain) + 1):
        if with_special[i : i + len(plain)] == plain:
            prefix = with_special[:i]
            break
    try:
        tokenizer._repulse_special_prefix = tuple(prefix)
    except Exception:  # noqa: BLE001 - some tokenizer objects refuse attributes; just recompute
        pass
    return prefix


def eos_id(tokenizer: Any) -> int:
    eid = getattr(tokenizer, "eos_token_id", None)
    if eid is None:
        raise UserError(
            "the tokenizer has no eos token; responses must end with one. Set eos_token in the tokenizer."
        )
    return int(eid)


def special_ids(tokenizer: Any) -> frozenset[int]:
    """Ids that end a response: eos and every special added token (end-of-turn markers)."""
    ids = {int(i) for i, tok in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items() if tok.special}
    eid = getattr(tokenizer, "eos_token_id", None)
    if eid is not None:
        ids.add(int(eid))
    return frozenset(ids)


def ends_with_special(tokenizer: Any, ids: list[int], specials: frozenset[int] | None = None) -> bool:
    """Whether ``ids`` end with eos or another special token (an end-of-turn marker)."""
    if not ids:
        return False
    return ids[-1] in (specials if specials is not None else special_ids(tokenizer))


def common_prefix_len(a: list[Any], b: list[Any]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
