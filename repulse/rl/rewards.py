"""Reward sources: reward models, a Python ``reward_func`` file, and HTTP reward servers.

Every source maps (queries, prompts, responses, labels) to one float per sample, where
``queries`` are the full decoded texts (prompt + response), as OpenRLHF sends them.
Several sources combine with ``--reward.reduction`` (sum by default).
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from repulse.errors import UserError


@dataclass
class RewardInput:
    queries: list[str]  # prompt + response text
    prompts: list[str]  # the policy's rendered prompts (input or chat template applied)
    responses: list[str]
    labels: list[Any]
    questions: list[str] | None = None  # the raw user questions (no template); default: prompts


class RewardSource(Protocol):
    name: str

    def __call__(self, batch: RewardInput) -> torch.Tensor: ...


class RewardModelSource:
    """A frozen sequence-scalar model with its own tokenizer.

    The policy's text is decoded and re-encoded with the RM's tokenizer. ``input_format``:
    ``concat`` scores the text prompt+response (the policy's rendered prompt); ``pair``
    encodes (question, response) as a text pair (e.g. a DeBERTa RM's [CLS] q [SEP] a [SEP]);
    ``chat`` renders [user: question, assistant: response] with the RM's own chat template.
    The question is the raw user text, without the policy's template. ``max_len`` truncates the prompt side only; ``chosen_label`` picks one
    logit of a classifier (e.g. a toxicity model's "non-toxic" class).
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

        if input_format not in {"concat", "pair", "chat"}:
            raise UserError(f"--reward.input_format must be concat, pair or chat, got {input_format!r}.")
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
        self.max_len, self.input_format, self.chosen_label = max_len, input_format, chosen_label
        self.micro = micro_batch_size
        cfg = self.model.config
        self.mean = float(getattr(cfg, "repulse_reward_mean", 0.0) or 0.0)
        self.std = float(getattr(cfg, "repulse_reward_std", 1.0) or 1.0)

    def _encode_one(self, prompt: str, response: str) -> list[int]:
        tok = self.tokenizer
        if self.input_format == "chat":
            msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            ids = tok.apply_chat_template(msgs, tokenize=True)
            ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)  # a BatchEncoding in transformers 5
            if len(ids) >= 2 and tok.bos_token_id is not None and ids[0] == ids[1] == tok.bos_token_id:
                ids = ids[1:]
            answer_len = len(tok(response, add_special_tokens=False)["input_ids"]) + 2
        elif self.input_format == "pair":
            ids = tok(prompt, response)["input_ids"]
            answer_len = len(tok(response, add_special_tokens=False)["input_ids"]) + 1
        else:
            ids = tok(prompt + response)["input_ids"]
            answer_len = len(tok(response, add_special_tokens=False)["input_ids"]) + 1
        if len(ids) > self.max_len:
            # cut the prompt side (from the left), never the answer
            keep_answer = min(answer_len, self.max_len)
            head = self.max_len - keep_answer
            ids = ids[:1] + ids[len(ids) - (self.max_len - 1) :] if head > 0 else ids[-self.max_len :]
        return ids

    @torch.no_grad()
    def __call__(self, batch: RewardInput) -> torch.Tensor:
        if self.offload:
            self.model.to(self.device)
        scores = []
        pad = self.tokenizer.pad_token_id
        firsts = batch.prompts if self.input_format == "concat" else (batch.questions or batch.prompts)
        for s in range(0, len(batch.prompts), self.micro):
            encoded = [
                self._encode_one(p, r)
                for p, r in zip(firsts[s : s + self.micro], batch.responses[s : s + self.micro])
            ]
            width = max(len(e) for e in encoded)
            ids = torch.full((len(encoded), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, e in enumerate(encoded):
                ids[i, : len(e)] = torch.tensor(e)
                mask[i, : len(e)] = 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            col = self.chosen_label if self.chosen_label is not None else 0
            if logits.shape[-1] == 1 and self.chosen_label:
                raise UserError(
                    f"--reward.chosen_label {self.chosen_label}: the reward model has a single output."
                )
            scores.append(logits[:, col].float().cpu())
        if self.offload:
            self.model.to("cpu")
        return torch.cat(scores)


class PythonRewardSource:
    """A file exposing ``reward_func(queries, prompts, labels)``, called once per batch."""

    def __init__(self, path: str):
        file = Path(path)
        if not file.is_file():
            raise UserError(f"--reward.remote_url {path}: no such Python file.")
        spec = importlib.util.spec_from_file_location(f"repulse_reward_{file.stem}", file)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        try:
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception as exc:  # the user's code: report it in one line
            raise UserError(
                f"--reward.remote_url {path}: importing it failed: {type(exc).__name__}: {exc}"
            ) from None
        if not callable(getattr(module, "reward_func", None)):
            raise UserError(
                f"--reward.remote_url {path}: the file must define reward_func(queries, prompts, labels)."
            )
        self.fn = module.reward_func
        self.name = file.stem

    def __call__(self, batch: RewardInput) -> torch.Tensor:
        out = self.fn(batch.queries, batch.prompts, batch.labels)
        if isinstance(out, dict):
            out = out.get("rewards")
        rewards = torch.as_tensor(out, dtype=torch.float32).flatten()
        if rewards.numel() != len(batch.queries):
            raise UserError(
                f"reward_func in {self.name} returned {rewards.numel()} rewards for {len(batch.queries)} samples."
            )
        return rewards


def _http_body(exc: urllib.error.HTTPError, limit: int = 300) -> str:
    """The first ``limit`` characters of an error answer's body, on one line."""
    try:
        raw = exc.read()
    except Exception:  # the body itself may be cut off; the status still says enough
        return ""
    text = " ".join(raw.decode("utf-8", errors="replace").split())
    return text[:limit] + ("..." if len(text) > limit else "")


def post_json(url: str, payload: dict, timeout: float, retries: int) -> dict:
    """POST ``payload`` as JSON and return the JSON answer.

    Tried ``1 + retries`` times, with back-off (0.2 s, 0.4 s, ... at most 2 s between tries), when
    the server cannot be reached, does not answer within ``timeout`` seconds, drops the
    connection, answers HTTP 5xx or answers something that is not JSON. An HTTP 4xx answer says
    the request itself is wrong: it is not retried, and the error shows its status and body.
    A server that never answers is one clear error naming the URL and the number of tries.
    """
    data = json.dumps(payload).encode()
    tries = 1 + max(0, retries)
    failure = hint = ""
    for attempt in range(tries):
        if attempt:
            time.sleep(min(2.0, 0.2 * 2 ** (attempt - 1)))
        req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:  # an answer with an error status (before URLError: a subclass)
            body_text = _http_body(exc)
            status = f"HTTP {exc.code} {exc.reason}" + (f": {body_text}" if body_text else "")
            if 400 <= exc.code < 500:
                raise UserError(
                    f"--reward.remote_url {url}: the reward server rejected the request with {status}"
                ) from None
            failure, hint = f"answered {status}", ""
            continue
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
                failure = f"did not answer within --reward.timeout_s {timeout:g} s"
                hint = " Is it overloaded, or does it need a longer --reward.timeout_s?"
            else:
                failure = f"did not answer ({type(reason).__name__}: {reason})"
                hint = " Is it running (repulse serve-rm ...)?"
            continue
        try:
            return json.loads(body.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            failure, hint = f"answered something that is not JSON: {body[:200]!r}", " Is it a reward server?"
    plural = "try" if tries == 1 else "tries"
    raise UserError(
        f"--reward.remote_url {url}: the reward server {failure} after {tries} {plural} "
        f"(--reward.retries {retries}).{hint}"
    )


class HTTPRewardSource:
    """One or several reward servers; each batch is split into equal shards, one per server."""

    def __init__(self, urls: list[str], timeout: float, retries: int):
        self.urls = [
            u if u.rstrip("/").endswith("get_reward") else u.rstrip("/") + "/get_reward" for u in urls
        ]
        self.timeout, self.retries = timeout, retries
        self.name = "remote"

    def __call__(self, batch: RewardInput) -> torch.Tensor:
        from concurrent.futures import ThreadPoolExecutor

        n = len(batch.queries)
        k = len(self.urls)
        bounds = [(i * n // k, (i + 1) * n // k) for i in range(k)]

        def call(i: int) -> list[float]:
            lo, hi = bounds[i]
            if lo == hi:
                return []
            payload = {
                "query": batch.queries[lo:hi],
                "prompts": batch.prompts[lo:hi],
                "labels": batch.labels[lo:hi],
            }
            out = post_json(self.urls[i], payload, self.timeout, self.retries)
            rewards = out.get("rewards", out.get("scores"))
            if rewards is None or len(rewards) != hi - lo:
                raise UserError(f"{self.urls[i]} answered without one reward per query: {str(out)[:200]}")
            return [float(r) for r in rewards]

        with ThreadPoolExecutor(max_workers=k) as pool:
            parts = list(pool.map(call, range(k)))
        return torch.tensor([r for part in parts for r in part], dtype=torch.float32)


def build_reward_sources(reward_cfg: Any, device: torch.device, micro_batch_size: int) -> list[RewardSource]:
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
    raise UserError(f"--reward.reduction must be sum, mean or min, got {reduction!r}.")
