"""Reward sources: reward models, a Python ``reward_func`` file, and HTTP reward servers
(:mod:`repulse.rl.reward_http`).

Every source maps (queries, prompts, responses, labels) to one float per sample, where
``queries`` are the full decoded texts (prompt + response), as OpenRLHF sends them.
Several sources combine with ``--reward.reduction`` (sum by default); every consumer (RL,
``eval-tail``, ``gcg``) scores through :func:`score_rewards`, which refuses a non-finite
reward with one paragraph naming its source and the first offending sample.

A reward model trained by ``repulse rm`` records the input format it was trained on in its
config (``repulse_reward_format``); under ``--reward.input_format auto`` (the default) it is
scored in exactly that format, and a model without one (trained elsewhere) is scored as
``concat`` text with its tokenizer's own special tokens. Inputs longer than the model can
read are cut on the prompt side (the answer kept) and counted (``truncated_count``).
"""

from __future__ import annotations

import importlib.util
import traceback
from pathlib import Path
from typing import Any

import torch

from repulse.data.preference import (
    check_reward_format,
    describe_reward_format,
    encode_reward_inputs,
)
from repulse.errors import NonFiniteError, UserError, warn_once
from repulse.rl.reward_http import HTTPRewardSource
from repulse.rl.reward_input import RewardInput, RewardSource

INPUT_FORMATS = ("auto", "concat", "pair", "chat")
_UNSET_MAX_LENGTH = 1_000_000  # tokenizers without a real limit report ~1e30


# --------------------------------------------------------------------------- fitting inputs


def input_limit(model_config: Any, tokenizer: Any, max_len: int) -> int:
    """The longest input a reward model can read: min(``--reward.max_len``, its position
    embeddings, the tokenizer's ``model_max_length`` when that is a real limit)."""
    cfg = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    limits = [int(max_len)]
    positions = getattr(cfg, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < _UNSET_MAX_LENGTH:
        limits.append(tok_max)
    return max(1, min(limits))


def fit_to_length(head: list[int], answer: list[int], limit: int, keep_head: int) -> tuple[list[int], bool]:
    """``head + answer`` cut to at most ``limit`` tokens: (ids, whether anything was cut).

    The prompt side goes first: the first ``keep_head`` tokens of ``head`` (BOS, the
    template's opening specials) stay, then as much of the end of ``head`` as fits before the
    whole ``answer``. Only an answer that alone exceeds the room loses its start (the score is
    read at the last token, so its end is what must stay).
    """
    if len(head) + len(answer) <= limit:
        return head + answer, False
    keep = min(keep_head, len(head), limit)
    room = limit - keep - len(answer)
    if room >= 0:
        return head[:keep] + head[len(head) - room :] + answer, True
    return head[:keep] + answer[len(answer) - (limit - keep) :], True


def _leading_specials(tokenizer: Any, ids: list[int]) -> int:
    specials = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    n = 0
    while n < len(ids) and ids[n] in specials:
        n += 1
    return n


def _excerpt(text: str, limit: int = 100) -> str:
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return repr(text)
    return repr(text[: limit // 2 - 2] + " ... " + text[-(limit // 2 - 3) :])


# --------------------------------------------------------------------------- reward models


class RewardModelSource:
    """A frozen sequence-scalar model with its own tokenizer.

    The policy's text is decoded and re-encoded with the RM's tokenizer. ``input_format``:

    - ``auto``: the format recorded by ``repulse rm`` in the model's config (its prompt
      template or chat template over the raw question, the response, eos appended - exactly
      the sequences it was trained on); ``concat`` for a model that records none;
    - ``concat``: the text prompt+response (the policy's rendered prompt), with the special
      tokens the RM's tokenizer adds;
    - ``pair``: (question, response) as a text pair (e.g. a DeBERTa RM's [CLS] q [SEP] a [SEP]);
    - ``chat``: [user: question, assistant: response] in the RM's own chat template.

    The question is the raw user text, without the policy's template. Inputs are cut to
    :func:`input_limit` on the prompt side (:func:`fit_to_length`) and counted in
    ``truncated_count``. ``chosen_label`` picks one logit of a classifier (e.g. a toxicity
    model's "non-toxic" class). The score is the head at the last real token (the attention
    mask decides, not the pad id), as ``repulse rm`` computed it in training.
    """

    def __init__(
        self,
        path: str,
        device: torch.device,
        *,
        max_len: int,
        input_format: str,
        chosen_label: int | None,
        offload: bool,
        micro_batch_size: int,
    ):
        from transformers import AutoModelForSequenceClassification

        from repulse.models.loading import load_tokenizer
        from repulse.models.scalar import HEAD_NAME, get_reward_format

        if input_format not in INPUT_FORMATS:
            raise UserError(
                f"--reward.input_format must be one of {', '.join(INPUT_FORMATS)}, got {input_format!r}."
            )
        self.path = path
        self.name = Path(path).name or path
        self.tokenizer = load_tokenizer(path, padding_side="right")
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(path)
        except OSError as exc:
            raise UserError(
                f"--reward.model_name_or_path {path}: cannot load a reward model ({exc})."
            ) from None
        self.model.eval().requires_grad_(False)
        self.device, self.offload = device, offload
        self.model.to("cpu" if offload else device)
        cfg = self.model.config
        recorded = get_reward_format(cfg)
        where = f"--reward.model_name_or_path {path}"
        self.trained_format = check_reward_format(recorded, where) if recorded is not None else None
        if input_format == "auto":
            input_format = "trained" if self.trained_format else "concat"
        elif self.trained_format is not None:
            warn_once(
                f"reward_format:{path}:{input_format}",
                f"--reward.input_format {input_format}: {path} was trained by repulse rm on "
                f"{describe_reward_format(self.trained_format)}; it is scored as {input_format}, as asked, "
                "which is not its training format (--reward.input_format auto scores that).",
            )
        if input_format == "trained" and self.trained_format.get("chat_template"):
            self.tokenizer.chat_template = self.trained_format["chat_template"]
        self.input_format = input_format
        self.max_len = input_limit(cfg, self.tokenizer, max_len)
        num_labels = int(getattr(cfg, "num_labels", 1) or 1)
        if chosen_label is not None and not 0 <= chosen_label < num_labels:
            raise UserError(
                f"--reward.chosen_label {chosen_label}: the reward model has "
                f"{'a single output' if num_labels == 1 else f'{num_labels} outputs (0..{num_labels - 1})'}."
            )
        self.chosen_label = chosen_label
        self.micro = micro_batch_size
        self.truncated_count = 0
        self.mask_pooled = isinstance(getattr(self.model, HEAD_NAME, None), torch.nn.Module)
        self.mean = float(getattr(cfg, "repulse_reward_mean", 0.0) or 0.0)
        self.std = float(getattr(cfg, "repulse_reward_std", 1.0) or 1.0)

    def describe(self, index: int) -> str:
        return f"the reward model {self.path}"

    def _pieces(self, first: str, response: str) -> tuple[list[int], list[int], int]:
        """(prompt-side ids, answer ids, leading ids to keep) in an external model's format."""
        tok = self.tokenizer
        if self.input_format == "chat":
            msgs = [{"role": "user", "content": first}, {"role": "assistant", "content": response}]
            ids = tok.apply_chat_template(msgs, tokenize=True)
            ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)  # a BatchEncoding in transformers 5
            if len(ids) >= 2 and tok.bos_token_id is not None and ids[0] == ids[1] == tok.bos_token_id:
                ids = ids[1:]
            answer_len = len(tok(response, add_special_tokens=False)["input_ids"]) + 2
        elif self.input_format == "pair":
            ids = tok(first, response)["input_ids"]
            answer_len = len(tok(response, add_special_tokens=False)["input_ids"]) + 1
        else:
            ids = tok(first + response)["input_ids"]
            answer_len = len(tok(response, add_special_tokens=False)["input_ids"]) + 1
        cut = max(0, len(ids) - answer_len)
        return list(ids[:cut]), list(ids[cut:]), 1

    def encode(self, batch: RewardInput) -> list[list[int]]:
        """The token ids the model scores for each sample, cut to ``max_len`` (counted)."""
        if self.input_format == "trained":
            kind = self.trained_format["kind"]
            rendered = kind == "text" or batch.questions is None
            firsts = batch.prompts if rendered else batch.questions
            pairs = encode_reward_inputs(
                self.tokenizer, self.trained_format, firsts, batch.responses, rendered
            )
            pieces = [(h, a, _leading_specials(self.tokenizer, h)) for h, a in pairs]
        else:
            firsts = batch.prompts if self.input_format == "concat" else (batch.questions or batch.prompts)
            pieces = [self._pieces(f, r) for f, r in zip(firsts, batch.responses)]
        out = []
        filler = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        for head, answer, keep in pieces:
            ids, cut = fit_to_length(head, answer, self.max_len, keep)
            self.truncated_count += int(cut)
            out.append(ids or [filler])  # an empty text still gets a (meaningless but finite) score
        return out

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, num_labels]``: the head at each row's last attended token."""
        if self.mask_pooled:
            from repulse.models.positions import last_token_index
            from repulse.models.scalar import token_values

            values = token_values(self.model, ids, mask)
            if values.dim() == 2:
                values = values.unsqueeze(-1)
            last = last_token_index(mask).to(values.device)
            return values[torch.arange(values.shape[0], device=values.device), last]
        return self.model(input_ids=ids, attention_mask=mask).logits.float()

    @torch.no_grad()
    def __call__(self, batch: RewardInput) -> torch.Tensor:
        if self.offload:
            self.model.to(self.device)
        scores = []
        pad = self.tokenizer.pad_token_id
        encoded_all = self.encode(batch)
        col = self.chosen_label if self.chosen_label is not None else 0
        for s in range(0, len(encoded_all), self.micro):
            encoded = encoded_all[s : s + self.micro]
            width = max(len(e) for e in encoded)
            ids = torch.full((len(encoded), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, e in enumerate(encoded):
                ids[i, : len(e)] = torch.tensor(e)
                mask[i, : len(e)] = 1
            logits = self._forward(ids.to(self.device), mask.to(self.device))
            scores.append(logits[:, col].float().cpu())
        if self.offload:
            self.model.to("cpu")
        return torch.cat(scores) if scores else torch.zeros(0)


# --------------------------------------------------------------------------- a Python reward function


def _raised_at(exc: BaseException, file: Path) -> str:
    """`` (file:line)`` of the deepest traceback frame in ``file``, or '' when none is."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        try:
            if Path(frame.filename).resolve() == file:
                line = frame.lineno
        except OSError:
            continue
    return f" (line {line})" if line is not None else ""


def _last_line(exc: BaseException) -> str:
    """The exception's last line as Python prints it (``ValueError: ...``), one line."""
    lines = traceback.format_exception_only(type(exc), exc)
    text = lines[-1].strip() if lines else type(exc).__name__
    return " ".join(text.split())[:300]


class PythonRewardSource:
    """A file exposing ``reward_func(queries, prompts, labels)``, called once per batch.

    Whatever the function raises, or a result that is not one number per sample, is a
    UserError naming the file, the function and the exception's last line.
    """

    def __init__(self, path: str):
        file = Path(path)
        if not file.is_file():
            raise UserError(f"--reward.remote_url {path}: no such Python file.")
        self.file = file.resolve()
        spec = importlib.util.spec_from_file_location(f"repulse_reward_{file.stem}", file)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        try:
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception as exc:  # the user's code: report it in one line
            raise UserError(
                f"--reward.remote_url {path}: importing it failed{_raised_at(exc, self.file)}: {_last_line(exc)}"
            ) from None
        if not callable(getattr(module, "reward_func", None)):
            raise UserError(
                f"--reward.remote_url {path}: the file must define reward_func(queries, prompts, labels)."
            )
        self.fn = module.reward_func
        self.path = path
        self.name = file.stem
        self.truncated_count = 0

    def describe(self, index: int) -> str:
        return f"reward_func in {self.path}"

    def __call__(self, batch: RewardInput) -> torch.Tensor:
        where = f"--reward.remote_url {self.path}: reward_func(queries, prompts, labels)"
        try:
            out = self.fn(batch.queries, batch.prompts, batch.labels)
        except Exception as exc:  # the user's code: the paragraph names it, no traceback of ours
            raise UserError(
                f"{where} raised an exception{_raised_at(exc, self.file)} on a batch of {len(batch.queries)} "
                f"samples: {_last_line(exc)}"
            ) from None
        if isinstance(out, dict):
            out = out.get("rewards")
        try:
            rewards = torch.as_tensor(out, dtype=torch.float32).flatten()
        except (TypeError, ValueError, RuntimeError) as exc:
            raise UserError(
                f"{where} returned {type(out).__name__} {str(out)[:80]!r}, not one number per sample "
                f"({_last_line(exc)})."
            ) from None
        if rewards.numel() != len(batch.queries):
            raise UserError(f"{where} returned {rewards.numel()} rewards for {len(batch.queries)} samples.")
        return rewards


# --------------------------------------------------------------------------- building and scoring


REDUCTIONS = ("sum", "mean", "min")


def check_reward_section(reward_cfg: Any) -> None:
    """Refuse ``--reward.*`` values no source could use, before anything is loaded."""
    fmt = getattr(reward_cfg, "input_format", "auto")
    if fmt not in INPUT_FORMATS:
        raise UserError(f"--reward.input_format must be one of {', '.join(INPUT_FORMATS)}, got {fmt!r}.")
    reduction = getattr(reward_cfg, "reduction", "sum")
    if reduction not in REDUCTIONS:
        raise UserError(f"--reward.reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}.")
    max_len = getattr(reward_cfg, "max_len", 1)
    if not isinstance(max_len, int) or max_len < 1:
        raise UserError(f"--reward.max_len must be a positive number of tokens, got {max_len!r}.")
    timeout = getattr(reward_cfg, "timeout_s", 1.0)
    if not timeout > 0:
        raise UserError(f"--reward.timeout_s must be > 0 seconds, got {timeout!r}.")
    if getattr(reward_cfg, "retries", 0) < 0:
        raise UserError(f"--reward.retries must not be negative, got {reward_cfg.retries!r}.")


def build_reward_sources(reward_cfg: Any, device: torch.device, micro_batch_size: int) -> list[RewardSource]:
    check_reward_section(reward_cfg)
    sources: list[RewardSource] = []
    if reward_cfg.model_name_or_path:
        for path in [p.strip() for p in reward_cfg.model_name_or_path.split(",") if p.strip()]:
            sources.append(
                RewardModelSource(
                    path,
                    device,
                    max_len=reward_cfg.max_len,
                    input_format=reward_cfg.input_format,
                    chosen_label=reward_cfg.chosen_label,
                    offload=reward_cfg.offload,
                    micro_batch_size=micro_batch_size,
                )
            )
    if reward_cfg.remote_url:
        urls = [u.strip() for u in reward_cfg.remote_url.split(",") if u.strip()]
        py = [u for u in urls if u.endswith(".py")]
        http = [u for u in urls if not u.endswith(".py")]
        sources += [PythonRewardSource(u) for u in py]
        if http:
            sources.append(HTTPRewardSource(http, reward_cfg.timeout_s, reward_cfg.retries))
    if not sources:
        raise UserError("no reward source: give --reward.model_name_or_path and/or --reward.remote_url.")
    return sources


def combine(values: list[torch.Tensor], reduction: str) -> torch.Tensor:
    stacked = torch.stack(values, 0)
    if reduction == "sum":
        return stacked.sum(0)
    if reduction == "mean":
        return stacked.mean(0)
    if reduction == "min":
        return stacked.min(0).values
    raise UserError(f"--reward.reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}.")


def check_finite(rewards: torch.Tensor, batch: RewardInput, where: Any) -> None:
    """Raise ``NonFiniteError("reward", ...)`` naming the source and the first non-finite sample.

    ``where(index)`` says where that sample's reward came from (a source's ``describe``).
    """
    bad = ~torch.isfinite(rewards)
    if not bool(bad.any()):
        return
    i = int(bad.nonzero()[0, 0])
    count = int(bad.sum())
    text = batch.queries[i] if i < len(batch.queries) else ""
    raise NonFiniteError(
        "reward",
        f"{where(i)} gave {float(rewards[i])} for sample {i} of {len(rewards)} ({_excerpt(text)})"
        + (f"; {count} samples of the batch are non-finite." if count > 1 else "."),
    )


def score_rewards(sources: list[RewardSource], batch: RewardInput, reduction: str) -> torch.Tensor:
    """Every source's rewards for ``batch``, checked finite, combined by ``reduction`` (fp32).

    The one scoring path of RL, ``eval-tail`` and ``gcg``: a NaN or infinite reward stops
    the run here, naming its source and the first offending sample, before it reaches an
    advantage, a loss or an estimate.
    """
    values = []
    for src in sources:
        r = src(batch).float()
        describe = getattr(src, "describe", None) or (lambda _i, s=src: f"the reward source {s.name}")
        check_finite(r, batch, describe)
        values.append(r)
    total = combine(values, reduction)
    check_finite(total, batch, lambda _i: f"--reward.reduction {reduction} of the reward sources")
    return total


def truncated_total(sources: list[Any]) -> int:
    """Reward-model inputs cut to fit their model so far, over all sources."""
    return sum(int(getattr(s, "truncated_count", 0)) for s in sources)
