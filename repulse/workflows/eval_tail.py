"""``repulse eval-tail``: how often does a policy produce a bad output?

Sampling (``repulse eval-tail --tail.policy DIR --data.prompt_dataset F --reward... ``)
draws N samples per held-out prompt over k passes and writes **every** sample — prompt,
response, reward, return r − λ·KL, KL and log-prob — to one ``samples.jsonl``
(gathered across processes, written once by rank 0), plus ``tail_summary.json`` for
the thresholds given. ``repulse eval-tail report FILE... --eta X`` recomputes the
summary for any threshold later, with bootstrap CIs over files (= seeds/runs).
With ``--tail.proposal Q`` the samples come from q and the summary adds the
importance-sampling estimate of P_p(r < η), printed with its effective sample size; a
one-line warning says when that ESS is too small to trust it (ESS < 100 or < 1% of the
samples: ``repulse.evaluation.importance.ess_too_small``). The estimate is reliable for the
event the proposal was trained to find (reward < the η it targets), not for any event; the
self-normalised figure is biased and labelled so (``self_normalised_biased``).
``--tail.exact`` adds the exact P(bad).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from repulse.config import parse_config
from repulse.config.sections import EvalTailConfig
from repulse.errors import UserError
from repulse.rl.rewards import check_reward_section
from repulse.run.dirs import releases_output_dirs


def validate(cfg: EvalTailConfig) -> None:
    if not cfg.tail.policy:
        raise UserError("--tail.policy is required: the model directory to evaluate.")
    if not cfg.data.prompt_dataset:
        raise UserError("--data.prompt_dataset is required: the held-out prompts.")
    if not (cfg.reward.model_name_or_path or cfg.reward.remote_url):
        raise UserError("give a reward: --reward.model_name_or_path and/or --reward.remote_url.")
    check_reward_section(cfg.reward)
    if cfg.tail.kl_coef and not cfg.ref.model_name_or_path:
        raise UserError(
            "--tail.kl_coef needs --ref.model_name_or_path (the reference of the KL in the return)."
        )
    if cfg.tail.passes < 1 or cfg.rollout.n_samples_per_prompt < 1:
        raise UserError("--tail.passes and --rollout.n_samples_per_prompt must be at least 1.")


def main(argv: list[str]) -> int:
    if argv and argv[0] == "report":
        return report_main(argv[1:])
    cfg = parse_config("eval-tail", EvalTailConfig, argv, validate)
    if cfg is None:
        return 0
    return sample_and_summarise(cfg)


def _gather(rows: list[dict]) -> list[dict]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        parts: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, rows)
        return [r for part in parts for r in part]
    return rows


# what a run of eval-tail writes into its output directory (another run's are not replaced silently)
TAIL_RESULTS = ("tail_summary.json", "samples.jsonl")


@releases_output_dirs
@torch.no_grad()
def sample_and_summarise(cfg: EvalTailConfig) -> int:
    from repulse.config import write_resolved
    from repulse.data.prompts import PromptDataset
    from repulse.data.sources import load_mixture
    from repulse.engine.dist import init_distributed
    from repulse.losses.kl import KL_ESTIMATORS
    from repulse.models.loading import load_causal_lm, load_tokenizer
    from repulse.rl.experience import batched_logprobs
    from repulse.rl.rewards import build_reward_sources, score_rewards, truncated_total
    from repulse.rl.rollout import hf_generate
    from repulse.rl.scoring import reward_input
    from repulse.run.rng import seed_everything
    from repulse.run.start import claim_output_dir, on_rank0

    rank, world, _, device = init_distributed()
    seed_everything(cfg.train.seed)
    t = cfg.tail
    out = output_dir(cfg)

    def claim() -> None:
        claim_output_dir(out, "tail_config.yaml", TAIL_RESULTS, cfg.ckpt.overwrite)
        write_resolved(cfg, out, "tail_config.yaml")

    on_rank0(claim)
    tok = load_tokenizer(t.policy, chat_template=cfg.data.tokenizer_chat_template, padding_side="left")

    def lm(path: str):
        return load_causal_lm(
            path,
            dtype=cfg.engine.param_dtype,
            attn=cfg.engine.attn_implementation,
            device=device,
            trainable=False,
        )

    policy = lm(t.policy)
    sampler = lm(t.proposal) if t.proposal else policy
    ref = lm(cfg.ref.model_name_or_path) if cfg.ref.model_name_or_path else None
    rewards = build_reward_sources(cfg.reward, device, cfg.rollout.micro_batch_size)
    # one random stream per rank: with a shared one, ranks would draw the same samples
    torch.manual_seed(cfg.train.seed + 1_000_003 * rank)
    rows_in = load_mixture(
        cfg.data.prompt_dataset,
        cfg.data.prompt_probs,
        split=cfg.data.prompt_split,
        max_samples=cfg.data.max_samples,
        seed=cfg.train.seed,
        flag="--data.prompt_dataset",
        probs_flag="--data.prompt_probs",
    )
    prompts = PromptDataset(rows_in, tok, cfg.data)
    # Every rank must make the same number of generate calls (they synchronise with each
    # other when world > 1), so shorter shards are padded with a copy of prompt 0 whose
    # samples are dropped.
    per_rank = -(-len(prompts) // world)
    mine = list(range(rank, len(prompts), world))
    real = len(mine)
    mine += [0] * (per_rank - real)
    r = cfg.rollout
    chunk = max(1, r.micro_batch_size // r.n_samples_per_prompt)
    rows: list[dict] = []
    for k in range(t.passes):
        for s in range(0, len(mine), chunk):
            items = [prompts[i] for i in mine[s : s + chunk]]
            n_real = max(0, min(real - s, len(items))) * r.n_samples_per_prompt
            ids = [it["prompt_ids"] for it in items]
            max_new = r.max_new_tokens or max(1, cfg.data.max_len - max(len(p) for p in ids))
            samples = hf_generate(
                sampler,
                ids,
                n_samples=r.n_samples_per_prompt,
                max_new_tokens=max_new,
                temperature=r.temperature,
                top_p=r.top_p,
                top_k=r.top_k,
                eos_id=tok.eos_token_id,
                pad_id=tok.pad_token_id,
                micro_batch_size=r.micro_batch_size,
                device=device,
            ).to(device)
            mask = samples.action_mask.float()
            logp = batched_logprobs(policy, samples, r.micro_batch_size)
            logq = batched_logprobs(sampler, samples, r.micro_batch_size) if t.proposal else logp
            kl = (
                (KL_ESTIMATORS["k1"](logp, batched_logprobs(ref, samples, r.micro_batch_size)) * mask).sum(-1)
                if ref is not None
                else torch.zeros(mask.shape[0], device=device)
            )
            batch = reward_input(tok, samples, items)
            reward = score_rewards(rewards, batch, cfg.reward.reduction)
            for i in range(n_real):
                row = {
                    "prompt": batch.prompts[i],
                    "response": batch.responses[i],
                    "reward": float(reward[i]),
                    "return": float(reward[i]) - t.kl_coef * float(kl[i]),
                    "kl": float(kl[i]),
                    "logprob": float((logp[i] * mask[i]).sum()),
                    "pass": k,
                    "seed": cfg.train.seed,
                }
                if t.proposal:
                    row["log_q"] = float((logq[i] * mask[i]).sum())
                rows.append(row)
    rows = _gather(rows)
    # reward-model inputs cut to fit the model (prompt side), summed over processes
    extra: dict[str, Any] = {"reward_truncated": sum(_gather([truncated_total(rewards)]))}
    if t.exact:
        from repulse.evaluation.exact import bad_token_ids_from_words, exact_prob_bad
        from repulse.toy import BAD_WORDS

        ids = bad_token_ids_from_words(tok, t.bad_words or list(BAD_WORDS))
        extra["exact_log_p_bad"] = float(
            exact_prob_bad(policy, tok, prompts[0]["prompt_ids"], ids, t.exact_max_tokens, log=True)
        )
    if rank != 0:
        return 0
    path = out / "samples.jsonl"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    tmp.replace(path)
    if t.negdata_threshold is not None:
        bad = {(x["prompt"], x["response"]): x for x in rows if x["reward"] < t.negdata_threshold}
        neg = out / "negdata.jsonl"
        neg.with_suffix(".tmp").write_text(
            "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in bad.values())
        )
        neg.with_suffix(".tmp").replace(neg)
    summary = summarise_files([path], t.eta, t.cvar_levels, seed=cfg.train.seed)
    summary.update(extra)
    (out / "tail_summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"[repulse] wrote {len(rows)} samples to {path}; summary in {out / 'tail_summary.json'}", flush=True
    )
    print_importance(summary, sys.stdout)
    if extra["reward_truncated"]:
        print(
            f"[repulse] {extra['reward_truncated']} reward-model inputs were longer than the reward model reads "
            "and were cut on the prompt side (the answer kept).",
            flush=True,
        )
    return 0


def output_dir(cfg: EvalTailConfig) -> Path:
    """``--ckpt.output_dir``, else the policy's run directory (it holds a repulse ``config.yaml``)."""
    if cfg.ckpt.output_dir:
        return Path(cfg.ckpt.output_dir)
    policy = Path(cfg.tail.policy or "")
    return policy if (policy / "config.yaml").is_file() else Path("tail_eval")


def read_samples(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"{path}: no such samples file (write one with repulse eval-tail).")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{n}: not valid JSON ({exc.msg}).") from None
    if not rows:
        raise UserError(f"{path}: no samples.")
    return rows


def summarise_files(
    paths: list[Path], etas: list[float], levels: list[float], seed: int = 0
) -> dict[str, Any]:
    """One summary per threshold; each file is one seed/run. Adds the IS estimate when log_q is present."""
    import numpy as np

    from repulse.evaluation.importance import importance_prob_below
    from repulse.evaluation.tail_stats import summarise

    runs = [read_samples(Path(p)) for p in paths]
    entries = {
        str(p): {
            "reward": np.array([r["reward"] for r in rows]),
            "return": np.array([r.get("return", r["reward"]) for r in rows]),
        }
        for p, rows in zip(paths, runs)
    }
    out: dict[str, Any] = {"files": [str(p) for p in paths], "by_eta": {}}
    proposal = all("log_q" in rows[0] for rows in runs)
    for eta in etas:
        block = summarise(entries, eta, levels, seed=seed)
        # with a proposal, the plain statistics describe q's samples; P(r < eta) under p is "importance"
        block["samples_from"] = "proposal" if proposal else "policy"
        if proposal:
            block["importance"] = [
                importance_prob_below(
                    [r["logprob"] for r in rows], [r["log_q"] for r in rows], [r["reward"] for r in rows], eta
                ).as_dict()
                for rows in runs
            ]
        out["by_eta"][f"{eta:g}"] = block
    return out


def print_importance(summary: dict[str, Any], stream: Any) -> None:
    """One line per importance-sampling estimate (with its ESS), and a warning line for each
    estimate whose ESS is too small to trust."""
    from repulse.evaluation.importance import importance_summary_lines

    files = summary.get("files", [])
    for eta, block in summary.get("by_eta", {}).items():
        for i, est in enumerate(block.get("importance") or []):
            where = files[i] if len(files) > 1 and i < len(files) else ""
            line, warnings = importance_summary_lines(float(eta), est, where)
            print(f"[repulse] {line}", file=stream, flush=True)
            for w in warnings:
                print(f"[repulse] warning: {w}", file=stream, flush=True)


def report_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="repulse eval-tail report", description="tail summary of saved samples"
    )
    parser.add_argument("samples", nargs="+", help="samples.jsonl files (one per seed/run)")
    parser.add_argument("--eta", type=float, nargs="+", required=True, help="bad-output thresholds")
    parser.add_argument("--cvar", type=float, nargs="*", default=[0.01], help="CVaR levels")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--out", default=None, help="write the JSON here (default: print)")
    args = parser.parse_args(argv)
    summary = summarise_files([Path(p) for p in args.samples], args.eta, args.cvar, args.seed)
    print_importance(summary, sys.stderr)  # stdout may be the JSON itself
    text = json.dumps(summary, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0
