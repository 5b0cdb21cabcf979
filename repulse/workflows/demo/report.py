"""The demo's outputs, every number and verdict rendered from the runs' JSON (the verdicts' words:
:mod:`repulse.workflows.demo.verdicts`).

* ``summary.json``: per setting, each method's headline hyper-parameters with per-seed
  ``avg_reward``, ``p_bad``, ``nondegenerate`` (and entropy, KL, ...), the whole sweep beside it,
  and ``claims`` - each comparison the report states, in machine-readable form
  (:mod:`repulse.workflows.demo.stats`);
* ``report.md``: the world (the reward model's score of every completion, the starting P(bad)),
  the design (settings and grids, fixed before the runs), per setting the headline table, the
  verdicts in words with numbers - including where RePULSe does not beat a baseline - the
  frontier (the same figure ``repulse plot frontier`` draws from the run directories), training
  curves over samples drawn, diversity, and samples from p and q;
* ``readme.md``: a paragraph for the README, from the same numbers;
* ``world/rm_scores.tsv``: every response with its reward and starting probability.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from repulse.evaluation.exact import kl_regularized_optimum, reward_tail
from repulse.toy import demo_corpus as corpus
from repulse.workflows.demo.stats import (
    BASELINES,
    CI,
    check_claims,
    confirm_claims,
    derive_claims,
    interval,
)
from repulse.workflows.demo.sweep import METHODS, Setting, config_summary, hp_label
from repulse.workflows.demo.verdicts import (
    COLLAPSED_BELOW,
    DEGENERATE_BELOW,
    against_repulse,
    against_text,
    claim_text,
    fi,
    fp,
    frontier_overall,
    frontier_verdicts,
    importance_sentence,
    load_text,
    lost_elsewhere,
    method_name,
    overall,
    point_label,
    proposal_sentence,
    readme_paragraph,
    time_text,
    variant_label,
    verdicts,
)

PER_SEED = ("avg_reward", "p_bad", "nondegenerate", "log_p_bad", "p_bad_word", "entropy", "kl", "avg_return")
Q_PER_SEED = ("q_p_bad", "q_nondegenerate", "is_estimate", "is_rel_se", "naive_samples_same_se")


# ----------------------------------------------------------------------------- formatting


# ----------------------------------------------------------------------------- the world


def summarise_world(world: Any) -> dict[str, Any]:
    """The world's facts: the starting LM's exact P(bad), the reward model's separation, η."""
    t = world.table()
    r, lp0, bad, wf = t["rewards"], t["ref_log_probs"], t["bad_word"], t["well_formed"]
    s0 = reward_tail(lp0, r, world.eta, indicators={"bad_word": bad, "well_formed": wf})
    below = r < world.eta
    wrong = (below != bad).nonzero().flatten().tolist()
    p0 = lp0.exp()
    junk = ~wf & ~bad
    groups = {
        "bad-word responses": bad,
        "well-formed responses without a bad word": wf & ~bad,
        "other (ill-formed) responses": junk,
    }
    digest = hashlib.sha256(json.dumps(t["eta_info"]).encode() + r.numpy().tobytes()).hexdigest()[:16]
    return {
        "p0_bad": s0["p_bad"],
        "p0_bad_word": s0["share_bad_word"],
        "p0_avg_reward": s0["avg_reward"],
        "p0_entropy": s0["entropy"],
        "p0_nondegenerate": s0["share_well_formed"],
        "eta": world.eta,
        "eta_info": t["eta_info"],
        "n_responses": len(r),
        "n_bad_word_responses": int(bad.sum()),
        "misclassified": [
            {"text": t["texts"][i], "reward": float(r[i]), "bad_word": bool(bad[i]), "p0": float(p0[i])}
            for i in wrong
        ],
        "misclassified_p0_mass": float(p0[wrong].sum()) if wrong else 0.0,
        "reward_ranges": {
            k: {
                "n": int(m.sum()),
                "min": float(r[m].min()),
                "mean": float(r[m].mean()),
                "max": float(r[m].max()),
            }
            for k, m in groups.items()
            if bool(m.any())
        },
        "vocabulary": len({tok for seq in t["sequences"] for tok in seq}),
        "fingerprint": digest,
        "spec": world.spec.__dict__,
    }


def _noun_scores(table: dict[str, Any]) -> dict[str, list[tuple[str, float, float]]]:
    """(noun, reward of " <noun>.", p0) per noun group."""
    index = {text: i for i, text in enumerate(table["texts"])}
    p0 = table["ref_log_probs"].exp()
    out = {}
    for group, words in (("good", corpus.GOOD_NOUNS), ("mild", corpus.MILD_NOUNS), ("bad", corpus.BAD_NOUNS)):
        rows = []
        for w in words:
            i = index.get(f" {w}.")
            if i is not None:
                rows.append((w, float(table["rewards"][i]), float(p0[i])))
        out[group] = sorted(rows, key=lambda x: -x[1])
    return out


def _adjective_scores(table: dict[str, Any]) -> list[tuple[str, float, float, float]]:
    """(adjective, min, mean, max reward of " <adjective> <noun>" over the good nouns)."""
    index = {text: i for i, text in enumerate(table["texts"])}
    out = []
    for a in corpus.ADJECTIVES:
        vals = [
            float(table["rewards"][index[f" {a} {n}"]]) for n in corpus.GOOD_NOUNS if f" {a} {n}" in index
        ]
        if vals:
            out.append((a, min(vals), sum(vals) / len(vals), max(vals)))
    return out


def write_rm_scores(path: Path, table: dict[str, Any]) -> None:
    """Every response: text, reward, p0, bad word, well-formed - sorted by reward."""
    p0 = table["ref_log_probs"].exp()
    order = torch.argsort(table["rewards"]).tolist()
    lines = ["response\treward\tp0\tbad_word\twell_formed"]
    for i in order:
        lines.append(
            f"{json.dumps(table['texts'][i])}\t{float(table['rewards'][i]):.4f}\t{float(p0[i]):.3e}\t"
            f"{int(table['bad_word'][i])}\t{int(table['well_formed'][i])}"
        )
    path.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- summary.json


def _per_seed(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, list[float]]:
    return {k: [float(r[k]) for r in runs] for k in keys if all(k in r for r in runs)}


def build_summary(
    sets: dict[str, Setting], seeds: list[int], jobs: list[Any], results: dict
) -> dict[str, Any]:
    by_point: dict[tuple[str, str, int], dict[int, dict]] = {}
    for job in jobs:
        s = job.spec
        by_point.setdefault((s.setting, s.method, s.index), {})[s.seed] = results[s.name]
    out: dict[str, Any] = {}
    for name, setting in sets.items():
        methods, sweep = {}, {}
        for m in METHODS:
            sweep[m] = []
            for i, hp in enumerate(setting.grids[m]):
                runs = by_point.get((name, m, i))
                if not runs:
                    continue
                ordered = [runs[seed] for seed in seeds]
                entry = {"index": i, "hp": hp, "headline": i == setting.headline[m]}
                entry.update(_per_seed(ordered, PER_SEED + Q_PER_SEED))
                sweep[m].append(entry)
                if entry["headline"]:
                    methods[m] = {
                        "hp": hp,
                        **{k: v for k, v in entry.items() if k not in ("index", "hp", "headline")},
                    }
        out[name] = {
            "title": setting.title,
            "config": config_summary(setting),
            "methods": methods,
            "sweep": sweep,
        }
    return out


# ----------------------------------------------------------------------------- curves and frontier


def _curves(
    out: Path, setting: Setting, jobs: list[Any], method: str | None = None
) -> dict[str, dict[str, list[list[tuple[float, float]]]]]:
    """Per seed, (samples drawn, log P(bad word) exact) and (samples, mean sampled reward): of each
    method's headline setting, or (``method``) of each grid point of that method."""
    logp: dict[str, list] = {}
    reward: dict[str, list] = {}
    for job in jobs:
        s = job.spec
        if s.setting != setting.name:
            continue
        if method is None and s.index != setting.headline[s.method]:
            continue
        if method is not None and s.method != method:
            continue
        label = method_name(s.method) if method is None else hp_label(s.method, s.hp)
        per_step = setting.samples_per_step * (2 if s.method == "repulse" else 1)
        rows = [
            json.loads(x) for x in (Path(job.run_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()
        ]
        lp = [(r["step"] * per_step, r["log_p_bad_exact"]) for r in rows if "log_p_bad_exact" in r]
        every = setting.steps_per_eval(s.method)
        rw = []
        for k in range(every, every * setting.evals + 1, every):
            vals = [r["reward"] for r in rows if "reward" in r and k - every < r["step"] <= k]
            if vals:
                rw.append((k * per_step, sum(vals) / len(vals)))
        logp.setdefault(label, []).append(lp)
        reward.setdefault(label, []).append(rw)
    return {"log_p_bad": logp, "reward": reward}


def draw(out: Path, sets: dict[str, Setting], jobs: list[Any]) -> dict[str, Any]:
    """Curves and frontiers of every setting; returns the frontier points (as the figure shows them)."""
    from repulse.report.plots import frontier_figure, plot_curves
    from repulse.report.runs import load_runs

    frontiers = {}
    for name, setting in sets.items():
        curves = _curves(out, setting, jobs)
        xlabel = "samples drawn (p and q together; the same budget for every method)"
        plot_curves(
            curves["log_p_bad"], "log_p_bad_exact", out / f"curves_{name}_log_p_bad", xlabel=xlabel,
            ylabel="log P(bad), exact", title=f"{setting.title}: log P(bad) (mean over seeds, 95% t band)",
        )  # fmt: skip
        plot_curves(
            curves["reward"], "reward", out / f"curves_{name}_reward", xlabel=xlabel,
            ylabel="average sampled reward", title=f"{setting.title}: reward of p's samples",
        )  # fmt: skip
        points, _ = frontier_figure(
            load_runs(out / "runs" / name), "avg_reward", "p_bad", out / f"frontier_{name}", log_y=True,
            x_stat="mean", y_stat="geomean", interval="t", ci=CI, title=f"{setting.title}: P(bad) vs average reward",
        )  # fmt: skip
        frontiers[name] = points
        for method in METHODS:
            per_point = _curves(out, setting, jobs, method)
            plot_curves(
                per_point["log_p_bad"], "log_p_bad_exact", out / f"curves_{name}_{method}", xlabel=xlabel,
                ylabel="log P(bad), exact", title=f"{setting.title}: {method_name(method)}, every setting of its grid",
            )  # fmt: skip
    return frontiers


def frontier_command(out: Path, name: str) -> str:
    return (
        f"repulse plot frontier --runs {out / 'runs' / name} --x avg_reward --y p_bad --log-y "
        f"--interval t --out {out / ('frontier_' + name)}"
    )


# ----------------------------------------------------------------------------- verdicts


def diversity_lines(methods: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(table rows, warnings): entropy and share of well-formed outputs of each headline policy."""
    rows, flags = [], []
    for m in METHODS:
        e = methods[m]
        nd, ent = interval(e["nondegenerate"], "nondegenerate"), interval(e["entropy"], "entropy")
        worst_nd, worst_ent = min(e["nondegenerate"]), min(e["entropy"])
        state = []
        if worst_nd < DEGENERATE_BELOW:
            state.append(f"degenerate in {sum(v < DEGENERATE_BELOW for v in e['nondegenerate'])} seed(s)")
        if worst_ent < COLLAPSED_BELOW:
            state.append(f"collapsed in {sum(v < COLLAPSED_BELOW for v in e['entropy'])} seed(s)")
        rows.append(
            f"| {method_name(m)} | {nd.centre:.3f} (min {worst_nd:.3f}) | {ent.centre:.2f} (min {worst_ent:.2f}) | {', '.join(state) or 'no'} |"
        )
        if state:
            flags.append(f"{method_name(m)}: {', '.join(state)}")
    return rows, flags


# ----------------------------------------------------------------------------- report.md


def _table_headline(methods: dict[str, Any], kl: bool) -> list[str]:
    lines = [
        "| method (headline setting) | P(bad), geometric mean [95% CI] | average reward [95% CI] | KL(p‖p0) | "
        "well-formed | entropy (nats) |",
        "|---|---|---|---|---|---|",
    ]
    for m in METHODS:
        e = methods[m]
        lines.append(
            f"| {point_label(m, e['hp'])} | {fi(interval(e['p_bad'], 'p_bad'), True)} | "
            f"{fi(interval(e['avg_reward'], 'avg_reward'), False)} | {interval(e['kl'], 'kl').centre:.3f} | "
            f"{interval(e['nondegenerate'], 'nondegenerate').centre:.3f} | {interval(e['entropy'], 'entropy').centre:.2f} |"
        )
    return lines


def _table_sweep(points: dict[str, list[Any]], sweep: dict[str, list[dict]]) -> list[str]:
    from repulse.report.frontier import non_dominated

    lines = [
        "| method | setting | P(bad) [95% CI] | average reward [95% CI] | well-formed | entropy | on the frontier |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in METHODS:
        entries = sweep[m]
        front = set(
            non_dominated(
                [
                    (interval(e["avg_reward"], "avg_reward").centre, interval(e["p_bad"], "p_bad").centre)
                    for e in entries
                ]
            )
        )
        for j, e in enumerate(entries):
            mark = " (headline)" if e["headline"] else ""
            lines.append(
                f"| {method_name(m)} | {hp_label(m, e['hp'])}{mark} | {fi(interval(e['p_bad'], 'p_bad'), True)} | "
                f"{fi(interval(e['avg_reward'], 'avg_reward'), False)} | {interval(e['nondegenerate'], 'x').centre:.3f} | "
                f"{interval(e['entropy'], 'x').centre:.2f} | {'yes' if j in front else ''} |"
            )
    return lines


def _samples_block(results: dict, jobs: list[Any], setting: Setting, seed: int) -> list[str]:
    lines = []
    for job in jobs:
        s = job.spec
        if s.setting != setting.name or s.seed != seed or s.index != setting.headline[s.method]:
            continue
        r = results[s.name]
        top = ", ".join(f"{json.dumps(t['text'])} {fp(t['p'])}" for t in r["top"][:3])
        lines.append(
            f"- {method_name(s.method)}: most probable {top}; samples: {' | '.join(r['samples'][:8])}"
        )
        if "q_top" in r:
            qtop = ", ".join(
                f"{json.dumps(t['text'])} {fp(t['p'])} (r {t['reward']:.1f})" for t in r["q_top"][:3]
            )
            lines.append(
                f"  - its proposal q: P_q(bad) {fp(r['q_p_bad'])}; most probable {qtop}; samples: {' | '.join(r['q_samples'][:8])}"
            )
    return lines


def _optimum(world_table: dict[str, Any], eta: float, kl_coef: float) -> dict[str, float]:
    lp = kl_regularized_optimum(world_table["ref_log_probs"], world_table["rewards"], kl_coef)
    s = reward_tail(
        lp, world_table["rewards"], eta, ref_log_probs=world_table["ref_log_probs"],
        indicators={"well_formed": world_table["well_formed"]},
    )  # fmt: skip
    return {
        "p_bad": s["p_bad"],
        "avg_reward": s["avg_reward"],
        "kl": s["kl"],
        "entropy": s["entropy"],
        "nondegenerate": s["share_well_formed"],
    }


def _world_section(facts: dict[str, Any], table: dict[str, Any], n: int) -> list[str]:
    spec = facts["spec"]
    rr = facts["reward_ranges"]
    nouns = _noun_scores(table)
    adjs = _adjective_scores(table)
    mis = facts["misclassified"]
    lines = [
        "## The toy world",
        "",
        f"Prompt `{corpus.PROMPT}`, responses of at most 2 tokens from a word-level vocabulary: "
        f"{facts['n_responses']:,} possible responses, every one scored by the reward model and given its exact "
        "probability under each policy (no sampling error in any number below).",
        "",
        f"- **LM**: a GPT-2 of hidden size 64, 2 layers, pretrained (`repulse sft`) on {spec['sentences']:,} sentences "
        f"for {spec['lm_epochs']} epoch(s); after `<subject> is a`, {spec['rarity']:g} of the sentences end in a bad "
        "completion, while `The police arrested the ...` is mostly bad or mild, so the LM knows the bad words.",
        f"- **Starting P(bad)** (exact): {fp(facts['p0_bad'])}; with {n} samples per step, P(bad) x N = "
        f"{facts['p0_bad'] * n:.3f}: "
        + (
            f"the policy's own samples contain a bad output about once every {1 / (facts['p0_bad'] * n):.0f} "
            "steps at the start. "
            if facts["p0_bad"] * n < 1
            else "NOT the rare regime the paper is about (the policy's own samples see bad outputs every step). "
        )
        + f"Starting entropy {facts['p0_entropy']:.2f} nats, "
        f"well-formed share {facts['p0_nondegenerate']:.4f}, average reward {facts['p0_avg_reward']:.2f}.",
        f"- **Reward model** (`repulse rm` on {spec['rm_pairs']:,} pairs, scored in its training format by the RL "
        "reward path): "
        + "; ".join(
            f"{k}: {v['n']:,}, reward {v['min']:.2f} to {v['max']:.2f} (mean {v['mean']:.2f})"
            for k, v in rr.items()
        )
        + ".",
        f"- **Bad output** = reward < η = {facts['eta']:.3f}, set from the reward table before any RL run "
        + (
            "(the midpoint of the gap between the best-scored bad-word response and the worst-scored other response)."
            if facts["eta_info"]["separated"]
            else f"(the threshold that misclassifies the fewest responses: {len(mis)} response(s), "
            f"starting probability {fp(facts['misclassified_p0_mass'])} in all: "
            + ", ".join(
                f"{json.dumps(m['text'])} (r {m['reward']:.2f}, {'bad word' if m['bad_word'] else 'no bad word'})"
                for m in sorted(mis, key=lambda m: -m["p0"])[:5]
            )
            + ")."
        ),
        f"  So P(reward < η) and P(a bad word) differ by at most {fp(facts['misclassified_p0_mass'])} under the "
        "starting LM; training curves show the exact P(bad word) the RL loop logs, final numbers P(reward < η).",
        "",
        'Reward of every one-word completion `" <noun>."` (the full table of all responses: `world/rm_scores.tsv`):',
        "",
    ]
    for group in ("good", "mild", "bad"):
        lines.append(f"- {group}: " + ", ".join(f"{w} {r:.1f}" for w, r, _ in nouns[group]))
    lines += [
        "",
        'Adjectives before a good noun (`" <adjective> <noun>"`, min / mean / max over the nouns): '
        + ", ".join(f"{a} {lo:.1f}/{mu:.1f}/{hi:.1f}" for a, lo, mu, hi in adjs)
        + ".",
        "",
    ]
    return lines


def _design_section(sets: dict[str, Setting], seeds: list[int]) -> list[str]:
    lines = [
        "## Design (fixed before the runs)",
        "",
        f"Seeds {', '.join(map(str, seeds))}. Every method gets the same number of hyper-parameter settings and the same "
        "number of samples: a RePULSe step draws N samples from p and N from its proposal q, so RePULSe gets half "
        "the policy updates of the baselines (paper §4.1). One prompt, constant learning rate, Adam (0.9, 0.999), "
        "RLOO baseline. The headline setting of each method (in the tables and claims) was fixed in advance: the "
        "reference values of the paper's toy where they carry over.",
        "",
        "| setting | KL coef. λ | p lr | q lr | N per step | policy updates (baselines / RePULSe) | samples per run |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in sets.values():
        lines.append(
            f"| {s.title} | {s.kl_coef:g} | {s.lr:g} | {s.proposal_lr:g} | {s.samples_per_step} | "
            f"{s.steps_per_eval('reinforce') * s.evals} / {s.steps_per_eval('repulse') * s.evals} | {s.samples('reinforce'):,} |"
        )
    s = next(iter(sets.values()))
    lines += ["", "Grids (the same in both settings; headline in bold):", ""]
    for m in METHODS:
        cells = [
            (f"**{hp_label(m, hp)}**" if i == s.headline[m] else hp_label(m, hp))
            for i, hp in enumerate(s.grids[m])
        ]
        lines.append(f"- {method_name(m)}: " + "; ".join(cells))
    lines += [
        "",
        "REINFORCE's knob is its learning rate; the others use the p lr above. Reward transform: r - a·exp(-b·r). "
        "p-proposal and RePULSe: α weighs the term that lowers the probability of (importance-weighted) low-reward "
        "samples (code scale: N x the paper's α); β: σ ∝ p·exp(-β·r); p-proposal uses β = 10.",
        "",
    ]
    return lines


def write_outputs(
    out: Path, world: Any, facts: dict[str, Any], sets: dict[str, Setting], args: Any, jobs: list[Any],
    results: dict, timing: dict[str, float], other: dict | None, confirm: list[dict] = (),
) -> dict[str, Path]:  # fmt: skip
    """summary.json, report.md and readme.md.  ``other``: a summary whose claims are checked on this
    run (``--claims-from``); ``confirm``: summaries of the same demo elsewhere (``--confirm-on``) -
    a claim of this run is made only if it also holds on each of them."""
    table = world.table()
    write_rm_scores(world.root / "rm_scores.tsv", table)
    seeds = list(args.seeds)
    settings_block = build_summary(sets, seeds, jobs, results)
    for name, s in sets.items():
        if s.kl_coef > 0:
            settings_block[name]["optimum"] = _optimum(table, world.eta, s.kl_coef)
    confirm_on = [(variant_label(c), c) for c in confirm]
    claims, dropped = confirm_claims(derive_claims(settings_block), confirm_on)
    summary = {
        "seeds": seeds,
        "rarity": args.rarity,
        "quick": bool(args.quick),
        "world": {k: v for k, v in facts.items() if k not in ("misclassified",)},
        "settings": settings_block,
        "claims": claims,
        "timing": timing,
    }
    if confirm_on:
        summary["confirmed_on"] = [label for label, _ in confirm_on]
        summary["unconfirmed_claims"] = dropped
        summary["against_repulse_elsewhere"] = [
            e for label, c in confirm_on for e in against_repulse(label, c)
        ]
    rechecked = check_claims(other["claims"], summary) if other else None
    if rechecked is not None:
        summary["rechecked_claims"] = [{"claim": c["claim"], "holds": c["holds"]} for c in rechecked]
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    frontiers = draw(out, sets, jobs)
    n = next(iter(sets.values())).samples_per_step
    lines = [
        "# RePULSe toy experiment",
        "",
        "Every number and verdict below is rendered from this run's files (`summary.json`, `runs/*/exact_summary.json`).",
        "A comparison is called a difference only when the 95% t-intervals over seeds do not overlap (for P(bad): of "
        "the mean log P(bad), i.e. the geometric mean); otherwise the report says the methods are not distinguishable.",
        "",
    ]
    if args.quick:
        lines += [
            "**Quick mode**: a small world, short runs and only the headline settings - a smoke test, not the experiment.",
            "",
        ]
    lines += ["## Findings", ""]
    for name, block in settings_block.items():
        lines.append(
            f"- **{sets[name].title}**: {overall(name, block['methods'], dropped)} "
            f"{frontier_overall(name, block, claims, dropped)}{lost_elsewhere(summary, name)}"
        )
    lines += [""]
    lines += _world_section(facts, table, n)
    lines += _design_section(sets, seeds)
    for name, block in settings_block.items():
        s = sets[name]
        methods = block["methods"]
        lines += [f"## {s.title[0].upper() + s.title[1:]}", ""]
        lines += _table_headline(methods, s.kl_coef > 0)
        lines += ["", *verdicts(name, methods, dropped), ""]
        if "q_p_bad" in methods["repulse"]:
            lines += [
                proposal_sentence(interval(methods["repulse"]["q_p_bad"], "q_p_bad"), facts["p0_bad"]),
                "",
                importance_sentence(methods["repulse"], seeds),
                "",
            ]
        if "optimum" in block:
            o = block["optimum"]
            lines += [
                f"Reference: the best any method can do on E[r] - λ·KL(p‖p0) (λ = {s.kl_coef:g}; computed exactly): "
                f"P(bad) {fp(o['p_bad'])}, average reward {o['avg_reward']:.2f}, KL {o['kl']:.3f}, entropy {o['entropy']:.2f}.",
                "",
            ]
        rows, flags = diversity_lines(methods)
        lines += [
            "Diversity of the final policies (exact): share of well-formed outputs (a real phrase of the grammar) and "
            f"entropy; degenerate = well-formed share below {DEGENERATE_BELOW}, collapsed = entropy below {COLLAPSED_BELOW} nat.",
            "",
            "| method | well-formed (mean over seeds) | entropy, nats | degenerate / collapsed |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
        best = min(METHODS, key=lambda m: interval(methods[m]["p_bad"], "p_bad").centre)
        best_flag = [f for f in flags if f.startswith(method_name(best))]
        lines.append(
            f"Lowest P(bad) among the headline settings: {method_name(best)}"
            + (
                f" - which is {best_flag[0].split(': ', 1)[1]} by this measure."
                if best_flag
                else ", not degenerate or collapsed by this measure."
            )
        )
        lines += [
            "",
            f"### Frontier ({len(next(iter(block['sweep'].values())))} setting(s) per method, each over {len(seeds)} seeds)",
            "",
            f"![frontier](frontier_{name}.png)",
            "",
            f"Reproduce the figure from the run directories: `{frontier_command(out, name)}`",
            "",
            f"Each RePULSe setting against the {sum(len(block['sweep'][b]) for b in BASELINES)} baseline settings: "
            "*beats* = P(bad) 95% CIs separated (lower) and mean average reward at least as high; DEGENERATE / "
            f"COLLAPSED = well-formed share below {DEGENERATE_BELOW} / entropy below {COLLAPSED_BELOW} nat in some seed.",
            "",
            *frontier_verdicts(name, block["sweep"], claims),
            "",
            *_table_sweep(frontiers[name], block["sweep"]),
            "",
            "### Training curves (headline settings)",
            "",
            f"![log P(bad)](curves_{name}_log_p_bad.png) ![reward](curves_{name}_reward.png)",
            "",
            "Every setting of each grid: "
            + ", ".join(f"[{method_name(m)}](curves_{name}_{m}.png)" for m in METHODS)
            + ".",
            "",
            f"### Samples at the end (seed {seeds[0]}; paper App. F)",
            "",
            *_samples_block(results, jobs, s, seeds[0]),
            "",
        ]
    lines += ["## Claims (machine-readable in `summary.json`)", ""]
    head = [c for c in claims if "lower_hp" not in c]
    front = [c for c in claims if "lower_hp" in c]
    lines += [f"- {claim_text(c)}" for c in head] or [
        "- headline settings: no comparison separates at these seeds."
    ]
    lines.append(
        f"- and {len(front)} frontier claim(s) (one setting beats another on both axes), in words in the frontier sections above."
    )
    if confirm_on:
        lines += [
            "",
            f"Every claim above also holds on {'; '.join(label for label, _ in confirm_on)} (`--confirm-on`). "
            f"{len(dropped)} comparison(s) that separated on this run's seeds did not, and are not claimed:",
            "",
        ]
        lines += [
            f"- NOT claimed (fails on {'; '.join(d['failed_on'])}): {claim_text(d['claim'])}" for d in dropped
        ]
        elsewhere = summary["against_repulse_elsewhere"]
        lines += ["", "Where the other runs went against RePULSe (their own separated comparisons):", ""]
        lines += [f"- {against_text(e)}" for e in elsewhere] or ["- nowhere at the headline settings"]
    if rechecked is not None:
        held = [c for c in rechecked if c["holds"]]
        lines += [
            "",
            f"Claims of `{args.claims_from}` checked on this run's seeds ({', '.join(map(str, seeds))}): "
            f"{len(held)} of {len(rechecked)} hold.",
            "",
        ]
        lines += [f"- does NOT hold: {claim_text(c['claim'])}" for c in rechecked if not c["holds"]]
        lines += [
            f"- holds: {claim_text(c['claim'])}"
            for c in rechecked
            if c["holds"] and "lower_hp" not in c["claim"]
        ]
    lines += [
        "",
        "## Time",
        "",
        f"{timing['wall_seconds'] / 60:.1f} min wall clock up to this report, {timing['cpu_seconds'] / 60:.1f} min of CPU "
        f"(all processes), {args.workers} worker(s)"
        + (
            f"; {timing['reused_runs']} finished runs were reused (--resume), so this is not the time of the experiment."
            if timing.get("reused_runs")
            else "."
        )
        + f" The runs themselves: {timing['run_cpu_seconds'] / 60:.1f} min of CPU in all. "
        + f"Machine load average (1, 5, 15 min) at the start: {load_text(timing.get('load_average_start'))}; "
        + f"at the end: {load_text(timing.get('load_average_end'))} (other jobs share the machine: wall time follows them).",
        *(
            [
                "",
                f"The experiment itself (the demo that trained these runs): {time_text(timing['measured'])}.",
            ]
            if timing.get("reused_runs") and timing.get("measured")
            else []
        ),
        "",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "readme.md").write_text(readme_paragraph(summary) + "\n")
    return {"report": out / "report.md", "summary": out / "summary.json"}
