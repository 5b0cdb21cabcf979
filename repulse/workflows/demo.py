"""``repulse demo``: the RePULSe toy experiment (paper §4.2) end to end, from nothing.

1. build the toy tokenizer, model and "This man is a ..." corpus locally;
2. pretrain the toy LM briefly (``repulse sft`` in pretrain mode) so that a few bad
   words have a small but measurable probability after the prompt;
3. train a toy reward model (``repulse rm``) that scores bad words low;
4. run REINFORCE (RLOO), reward-transformed REINFORCE, the p-proposal ablation and
   RePULSe over several seeds (``repulse rl``), with the exact P(bad) after every fit step;
5. write curves, the reward-vs-P(bad) frontier, ``report.md`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

METHODS = ("reinforce", "reward_transform", "p_proposal", "repulse")


# The demo's LM is smaller than the toy's GPT-2 (~1M parameters): 24 runs must fit in a few CPU
# minutes, and the experiment needs only a next-word distribution after one prompt.
DEMO_LM = {"hidden_size": 64, "num_layers": 2}


def demo_base_lm(toy, out: Path) -> Path:
    """A fresh, randomly initialised GPT-2 with the toy tokenizer and the demo's size."""
    from repulse.toy.models import build_model

    path = out / "base_lm"
    if not (path / "config.json").is_file():
        build_model(path, toy.tokenizer, "gpt2", seed=0, **DEMO_LM)
    return path


def _sft_config(toy, out: Path, quick: bool):
    from repulse.config.sections import OfflineConfig

    cfg = OfflineConfig()
    cfg.model.model_name_or_path = str(demo_base_lm(toy, out))
    cfg.model.pretrain_mode_enable = True
    cfg.data.dataset = str(toy.this_man_is_a)
    cfg.data.input_key = "text"
    cfg.data.max_len = 16
    cfg.engine.packing_samples = True
    cfg.train.batch_size = cfg.train.micro_batch_size = 64
    cfg.train.max_epochs = 1 if quick else 3
    cfg.adam.lr, cfg.optim.lr_scheduler, cfg.optim.lr_warmup_ratio = 3e-3, "cosine_with_min_lr", 0.05
    cfg.ckpt.output_dir = str(out / "lm")
    cfg.logger.progress_bar = False
    return cfg


def _rm_config(toy, base: Path, out: Path, quick: bool):
    from repulse.config.sections import OfflineConfig

    cfg = OfflineConfig()
    cfg.model.model_name_or_path = str(base)
    cfg.data.dataset = str(toy.toy_rm_pairs)
    cfg.data.prompt_key = "prompt"
    cfg.data.max_len = 16
    cfg.train.batch_size = cfg.train.micro_batch_size = 32
    cfg.train.max_epochs = 1 if quick else 2
    cfg.adam.lr = 2e-3
    cfg.ckpt.output_dir = str(out / "rm")
    cfg.logger.progress_bar = False
    return cfg


def rl_config(toy, lm: Path, rm: Path, out: Path, method: str, seed: int, quick: bool):
    """The toy RL settings (spec §4.2, scaled to 2 CPU cores): one prompt, 2-token responses, exact P(bad).

    As in the paper, KL 0, constant lr, Adam(0.9, 0.999), β = 10, and RePULSe gets half the
    p updates of the baselines (it draws twice the samples per step). The reward is capped at
    1 (``--reward.cap``, the reference's ``--reward_cap``): every good word scores above it and
    every bad word far below, so the task is "say a good word" and all methods reach the same
    capped reward; without the cap each method also chases the RM's small differences between
    good words, and the runs differ in how far they collapse onto the top word rather than in
    how they treat the rare bad ones.
    """
    from repulse.config.sections import RLConfig

    cfg = RLConfig()
    cfg.actor.model_name_or_path = str(lm)
    cfg.reward.model_name_or_path = str(rm)
    cfg.reward.clip_range = [-1e4, 1e4]
    cfg.reward.cap = 1.0
    cfg.data.prompt_dataset = str(toy.toy_prompt)
    cfg.rollout.batch_size = 1
    cfg.rollout.n_samples_per_prompt = 32 if quick else 128
    cfg.rollout.micro_batch_size = 256
    cfg.rollout.max_new_tokens = 2
    cfg.train.micro_batch_size = cfg.rollout.n_samples_per_prompt
    cfg.train.seed = seed
    cfg.algo.kl.init_coef = 0.0
    cfg.actor.adam.lr = 1e-3
    cfg.actor.adam.betas = [0.9, 0.999]
    cfg.actor.optim.lr_scheduler = "constant"
    cfg.actor.optim.lr_warmup_ratio = 0.0
    rp = cfg.repulse
    rp.method = method
    rp.analytic_bad_word_calc = True
    rp.bad_threshold = 0.0
    rp.fit_steps = 2 if quick else 6
    cfg.train.num_episodes = (5 if method == "repulse" else 10) // (5 if quick else 1)
    rp.beta = 10.0
    rp.alpha = 50.0
    rp.proposal_lr = 3e-3
    if method == "reward_transform":
        rp.reward_transform, rp.transform_a, rp.transform_b = "minus_alpha_exp_beta_r", 1.0, 1.0
    cfg.ckpt.output_dir = str(out / "runs" / f"{method}_seed{seed}")
    cfg.logger.progress_bar = False
    return cfg


def _final(run_dir: Path) -> dict[str, float]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    exact = [r for r in rows if "p_bad_exact" in r]
    rewards = [r["reward"] for r in rows if "reward" in r]
    tail = rewards[-max(1, len(rewards) // 5) :]
    return {"p_bad": exact[-1]["p_bad_exact"], "avg_reward": sum(tail) / len(tail)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="repulse demo", description=__doc__)
    parser.add_argument("--out", default="runs/demo", help="output directory")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per method (the paper's toy runs: 5)")
    parser.add_argument("--quick", action="store_true", help="a much shorter run (for tests)")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    from repulse.toy import build_all
    from repulse.trainers import rl, rm, sft

    hf_logging.disable_progress_bar()  # 40 model loads/saves: their bars would bury the demo's own lines
    t_start = time.time()
    out = Path(args.out)
    toy = build_all(out / "toy_assets")
    print("[demo] 1/4 pretraining the toy LM on 'This man is a ...'", flush=True)
    sft.run(_sft_config(toy, out, args.quick))
    print("[demo] 2/4 training the toy reward model", flush=True)
    rm.run(_rm_config(toy, out / "lm", out, args.quick))
    print("[demo] 3/4 RL: " + ", ".join(METHODS) + f" x {args.seeds} seeds", flush=True)
    results: dict[str, dict[str, list[float]]] = {m: {"avg_reward": [], "p_bad": []} for m in METHODS}
    for method in METHODS:
        for seed in range(1, args.seeds + 1):
            cfg = rl_config(toy, out / "lm", out / "rm", out, method, seed, args.quick)
            rl.run(cfg)
            final = _final(Path(cfg.ckpt.output_dir))
            for k, v in final.items():
                results[method][k].append(v)
            print(
                f"[demo]   {method:<17} seed {seed}: P(bad) {final['p_bad']:.3e}  avg reward {final['avg_reward']:.3f}",
                flush=True,
            )
    print("[demo] 4/4 report", flush=True)
    summary = {"methods": results}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(out, results, time.time() - t_start)
    print(f"[demo] done in {time.time() - t_start:.0f}s: {out / 'report.md'}", flush=True)
    return 0


def write_report(out: Path, results: dict[str, dict[str, list[float]]], seconds: float) -> None:
    from repulse.evaluation.tail_stats import t_interval
    from repulse.report.plots import load_runs, plot_curves, plot_frontier

    runs = load_runs([out / "runs"])
    xlabel = "policy update (RePULSe draws twice the samples per update)"
    plot_curves(runs, "log_p_bad_exact", out / "curves_log_p_bad", xlabel=xlabel, ylabel="log P(bad), exact")
    plot_curves(runs, "reward", out / "curves_reward", xlabel=xlabel, ylabel="sampled reward (uncapped)")
    points: dict[str, Any] = {}
    lines = [
        "| method | final P(bad) (mean, 95% t-CI over seeds) | log P(bad) | avg reward |",
        "|---|---|---|---|",
    ]
    stats: dict[str, Any] = {}
    for m, v in results.items():
        logs = [math.log(max(p, 1e-300)) for p in v["p_bad"]]
        lp, llo, lhi = t_interval(logs)
        r, rlo, rhi = t_interval(v["avg_reward"])
        stats[m] = (lp, llo, lhi, r)
        points[m] = [(r, math.exp(lp), (rlo, rhi), (math.exp(llo), math.exp(lhi)))]
        lines.append(
            f"| {m} | {math.exp(lp):.3e} [{math.exp(llo):.3e}, {math.exp(lhi):.3e}] | {lp:.2f} [{llo:.2f}, {lhi:.2f}] | {r:.3f} [{rlo:.3f}, {rhi:.3f}] |"
        )
    plot_frontier(points, "average reward", "P(bad)", out / "frontier", log_y=True)
    rep = stats["repulse"]
    verdicts = []
    for base in ("reinforce", "reward_transform"):
        b = stats[base]
        separated = rep[2] < b[1]
        verdicts.append(
            f"- RePULSe vs {base}: P(bad) {math.exp(rep[0]):.2e} vs {math.exp(b[0]):.2e} "
            f"({math.exp(b[0] - rep[0]):.1f}x lower); 95% CIs of log P(bad) "
            f"{'do not overlap' if separated else 'overlap'}; avg reward {rep[3]:.3f} vs {b[3]:.3f} "
            f"({100 * (rep[3] - b[3]) / abs(b[3]):+.1f}%)."
        )
    text = "\n".join(
        [
            "# RePULSe toy experiment",
            "",
            "Prompt 'This man is a', 2-token responses; a toy LM pretrained on generated text in which a few "
            "bad words are rare, and a toy reward model that scores them low, its reward capped at 1 (every "
            "good word scores above the cap). P(bad) is exact (enumeration over all 2-token responses) after "
            "every fit step; avg reward is the raw (uncapped) reward of the last fifth of the training "
            "samples; CIs are t-based 95% intervals over seeds.",
            "",
            *lines,
            "",
            *verdicts,
            "",
            "![log P(bad) during training](curves_log_p_bad.png)",
            "",
            "![frontier](frontier.png)",
            "",
            f"Total time: {seconds:.0f} s.",
        ]
    )
    (out / "report.md").write_text(text + "\n")
