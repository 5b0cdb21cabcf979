"""SFT data: instruction pairs, continued pre-training text, multi-turn conversations.

Item: ``{"input_ids": list[int], "loss_mask": list[int]}`` with ``loss_mask[t] = 1`` iff the
model's prediction *of* token t (from the logits at t-1) is in the loss; ``loss_mask[0]`` is
always 0. A trainer uses ``loss_mask[:, 1:]`` against log-probs of ``input_ids[:, 1:]``.

Three modes (OpenRLHF semantics):

- instruction (default): prompt = ``--data.input_template`` or chat template over
  ``row[input_key]``; response = ``row[output_key]`` + eos; loss on the response (eos too).
  With the chat template and no ``--data.output_key``, ``row[input_key]`` is a conversation
  whose last (assistant) message is the response.
- ``pretrain_mode`` (``--model.pretrain_mode_enable``): ``row[input_key]`` (plus
  ``row[output_key]`` when set) is one text; loss on every token; no template, no eos.
- ``--data.multiturn`` (needs ``--data.apply_chat_template``): ``row[input_key]`` is a list
  of messages; the loss covers every assistant turn (content and the template's
  end-of-turn token). Spans are found on **token ids**: the conversation is rendered up to
  turn k with the generation prompt (span start) and including turn k (span end), and those
  token prefixes are matched against the tokens of the whole conversation.

Truncation at ``--data.max_len`` keeps the start of the sequence; ``stats`` counts truncated
samples and samples dropped because no trained token was left, and one warning line sums it
up. A truncated response is not given a fake eos: the model is not taught to stop mid-sentence.
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
from repulse.data.templates import (
    as_messages,
    check_input_template,
    common_prefix_len,
    encode_many,
    ends_with_special,
    eos_id,
    render_chat,
    special_prefix,
)
from repulse.errors import UserError, warn_once

if TYPE_CHECKING:
    from repulse.config.sections import DataSection


class SFTDataset(TokenDataset):
    """Tokenised SFT samples; see the module docstring for the three modes."""

    def __init__(self, rows: list[dict], tokenizer: Any, cfg: DataSection, pretrain_mode: bool = False):
        super().__init__()
        self.tokenizer = tokenizer
        self.max_len = int(cfg.max_len)
        if self.max_len < 2:
            raise UserError(f"--data.max_len must be at least 2, got {cfg.max_len}.")
        self.stats["rows"] = len(rows)
        if pretrain_mode:
            self._build_pretrain(rows, cfg)
        elif cfg.multiturn:
            if not cfg.apply_chat_template:
                raise UserError(
                    "--data.multiturn needs --data.apply_chat_template: assistant turns are found with the chat template."
                )
            self.stats["unstable_turns"] = 0
            self._build_multiturn(rows, cfg)
        else:
            self._build_pairs(rows, cfg)
        self._report(self.max_len)

    # ------------------------------------------------------------------ modes

    def _keep(self, ids: list[int], mask: list[int], truncated: bool) -> None:
        if not any(mask):
            self.stats["dropped_empty"] += 1
            return
        if truncated:
            self.stats["truncated"] += 1
        self.items.append({"input_ids": ids, "loss_mask": mask})

    def _build_pairs(self, rows: list[dict], cfg: DataSection) -> None:
        template = check_input_template(cfg.input_template)
        pr = PromptResponse(self.tokenizer, template, cfg.apply_chat_template)
        for i, row in enumerate(rows):
            prompt = get_field(row, cfg.input_key, "--data.input_key", i)
            what = f"{row_label(row, i)} ('{cfg.input_key}')"
            if cfg.output_key is not None:
                response = get_field(row, cfg.output_key, "--data.output_key", i)
            elif cfg.apply_chat_template:
                msgs = as_messages(prompt, what)
                prompt, response = split_last_assistant(
                    msgs, row_label(row, i), f"--data.input_key {cfg.input_key}"
                )
            else:
                raise UserError(
                    "--data.output_key is not set: name the response field (e.g. --data.output_key response), "
                    "or use --model.pretrain_mode_enable to train on the input text alone."
                )
            pr.add(prompt, response, what)
        for p, r in pr.encode():
            self._keep(*join_and_truncate(p, r, self.max_len))

    def _build_pretrain(self, rows: list[dict], cfg: DataSection) -> None:
        if cfg.input_template:
            warn_once(
                "pretrain_template",
                "--data.input_template is ignored in pretrain mode (loss on the raw text).",
            )
        texts: list[str] = []
        chat = []
        for i, row in enumerate(rows):
            value = get_field(row, cfg.input_key, "--data.input_key", i)
            if not isinstance(value, str):
                if not cfg.apply_chat_template:
                    raise UserError(
                        f"{row_label(row, i)}: '{cfg.input_key}' (--data.input_key) is a "
                        f"{type(value).__name__}, not text; "
                        "for chat messages add --data.apply_chat_template."
                    )
                value = render_chat(
                    self.tokenizer, as_messages(value, row_label(row, i)), add_generation_prompt=False
                )
                chat.append(True)
            else:
                chat.append(False)
            if cfg.output_key is not None:
                out = get_field(row, cfg.output_key, "--data.output_key", i)
                if not isinstance(out, str):
                    raise UserError(
                        f"{row_label(row, i)}: '{cfg.output_key}' (--data.output_key) is not text."
                    )
                value = value + out
            texts.append(value)
        prefix = special_prefix(self.tokenizer)
        for ids, is_chat in zip(encode_many(self.tokenizer, texts), chat):
            ids = list(ids) if is_chat else prefix + list(ids)
            truncated = len(ids) > self.max_len
            ids = ids[: self.max_len]
            mask = [0] + [1] * (len(ids) - 1) if ids else []
            self._keep(ids, mask, truncated)

    def _build_multiturn(self, rows: list[dict], cfg: DataSection) -> None:
        tok = self.tokenizer
        plans = []  # per row: (index of full text, [(start text idx, end text idx)], ends with assistant)
        texts: list[str] = []
        for i, row in enumerate(rows):
            msgs = as_messages(
                get_field(row, cfg.input_key, "--data.input_key", i),
                f"{row_label(row, i)} ('{cfg.input_key}')",
            )
            full_idx = len(texts)
            texts.append(render_chat(tok, msgs, add_generation_prompt=False).rstrip())
            spans = []
            for k, m in enumerate(msgs):
                if m.get("role") != "assistant":
                    continue
                spans.append((len(texts), len(texts) + 1))
                texts.append(render_chat(tok, msgs[:k], add_generation_prompt=True) if k else "")
                texts.append(render_chat(tok, msgs[: k + 1], add_generation_prompt=False).rstrip())
            plans.append((full_idx, spans, bool(msgs) and msgs[-1].get("role") == "assistant"))
        enc = encode_many(tok, texts)
        eos = eos_id(tok)
        unstable = 0
        for full_idx, spans, ends_assistant in plans:
            ids = list(enc[full_idx])
            mask = [0] * len(ids)
            for s_idx, e_idx in spans:
                start_ids, end_ids = enc[s_idx], enc[e_idx]
                start = common_prefix_len(start_ids, ids)
                end = common_prefix_len(end_ids, ids)
                if start != len(start_ids) or end != len(end_ids):
                    unstable += 1
                for t in range(start, end):
                    mask[t] = 1
            if ends_assistant and not ends_with_special(tok, ids):
                ids.append(eos)
                mask.append(1)
            truncated = len(ids) > self.max_len
            ids, mask = ids[: self.max_len], mask[: self.max_len]
            if mask:
                mask[0] = 0
            self._keep(ids, mask, truncated)
        if unstable:
            self.stats["unstable_turns"] = unstable
            warn_once(
                f"multiturn_unstable:{id(self)}",
                f"{unstable} assistant turn(s): the chat template renders a conversation's start differently "
                "once later turns follow, so their loss spans cover only the tokens that agree.",
            )
