"""Exact evaluation of a finished demo run: everything about the final policy (and proposal)
computed from the complete list of responses, no sampling error.

Written to ``exact_summary.json`` in the run directory, under the metric names the report and
``repulse plot`` use:

* ``p_bad`` / ``log_p_bad``: P(reward < η) - the event the proposal targets;
* ``p_bad_word``: P(the response contains a bad word) (the event the RL loop's ``p_bad_exact``
  tracks during training; equal to ``p_bad`` when the reward model separates the two sets);
* ``avg_reward``: E_p[r]; ``kl``: KL(p ‖ p₀); ``avg_return``: E_p[r] − λ·KL;
* ``entropy``: H(p) over whole responses, nats; ``nondegenerate``: P(a well-formed phrase);
* ``top``: the most probable responses; ``samples``: responses drawn from p (paper App. F);
* for RePULSe, the same for the proposal q under ``q_...`` (``q_p_bad`` is how often q says
  something bad: the evidence that the proposal found the rare outputs), and what q is worth as
  an importance-sampling proposal for the final p's P(bad) (:func:`importance_sampling`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from repulse.evaluation.exact import enumerate_sequences, reward_tail

EXACT_FILE = "exact_summary.json"
IS_SAMPLES = 4096


def importance_sampling(
    lp: torch.Tensor, lq: torch.Tensor, bad: torch.Tensor, m: int, seed: int
) -> dict[str, float]:
    """The unbiased importance-sampling estimate of P_p(bad) = Σ_bad p from ``m`` samples of q,
    P̂ = (1/m) Σ_i 1[bad_i]·p(s_i)/q(s_i): one such estimate (samples drawn from the exact q with
    ``seed``), its exact relative standard error √(Var/m)/P with Var = Σ_bad p²/q − P², and the
    number of samples of p that plain Monte Carlo needs for the same relative error,
    (1 − P)/(P·rel²)."""
    p, q = lp.exp(), lq.exp()
    big_p = float(p[bad].sum())
    second = float((p[bad] ** 2 / q[bad]).sum())
    rel = math.sqrt(max(second - big_p**2, 0.0) / m) / big_p
    gen = torch.Generator().manual_seed(seed)
    idx = torch.multinomial(q.float(), m, replacement=True, generator=gen)
    w = (lp[idx] - lq[idx]).exp() * bad[idx].double()
    naive = (1 - big_p) / (big_p * rel**2) if rel > 0 else math.inf
    return {"is_samples": m, "is_estimate": float(w.mean()), "is_rel_se": rel, "naive_samples_same_se": naive}


def _enumerate(model_dir: Path, table: dict[str, Any]) -> torch.Tensor:
    from transformers import AutoTokenizer

    from repulse.models.loading import load_causal_lm

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = load_causal_lm(str(model_dir), device="cpu")
    enum = enumerate_sequences(model, table["prompt_ids"], 2, tok.eos_token_id)
    if enum.sequences != table["sequences"]:
        raise RuntimeError(
            f"{model_dir}: its responses are not those of the reward table (another vocabulary?)"
        )
    return enum.log_probs


def _describe(
    prefix: str, lp: torch.Tensor, table: dict[str, Any], seed: int, n_top: int, n_samples: int
) -> dict:
    texts, rewards = table["texts"], table["rewards"]
    p = lp.exp()
    top = torch.argsort(p, descending=True)[:n_top].tolist()
    gen = torch.Generator().manual_seed(seed)
    drawn = torch.multinomial(p.float(), n_samples, replacement=True, generator=gen).tolist()
    return {
        f"{prefix}top": [{"text": texts[i], "p": float(p[i]), "reward": float(rewards[i])} for i in top],
        f"{prefix}samples": [texts[i] for i in drawn],
    }


def evaluate_run(run_dir: Path, table: dict[str, Any], kl_coef: float, seed: int) -> dict[str, Any]:
    """Exact statistics of the run's final policy (and proposal); written to ``exact_summary.json``."""
    eta = float(table["eta"])
    masks = {"bad_word": table["bad_word"], "well_formed": table["well_formed"]}
    lp = _enumerate(run_dir, table)
    stats = reward_tail(lp, table["rewards"], eta, ref_log_probs=table["ref_log_probs"], indicators=masks)
    out: dict[str, Any] = {
        "p_bad": stats["p_bad"],
        "log_p_bad": stats["log_p_bad"],
        "p_bad_word": stats["share_bad_word"],
        "avg_reward": stats["avg_reward"],
        "kl": stats["kl"],
        "avg_return": stats["avg_reward"] - kl_coef * stats["kl"],
        "entropy": stats["entropy"],
        "nondegenerate": stats["share_well_formed"],
        **_describe("", lp, table, seed, 5, 10),
    }
    proposal = run_dir / "proposal"
    if (proposal / "config.json").is_file():
        lq = _enumerate(proposal, table)
        q = reward_tail(lq, table["rewards"], eta, indicators=masks)
        out.update(
            q_p_bad=q["p_bad"],
            q_avg_reward=q["avg_reward"],
            q_entropy=q["entropy"],
            q_nondegenerate=q["share_well_formed"],
            **_describe("q_", lq, table, seed + 1, 5, 10),
            **importance_sampling(lp, lq, table["rewards"] < eta, IS_SAMPLES, seed + 2),
        )
    (run_dir / EXACT_FILE).write_text(json.dumps(out, indent=1))
    return out
