"""The toy's exact P(bad) during training, and harvesting of low-reward samples (negative data)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from repulse.config.sections import RLConfig
from repulse.errors import UserError
from repulse.rl.rewards import RewardInput


@torch.no_grad()
def exact_eval(cfg: RLConfig, roles, prompt_ids: list[int]) -> dict[str, float]:
    """Exact P(a bad word appears in the response) of p for ``prompt_ids`` (toy; spec §3.3)."""
    from repulse.evaluation.exact import bad_token_ids_from_words, exact_prob_bad

    words = cfg.repulse.bad_words
    if not words:
        from repulse.toy import BAD_WORDS

        words = list(BAD_WORDS)
    ids = bad_token_ids_from_words(roles.tokenizer, words)
    if not ids:
        raise UserError(f"--repulse.bad_words {words}: none of them is a token of the policy's tokenizer.")
    model = roles.policy.unwrapped()
    log_p = float(
        exact_prob_bad(model, roles.tokenizer, prompt_ids, ids, cfg.repulse.exact_max_tokens, log=True)
    )
    return {"p_bad_exact": math.exp(log_p), "log_p_bad_exact": log_p}


class NegDataSink:
    """Collects every sample with reward below a threshold, deduplicated, written once at the end."""

    def __init__(self, path: str, threshold: float, rank: int):
        self.path, self.threshold, self.rank = Path(path), threshold, rank
        self.seen: dict[tuple[str, str], float] = {}

    def add(self, texts: RewardInput, rewards: torch.Tensor) -> None:
        for p, r, v in zip(texts.prompts, texts.responses, rewards.tolist()):
            if v < self.threshold:
                self.seen.setdefault((p, r), v)

    def close(self) -> None:
        rows = [{"prompt": p, "response": r, "reward": v} for (p, r), v in self.seen.items()]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        if self.rank != 0:
            return
        unique = {(row["prompt"], row["response"]): row for row in rows}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in unique.values()))
        tmp.replace(self.path)


def negdata_sink(cfg: RLConfig, rank: int) -> NegDataSink | None:
    if not cfg.repulse.save_negdata:
        return None
    return NegDataSink(cfg.repulse.save_negdata, cfg.repulse.negdata_threshold, rank)
