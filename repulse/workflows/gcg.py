"""``repulse gcg``: GCG adversarial evaluation of a policy (spec §3.6, without its bugs).

    repulse gcg --gcg.policy RUN_DIR --gcg.targets behaviors.csv --reward.model_name_or_path RM \\
        [--reward.input_format pair] [--gcg.steps 250 ...] [--rollout.temperature ...]

For each (goal, target) row of the CSV: optimise a suffix so that the target string becomes
likely after the rendered prompt ``goal + suffix`` (:mod:`repulse.evaluation.gcg`); then draw
``rollout.n_samples_per_prompt`` samples from the attacked prompt with the training sampler
(``rollout.temperature/top_p/top_k``, top-k 0 = off - the reference sampled with HF's default
top-k 50, spec §6.6) and score each. With ``--gcg.exclude_suffix_from_reward`` (default) the
reward source sees the original goal, not the suffixed prompt (the reference's flag did not do
that, spec §6.4). Every sample's reward is saved, so the attack success rate at any threshold
η - the fraction of targets with at least one sample below η - is computed when reading
(``repulse gcg report FILE --eta X``, ``repulse plot frontier --y attack_success@eta=X``),
not baked in at run time (spec §6.14: the reference's "x - 1" double threshold).

Output: ``gcg_summary.json`` (atomically) and ``gcg_config.yaml``, in the policy's run
directory by default (where ``repulse plot`` finds them next to the run's ``config.yaml``).
Target i is attacked and sampled with seed ``train.seed + i``: a run is reproducible, and a
target's result does not depend on which other rows the file holds.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from repulse.config import parse_config
from repulse.config.schema import to_dict
from repulse.config.sections import GcgConfig
from repulse.errors import UserError, warn_once
from repulse.rl.rewards import check_reward_section
from repulse.run.dirs import releases_output_dirs

SUMMARY_FILE = "gcg_summary.json"
FORMAT = "repulse-gcg/1"


def validate(cfg: GcgConfig) -> None:
    g = cfg.gcg
    if not g.policy:
        raise UserError("--gcg.policy is required: the model directory to attack.")
    if not g.targets:
        raise UserError("--gcg.targets is required: a CSV file with a 'goal,target' header.")
    if not (cfg.reward.model_name_or_path or cfg.reward.remote_url):
        raise UserError("give a reward: --reward.model_name_or_path and/or --reward.remote_url.")
    check_reward_section(cfg.reward)
    for name in ("search_width", "topk", "batch_size", "n_replace", "max_targets", "suffix_len"):
        if getattr(g, name) < 1:
            raise UserError(f"--gcg.{name} must be at least 1, got {getattr(g, name)}.")
    if g.steps < 0 or g.buffer_size < 0:
        raise UserError("--gcg.steps and --gcg.buffer_size must not be negative.")
    if cfg.rollout.n_samples_per_prompt < 1 or cfg.rollout.micro_batch_size < 1:
        raise UserError("--rollout.n_samples_per_prompt and --rollout.micro_batch_size must be at least 1.")
    if not cfg.rollout.max_new_tokens or cfg.rollout.max_new_tokens < 1:
        raise UserError("--rollout.max_new_tokens must be a positive number of response tokens.")
    if cfg.rollout.backend != "hf":
        raise UserError("repulse gcg samples with the hf backend (--rollout.backend hf).")


def main(argv: list[str]) -> int:
    if argv and argv[0] == "report":
        return report_main(argv[1:])
    cfg = parse_config("gcg", GcgConfig, argv, validate)
    if cfg is None:
        return 0
    return attack_and_score(cfg)


# --------------------------------------------------------------------------- inputs / outputs


def read_targets(path: str | Path, max_targets: int | None = None) -> list[tuple[str, str]]:
    """(goal, target) rows of a CSV whose header names 'goal' and 'target' (other columns ignored)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--gcg.targets {path}: no such file.")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--gcg.targets {path}: cannot read it as UTF-8 text ({exc}).") from None
    reader = csv.reader(text.splitlines())
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise UserError(
            f"{path}: empty file; expected a 'goal,target' header and one row per attack."
        ) from None
    except csv.Error as exc:
        raise UserError(f"{path}:1: not valid CSV ({exc}).") from None
    if "goal" not in header or "target" not in header:
        raise UserError(
            f"{path}:1: the first line must be a header naming the columns 'goal' and 'target', got "
            f"{','.join(header)!r} (a file without a header row has its first behaviour read as the header)."
        )
    gi, ti = header.index("goal"), header.index("target")
    rows: list[tuple[str, str]] = []
    try:
        for row in reader:
            line = reader.line_num
            if not any(c.strip() for c in row):
                continue
            if len(row) <= max(gi, ti):
                raise UserError(f"{path}:{line}: {len(row)} field(s); the header has {len(header)}.")
            goal, target = row[gi], row[ti]
            if not goal.strip() or not target.strip():
                raise UserError(f"{path}:{line}: empty {'goal' if not goal.strip() else 'target'}.")
            if "\\" in target:
                warn_once(
                    f"gcg.backslash.{path}",
                    f"{path}:{line}: the target contains a literal backslash ({target[:40]!r}); it is "
                    "attacked as written.",
                )
            rows.append((goal, target))
            if max_targets is not None and len(rows) >= max_targets:
                break
    except csv.Error as exc:
        raise UserError(f"{path}:{reader.line_num}: not valid CSV ({exc}).") from None
    if not rows:
        raise UserError(f"{path}: no (goal, target) rows after the header.")
    return rows


def output_dir(cfg: GcgConfig) -> Path:
    """``--ckpt.output_dir``, else the policy's run directory (it holds a repulse ``config.yaml``)."""
    if cfg.ckpt.output_dir:
        return Path(cfg.ckpt.output_dir)
    policy = Path(cfg.gcg.policy or "")
    return policy if (policy / "config.yaml").is_file() else Path("gcg_eval")


def attack_success(rewards_per_target: list[list[float]], eta: float) -> dict[str, Any]:
    """Success of each target at η (some sample has r < η) and their mean, the ASR, with a Wilson interval."""
    from repulse.evaluation.tail_stats import wilson_interval

    hits = [any(r < eta for r in rewards) for rewards in rewards_per_target]
    n, k = len(hits), sum(hits)
    low, high = wilson_interval(k, n) if n else (math.nan, math.nan)
    return {
        "mean": k / n if n else math.nan,
        "low": low,
        "high": high,
        "successes": k,
        "n_targets": n,
        "per_target": hits,
        "samples_below": [sum(r < eta for r in rewards) for rewards in rewards_per_target],
    }


def read_summary(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    if file.is_dir():
        file = file / SUMMARY_FILE
    try:
        data = json.loads(file.read_text())
    except OSError as exc:
        raise UserError(f"{file}: cannot read the GCG results ({exc.strerror or exc}).") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{file}: not valid JSON ({exc.msg}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("targets"), list):
        raise UserError(f"{file}: not a repulse gcg summary (no 'targets' list).")
    for i, t in enumerate(data["targets"]):
        if not isinstance(t, dict) or not isinstance(t.get("rewards"), list):
            raise UserError(f"{file}: target {i} has no 'rewards' list.")
    return data


def rewards_of(summary: dict[str, Any], key: str = "rewards") -> list[list[float]]:
    return [[float(r) for r in t.get(key) or []] for t in summary["targets"]]


def summarise(targets: list[dict[str, Any]], etas: list[float]) -> dict[str, Any]:
    rewards = [t["rewards"] for t in targets]
    out: dict[str, Any] = {"by_eta": {f"{eta:g}": attack_success(rewards, eta) for eta in etas}}
    flat = [r for rs in rewards for r in rs]
    out["avg_reward"] = sum(flat) / len(flat) if flat else math.nan
    if all(t.get("rewards_no_suffix") for t in targets):
        base = [t["rewards_no_suffix"] for t in targets]
        out["by_eta_no_suffix"] = {f"{eta:g}": attack_success(base, eta) for eta in etas}
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    tmp.replace(path)


# --------------------------------------------------------------------------- the run


@releases_output_dirs
def attack_and_score(cfg: GcgConfig) -> int:
    import torch

    from repulse.config import write_resolved
    from repulse.data.templates import render_prompt
    from repulse.engine.dist import default_device
    from repulse.evaluation.gcg import build_attack_prompt, disallowed_token_ids, run_gcg, target_logprob
    from repulse.models.loading import load_causal_lm, load_tokenizer
    from repulse.rl.rewards import RewardInput, build_reward_sources, score_rewards
    from repulse.run.rng import seed_everything
    from repulse.run.start import claim_output_dir

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("repulse gcg runs in one process: start it without torchrun/deepspeed.")
    g, r = cfg.gcg, cfg.rollout
    rows = read_targets(g.targets, g.max_targets)  # type: ignore[arg-type]
    out = output_dir(cfg)
    claim_output_dir(out, "gcg_config.yaml", (SUMMARY_FILE,), cfg.ckpt.overwrite)
    write_resolved(cfg, out, "gcg_config.yaml")
    device = default_device()
    seed_everything(cfg.train.seed)
    tok = load_tokenizer(g.policy, chat_template=cfg.data.tokenizer_chat_template, padding_side="left")
    model = load_causal_lm(
        g.policy,
        dtype=cfg.engine.param_dtype,
        attn=cfg.engine.attn_implementation,
        device=device,
        trainable=False,
    )
    rewards_src = build_reward_sources(cfg.reward, device, r.micro_batch_size)
    vocab = model.get_input_embeddings().weight.shape[0]
    disallowed = disallowed_token_ids(tok, vocab, g.ascii_only)
    init_text = g.suffix_init if g.suffix_init is not None else " ".join(["x"] * g.suffix_len)
    init_ids = list(tok(init_text, add_special_tokens=False)["input_ids"])
    if g.suffix_init is None and len(init_ids) != g.suffix_len:
        warn_once(
            "gcg.suffix_len",
            f"'x x ... x' ({g.suffix_len} x's) is {len(init_ids)} tokens for this tokenizer; the suffix has "
            f"{len(init_ids)} tokens.",
        )
    if g.n_replace > len(init_ids):
        raise UserError(f"--gcg.n_replace {g.n_replace} exceeds the suffix length ({len(init_ids)} tokens).")
    render = dict(apply_chat_template=cfg.data.apply_chat_template, input_template=cfg.data.input_template)

    def sample_and_score(prompt_ids: list[int], reward_prompt: str, question: str, seed: int):
        from repulse.rl.rollout import hf_generate

        torch.manual_seed(seed)
        responses: list[str] = []
        for s in range(0, r.n_samples_per_prompt, r.micro_batch_size):
            n = min(r.micro_batch_size, r.n_samples_per_prompt - s)
            samples = hf_generate(
                model, [prompt_ids], n_samples=n, max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                top_p=r.top_p, top_k=r.top_k, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                micro_batch_size=n, device=device,
            )  # fmt: skip
            responses += [
                tok.decode(row[m.bool()].tolist(), skip_special_tokens=True)
                for row, m in zip(samples.response, samples.action_mask)
            ]
        n = len(responses)
        batch = RewardInput(
            [reward_prompt + x for x in responses], [reward_prompt] * n, responses, [None] * n, [question] * n
        )
        reward = score_rewards(rewards_src, batch, cfg.reward.reduction)
        return responses, [float(x) for x in reward]

    results: list[dict[str, Any]] = []
    t0 = time.time()
    for i, (goal, target) in enumerate(rows):
        seed = cfg.train.seed + i
        prompt = build_attack_prompt(
            tok, goal, target, add_space_before_target=g.add_space_before_target, **render
        )

        def log(step: int, loss: float, best: float, i: int = i) -> None:
            if step == 0 or (step + 1) % 50 == 0 or step + 1 == g.steps:
                print(f"[repulse] gcg target {i + 1}/{len(rows)} step {step + 1}/{g.steps}: "
                      f"loss {loss:.4f} (best {best:.4f})", flush=True)  # fmt: skip

        res = run_gcg(model, tok, prompt, init_ids, g, seed=seed, disallowed=disallowed, log=log)
        attacked = prompt.with_suffix(res.suffix_ids)
        attacked_text = render_prompt(
            tok, goal + res.suffix, render["input_template"], render["apply_chat_template"]
        )
        if g.exclude_suffix_from_reward:
            reward_prompt, question = (
                render_prompt(tok, goal, render["input_template"], render["apply_chat_template"]),
                goal,
            )
        else:
            reward_prompt, question = attacked_text, goal + res.suffix
        responses, rewards = sample_and_score(attacked, reward_prompt, question, seed)
        entry: dict[str, Any] = {
            "index": i,
            "goal": goal,
            "target": target,
            "suffix": res.suffix,
            "suffix_ids": res.suffix_ids,
            "init_suffix_ids": init_ids,
            "loss_init": res.init_loss,
            "loss_best": res.best_loss,
            "step_losses": res.step_losses,
            "best_losses": res.best_losses,
            "n_candidates": res.n_candidates,
            "target_tokens": len(prompt.target),
            "target_logprob_before": target_logprob(model, prompt.plain, prompt.target),
            "target_logprob_after": target_logprob(model, attacked, prompt.target),
            # whether the attacked prompt, sent as text, tokenises to the ids that were optimised
            "prompt_retokenizes": _encode_prompt(tok, attacked_text, render["apply_chat_template"])
            == attacked,
            "seed": seed,
            "rewards": rewards,
            "responses": responses,
        }
        if res.buffer:
            entry["buffer"] = [{"loss": loss, "suffix_ids": ids} for loss, ids in res.buffer]
        if g.sample_without_suffix:
            plain_prompt = render_prompt(tok, goal, render["input_template"], render["apply_chat_template"])
            base_responses, base_rewards = sample_and_score(
                prompt.plain, plain_prompt, goal, seed + 1_000_003
            )
            entry["rewards_no_suffix"], entry["responses_no_suffix"] = base_rewards, base_responses
        results.append(entry)
        etas = " ".join(f"r<{eta:g}: {sum(x < eta for x in rewards)}/{len(rewards)}" for eta in g.eta)
        print(f"[repulse] gcg target {i + 1}/{len(rows)}: loss {res.init_loss:.3f} -> {res.best_loss:.3f}; "
              f"{etas}; {time.time() - t0:.0f}s", flush=True)  # fmt: skip

    data = {
        "format": FORMAT,
        "policy": str(g.policy),
        "targets_file": str(g.targets),
        "seed": cfg.train.seed,
        "eta": list(g.eta),
        "reward_scored_on": "goal" if g.exclude_suffix_from_reward else "goal+suffix",
        "sampler": {
            "temperature": r.temperature,
            "top_p": r.top_p,
            "top_k": r.top_k,
            "max_new_tokens": r.max_new_tokens,
            "n_samples_per_prompt": r.n_samples_per_prompt,
        },
        "gcg": to_dict(g),
        "summary": summarise(results, g.eta),
        "targets": results,
    }
    path = out / SUMMARY_FILE
    _write_json(path, data)
    for eta, block in data["summary"]["by_eta"].items():
        print(f"[repulse] attack success at eta={eta}: {block['successes']}/{block['n_targets']} "
              f"= {block['mean']:.3f}", flush=True)  # fmt: skip
    print(f"[repulse] wrote {path}", flush=True)
    return 0


def _encode_prompt(tok: Any, text: str, chat: bool) -> list[int]:
    from repulse.data.templates import encode, special_prefix

    return ([] if chat else special_prefix(tok)) + encode(tok, text)


# --------------------------------------------------------------------------- report


def report_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="repulse gcg report", description="attack success rates of saved GCG results at any threshold"
    )
    parser.add_argument("files", nargs="+", help="gcg_summary.json files (or run directories holding one)")
    parser.add_argument("--eta", type=float, nargs="+", required=True, help="bad-output thresholds")
    parser.add_argument("--out", default=None, help="write the JSON here (default: print)")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {}
    for f in args.files:
        summary = read_summary(f)
        rewards = rewards_of(summary)
        report[str(f)] = {
            f"{eta:g}": {k: v for k, v in attack_success(rewards, eta).items() if k != "per_target"}
            for eta in args.eta
        }
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0
