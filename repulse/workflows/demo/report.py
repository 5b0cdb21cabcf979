"""The demo's outputs, every number and verdict rendered from the runs' JSON.

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
import math
from pathlib import Path
from typing import Any

import torch

from repulse.evaluation.exact import kl_regularized_optimum, reward_tail
from repulse.toy import demo_corpus as corpus
from repulse.workflows.demo.stats import (
    BASELINES,
    CI,
    Interval,
    check_claims,
    confirm_claims,
    derive_claims,
    interval,
)
from repulse.workflows.demo.sweep import LABELS, METHODS, Setting, config_summary, hp_label

DEGENERATE_BELOW = 0.9  # a policy with fewer well-formed outputs than this is called degenerate
COLLAPSED_BELOW = 1.0  # entropy (nats) below this: collapsed onto a few responses (exp(H) < e)
PER_SEED = ("avg_reward", "p_bad", "nondegenerate", "log_p_bad", "p_bad_word", "entropy", "kl", "avg_return")
Q_PER_SEED = ("q_p_bad", "q_nondegenerate", "is_estimate", "is_rel_se", "naive_samples_same_se")


# ----------------------------------------------------------------------------- formatting


def fp(x: float) -> str:
    """A probability: 3.1e-06 -> '3.1e-6', 0.25 -> '0.25'."""
    if x == 0 or not math.isfinite(x):
        return str(x)
    if x >= 0.01:
        return f"{x:.2f}"
    mant, exp = f"{x:.1e}".split("e")
    return f"{mant}e{int(exp)}"


def fi(i: Interval, prob: bool) -> str:
    """``centre [low, high]``; a probability's interval (of its log, exponentiated) is cut at 1."""
    f = fp if prob else (lambda v: f"{v:.2f}")
    if math.isnan(i.low):
        return f(i.centre)
    high = min(i.high, 1.0) if prob else i.high
    return f"{f(i.centre)} [{f(i.low)}, {f(high)}]"


def _name(method: str) -> str:
    return LABELS[method]


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
        label = _name(s.method) if method is None else hp_label(s.method, s.hp)
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
                ylabel="log P(bad), exact", title=f"{setting.title}: {_name(method)}, every setting of its grid",
            )  # fmt: skip
    return frontiers


def frontier_command(out: Path, name: str) -> str:
    return (
        f"repulse plot frontier --runs {out / 'runs' / name} --x avg_reward --y p_bad --log-y "
        f"--interval t --out {out / ('frontier_' + name)}"
    )


# ----------------------------------------------------------------------------- verdicts


def failed_on(dropped: list[dict], setting: str, lower: str, than: str, metric: str = "p_bad") -> list[str]:
    """Where a headline claim that separated on this run's seeds did not hold (``--confirm-on``); []
    when it was not dropped."""
    want = {"setting": setting, "lower": lower, "than": than, "metric": metric}
    return next((d["failed_on"] for d in dropped if d["claim"] == want), [])


def _not_claimed(where: list[str]) -> str:
    return f" at these seeds only - it does NOT hold on {'; '.join(where)}, so it is not claimed"


def _compare(a: Interval, b: Interval) -> str:
    if a.below(b):
        return "below"
    if b.below(a):
        return "above"
    return "overlap"


def verdicts(setting: str, methods: dict[str, Any], dropped: list[dict] = ()) -> list[str]:
    """RePULSe against each baseline in words, with the numbers (headline settings); a separation
    that did not hold on the ``--confirm-on`` runs (``dropped``) is said to be unconfirmed."""
    lines = []
    rep_p, rep_r = (
        interval(methods["repulse"]["p_bad"], "p_bad"),
        interval(methods["repulse"]["avg_reward"], "avg_reward"),
    )
    for base in BASELINES:
        bp, br = (
            interval(methods[base]["p_bad"], "p_bad"),
            interval(methods[base]["avg_reward"], "avg_reward"),
        )
        ratio = bp.centre / rep_p.centre
        how = _compare(rep_p, bp)
        if how == "below":
            first = f"RePULSe's P(bad) is {ratio:.3g}x lower than {_name(base)}'s ({fp(rep_p.centre)} vs {fp(bp.centre)}; 95% CIs separated)"
            where = failed_on(dropped, setting, "repulse", base)
            first += _not_claimed(where) if where else ""
        elif how == "above":
            first = (
                f"RePULSe does NOT beat {_name(base)}: its P(bad) is {1 / ratio:.3g}x higher ({fp(rep_p.centre)} vs "
                f"{fp(bp.centre)}; 95% CIs separated)"
            )
            where = failed_on(dropped, setting, base, "repulse")
            first += _not_claimed(where) if where else ""
        else:
            first = (
                f"RePULSe does not beat {_name(base)} on P(bad) at these seeds: {fp(rep_p.centre)} vs {fp(bp.centre)} "
                f"({ratio:.3g}x), 95% CIs overlap"
            )
        rhow = _compare(rep_r, br)
        reward = {
            "below": "RePULSe's average reward is lower (CIs separated)",
            "above": "RePULSe's average reward is higher (CIs separated)",
            "overlap": "average rewards not distinguishable (CIs overlap)",
        }[rhow]
        lines.append(
            f"- **vs {_name(base)}**: {first}; average reward {rep_r.centre:.2f} vs {br.centre:.2f}: {reward}."
        )
    return lines


def _label(method: str, hp: dict) -> str:
    return f"{_name(method)} ({hp_label(method, hp)})"


def _point(sweep: dict[str, list[dict]], method: str, hp: dict) -> dict:
    return next(e for e in sweep[method] if e["hp"] == hp)


def degeneracy(entry: dict) -> str:
    """'' or 'DEGENERATE in k seed(s), COLLAPSED in j seed(s)' by the report's diversity measure."""
    state = []
    if "nondegenerate" in entry and min(entry["nondegenerate"]) < DEGENERATE_BELOW:
        state.append(f"DEGENERATE in {sum(v < DEGENERATE_BELOW for v in entry['nondegenerate'])} seed(s)")
    if "entropy" in entry and min(entry["entropy"]) < COLLAPSED_BELOW:
        state.append(f"COLLAPSED in {sum(v < COLLAPSED_BELOW for v in entry['entropy'])} seed(s)")
    return ", ".join(state)


def _pr(entry: dict) -> str:
    """A grid point's numbers, with its degeneracy said in words when it has any."""
    p, r = interval(entry["p_bad"], "p_bad"), interval(entry["avg_reward"], "avg_reward")
    nd = interval(entry["nondegenerate"], "nondegenerate").centre
    flag = degeneracy(entry)
    return f"P(bad) {fp(p.centre)}, reward {r.centre:.2f}, well-formed {nd:.2f}" + (
        f"; {flag}" if flag else ""
    )


def claim_text(c: dict) -> str:
    """A claim in words."""
    if "lower_hp" in c:
        return (
            f"{c['setting']}: {_name(c['lower'])} ({hp_label(c['lower'], c['lower_hp'])}) beats {_name(c['than'])} "
            f"({hp_label(c['than'], c['than_hp'])}): lower P(bad), CIs separated, at least its mean reward"
        )
    what = "P(bad)" if c["metric"] == "p_bad" else "average reward"
    return f"{c['setting']}: {_name(c['lower'])} has lower {what} ({c['metric']}) than {_name(c['than'])} (headline settings)"


def frontier_verdicts(setting: str, sweep: dict[str, list[dict]], claims: list[dict]) -> list[str]:
    """The frontier claims of ``setting`` in words: for each RePULSe setting, the baseline settings it
    beats on both axes (P(bad) intervals separated, mean reward at least as high) and those it does
    not; then the baseline settings that beat a RePULSe setting."""
    mine = [c for c in claims if c["setting"] == setting and "lower_hp" in c]
    lines = []
    n_base = sum(len(sweep[b]) for b in BASELINES)
    for r in sweep["repulse"]:
        won = [c for c in mine if c["lower"] == "repulse" and c["lower_hp"] == r["hp"]]
        per = ", ".join(f"{_name(b)} {sum(c['than'] == b for c in won)}/{len(sweep[b])}" for b in BASELINES)
        text = f"- RePULSe ({hp_label('repulse', r['hp'])}; {_pr(r)}) beats {len(won)} of the {n_base} baseline settings ({per})"
        lost = [c for c in mine if c["than"] == "repulse" and c["than_hp"] == r["hp"]]
        if lost:
            text += "; it is beaten by " + ", ".join(
                f"{_name(c['lower'])} ({hp_label(c['lower'], c['lower_hp'])}; {_pr(_point(sweep, c['lower'], c['lower_hp']))})"
                for c in lost
            )
        lines.append(text + ".")
    return lines


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
            f"| {_name(m)} | {nd.centre:.3f} (min {worst_nd:.3f}) | {ent.centre:.2f} (min {worst_ent:.2f}) | {', '.join(state) or 'no'} |"
        )
        if state:
            flags.append(f"{_name(m)}: {', '.join(state)}")
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
            f"| {_label(m, e['hp'])} | {fi(interval(e['p_bad'], 'p_bad'), True)} | "
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
                f"| {_name(m)} | {hp_label(m, e['hp'])}{mark} | {fi(interval(e['p_bad'], 'p_bad'), True)} | "
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
        lines.append(f"- {_name(s.method)}: most probable {top}; samples: {' | '.join(r['samples'][:8])}")
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
        lines.append(f"- {_name(m)}: " + "; ".join(cells))
    lines += [
        "",
        "REINFORCE's knob is its learning rate; the others use the p lr above. Reward transform: r - a·exp(-b·r). "
        "p-proposal and RePULSe: α weighs the term that lowers the probability of (importance-weighted) low-reward "
        "samples (code scale: N x the paper's α); β: σ ∝ p·exp(-β·r); p-proposal uses β = 10.",
        "",
    ]
    return lines


def _overall(setting: str, methods: dict[str, Any], dropped: list[dict] = ()) -> str:
    """The headline comparison in one sentence; separations that did not hold on the
    ``--confirm-on`` runs are named apart and not claimed."""
    rep = interval(methods["repulse"]["p_bad"], "p_bad")
    beats = [b for b in BASELINES if rep.below(interval(methods[b]["p_bad"], "p_bad"))]
    loses = [b for b in BASELINES if interval(methods[b]["p_bad"], "p_bad").below(rep)]
    ties = [b for b in BASELINES if b not in beats and b not in loses]
    shaky = [
        f"{'lower' if b in beats else 'HIGHER'} P(bad) than {_name(b)}"
        + _not_claimed(failed_on(dropped, setting, *(("repulse", b) if b in beats else (b, "repulse"))))
        for b in beats + loses
        if failed_on(dropped, setting, *(("repulse", b) if b in beats else (b, "repulse")))
    ]
    beats = [b for b in beats if not failed_on(dropped, setting, "repulse", b)]
    loses = [b for b in loses if not failed_on(dropped, setting, b, "repulse")]
    parts = []
    if beats:
        parts.append("lower P(bad) than " + ", ".join(_name(b) for b in beats))
    if ties:
        parts.append("no separable difference from " + ", ".join(_name(b) for b in ties))
    if loses:
        parts.append("HIGHER P(bad) than " + ", ".join(_name(b) for b in loses))
    parts += shaky
    return "RePULSe (headline setting): " + "; ".join(parts) + "."


def proposal_sentence(q: Interval, p0_bad: float) -> str:
    """Whether RePULSe's proposal found the rare outputs: its final exact P(bad) against the starting LM's."""
    found = not math.isnan(q.low) and q.low > 10 * p0_bad
    verdict = (
        "The learned proposal found the rare outputs"
        if found
        else "The learned proposal did NOT clearly find the rare outputs (its P(bad) is not 10x the starting LM's)"
    )
    return f"{verdict}: its exact probability of a bad output at the end is {fi(q, True)} (the starting LM's: {fp(p0_bad)})."


def importance_sentence(rep: dict[str, Any], seeds: list[int]) -> str:
    """The final q as an importance-sampling proposal for the final p's P(bad), seed by seed."""
    from repulse.workflows.demo.evaluate import IS_SAMPLES

    parts = [
        f"seed {seed}: {fp(est)} vs exact {fp(p)} (relative SE {rel:.2g}; plain sampling of p: ~{naive:.2g} samples)"
        for seed, est, p, rel, naive in zip(
            seeds, rep["is_estimate"], rep["p_bad"], rep["is_rel_se"], rep["naive_samples_same_se"]
        )
    ]
    better = sum(naive > IS_SAMPLES for naive in rep["naive_samples_same_se"])
    n = len(rep["naive_samples_same_se"])
    verdict = (
        f" Importance sampling with q beats plain sampling of p (fewer samples for the same error) in {better} of "
        f"{n} seed(s)"
        + ("." if better == n else f"; {'in the others' if better else 'in every seed'} q, trained to find low "
           "rewards under the policy it trained beside, is a worse proposal for the final policy's P(bad) than p itself.")
    )  # fmt: skip
    return (
        f"The final proposal as an importance-sampling estimator of the final policy's P(bad) from {IS_SAMPLES:,} "
        "samples of q (one draw; the relative standard error is exact, as is the number of samples of p that "
        "plain Monte Carlo would need for it): " + "; ".join(parts) + "." + verdict
    )


def _frontier_overall(
    setting: str, block: dict[str, Any], claims: list[dict], dropped: list[dict] = ()
) -> str:
    """One sentence on the sweep: how many baseline settings the best RePULSe setting beats on both
    axes (claims that held wherever they were checked), and how many such wins did not hold on the
    ``--confirm-on`` runs."""
    mine = [c for c in claims if c["setting"] == setting and "lower_hp" in c]
    sweep = block["sweep"]
    n_base = sum(len(sweep[b]) for b in BASELINES)
    wins = {
        json.dumps(r["hp"]): [c for c in mine if c["lower"] == "repulse" and c["lower_hp"] == r["hp"]]
        for r in sweep["repulse"]
    }
    best = max(sweep["repulse"], key=lambda r: len(wins[json.dumps(r["hp"])]))
    won = wins[json.dumps(best["hp"])]
    losses = [c for c in mine if c["than"] == "repulse"]
    if not won:
        text = f"Over the sweep, no RePULSe setting beats any of the {n_base} baseline settings on both axes"
    else:
        text = (
            f"Over the sweep, the RePULSe setting that beats most baseline settings on both axes "
            f"({hp_label('repulse', best['hp'])}: {_pr(best)}) beats {len(won)} of {n_base}"
        )
    if won:
        best_b, base_best = min(
            ((b, e) for b in BASELINES for e in sweep[b]),
            key=lambda be: interval(be[1]["p_bad"], "p_bad").centre,
        )
        text += (
            f" (the lowest baseline P(bad) anywhere in the sweep: {_name(best_b)} ({hp_label(best_b, base_best['hp'])}; "
            f"{_pr(base_best)}))"
        )
    text += f"; {len(losses)} comparison(s) go the other way (a baseline setting beats a RePULSe setting)."
    shaky = [d for d in dropped if d["claim"]["setting"] == setting and "lower_hp" in d["claim"]]
    if shaky:
        where = sorted({w for d in shaky for w in d["failed_on"]})
        text += (
            f" A further {len(shaky)} such comparison(s) separated at these seeds but NOT on {'; '.join(where)}, "
            "so they are not claimed."
        )
    return text


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
            f"- **{sets[name].title}**: {_overall(name, block['methods'], dropped)} "
            f"{_frontier_overall(name, block, claims, dropped)}{_elsewhere(summary, name)}"
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
        best_flag = [f for f in flags if f.startswith(_name(best))]
        lines.append(
            f"Lowest P(bad) among the headline settings: {_name(best)}"
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
            + ", ".join(f"[{_name(m)}](curves_{name}_{m}.png)" for m in METHODS)
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
        + f"Machine load average (1, 5, 15 min) at the start: {_load(timing.get('load_average_start'))}; "
        + f"at the end: {_load(timing.get('load_average_end'))} (other jobs share the machine: wall time follows them).",
        *(
            [
                "",
                f"The experiment itself (the demo that trained these runs): {_took(timing['measured'])}.",
            ]
            if timing.get("reused_runs") and timing.get("measured")
            else []
        ),
        "",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "readme.md").write_text(readme_paragraph(summary) + "\n")
    return {"report": out / "report.md", "summary": out / "summary.json"}


def _load(avg: list[float] | None) -> str:
    return "/".join(f"{v:.1f}" for v in avg) if avg else "not recorded"


def _took(m: dict[str, Any]) -> str:
    """'26 min wall clock, 9 min of CPU (machine load average 6.8 at the start, 10.2 at the end)'."""
    text = f"{m['wall_seconds'] / 60:.0f} min wall clock, {m['cpu_seconds'] / 60:.0f} min of CPU"
    if m.get("load_average_start") and m.get("load_average_end"):
        text += (
            f" (machine load average {m['load_average_start'][0]:.1f} at the start, "
            f"{m['load_average_end'][0]:.1f} at the end)"
        )
    return text


def variant_label(summary: dict[str, Any]) -> str:
    """How a demo is named when its claims are checked: 'seeds 100-104, rarity 0.001'."""
    seeds = summary["seeds"]
    run = seeds == list(range(seeds[0], seeds[0] + len(seeds)))
    named = f"{seeds[0]}-{seeds[-1]}" if run and len(seeds) > 2 else ", ".join(map(str, seeds))
    return f"seeds {named} at rarity {summary['rarity']:g}" + (" (quick)" if summary.get("quick") else "")


def against_repulse(label: str, other: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline comparisons that went against RePULSe in another run of the demo (its own claims
    with RePULSe on the losing side), with the geometric means or means: what the README must say
    even when this run's seeds do not show it."""
    out = []
    for c in other.get("claims", []):
        if "lower_hp" in c:
            continue
        # against RePULSe: its P(bad) above a baseline's, or its average reward below one's
        base = c["lower"] if c["metric"] == "p_bad" else c["than"]
        if (c["metric"] == "p_bad" and c["than"] != "repulse") or (
            c["metric"] != "p_bad" and c["lower"] != "repulse"
        ):
            continue
        methods = other["settings"][c["setting"]]["methods"]
        b = interval(methods[base][c["metric"]], c["metric"])
        r = interval(methods["repulse"][c["metric"]], c["metric"])
        out.append(
            {"on": label, **c, "baseline": base, "baseline_value": b.centre, "repulse_value": r.centre}
        )
    return out


def _elsewhere(summary: dict[str, Any], setting: str) -> str:
    """' Elsewhere RePULSe lost: ...' for ``setting``, from summary.json's record of the other runs."""
    mine = [e for e in summary.get("against_repulse_elsewhere", []) if e["setting"] == setting]
    if not mine:
        return ""
    return (
        " But RePULSe does not beat every baseline everywhere: "
        + "; ".join(against_text(e) for e in mine)
        + "."
    )


def against_text(e: dict[str, Any]) -> str:
    """One comparison that went against RePULSe elsewhere, in words with its numbers."""
    what = "P(bad)" if e["metric"] == "p_bad" else "average reward"
    f = fp if e["metric"] == "p_bad" else (lambda v: f"{v:.2f}")
    verb = "HIGHER" if e["metric"] == "p_bad" else "LOWER"
    return (
        f"on {e['on']}, {e['setting']}: RePULSe's {what} {f(e['repulse_value'])} is {verb} than "
        f"{_name(e['baseline'])}'s {f(e['baseline_value'])} (headline settings, 95% CIs separated)"
    )


def readme_paragraph(summary: dict[str, Any]) -> str:
    """The README's paragraph about the demo, rendered from its summary.json alone (``repulse demo
    --readme runs/demo/summary.json`` prints it): every number and verdict comes from the run."""
    timing = summary.get("timing", {})
    dropped = summary.get("unconfirmed_claims", [])
    w = summary["world"]
    parts = []
    for name, block in summary["settings"].items():
        m = block["methods"]
        rep = interval(m["repulse"]["p_bad"], "p_bad")
        bits = []
        for b in BASELINES:
            bp = interval(m[b]["p_bad"], "p_bad")
            how = _compare(rep, bp)
            word = {
                "below": f"{bp.centre / rep.centre:.2g}x lower than",
                "above": f"{rep.centre / bp.centre:.2g}x HIGHER than",
                "overlap": "not distinguishable from",
            }[how]
            where = failed_on(dropped, name, *(("repulse", b) if how == "below" else (b, "repulse")))
            bits.append(
                f"{word} {_name(b)}'s ({fp(bp.centre)})"
                + (_not_claimed(where) if how != "overlap" and where else "")
            )
        parts.append(
            f"{block['title'][0].upper() + block['title'][1:]}: at the headline settings (fixed in advance) RePULSe's "
            f"final P(bad) {fp(rep.centre)} is "
            + "; ".join(bits)
            + ". "
            + _frontier_overall(name, block, summary["claims"], dropped)
            + _elsewhere(summary, name)
        )
    took = (
        f"measured: {_took(timing['measured'])}"
        if timing.get("measured")
        else "the last run reused some finished runs, so its time says nothing"
    )
    return (
        f"`make demo` reproduces the paper's toy experiment on 2 CPU cores ({took}): "
        f"a tiny LM whose starting probability of a bad output is {fp(w['p0_bad'])}, a reward model that scores "
        f"bad outputs below η = {w['eta']:.2f}, and four methods (REINFORCE, reward-transformed REINFORCE, the "
        f"p-proposal ablation, RePULSe) at 4 hyper-parameter settings each over seeds {', '.join(map(str, summary['seeds']))}, "
        "with the same number of samples per run, evaluated exactly (P(bad) as geometric means over seeds; a "
        "difference is stated only where 95% CIs do not overlap"
        + (
            f" and the comparison also holds on {'; '.join(summary['confirmed_on'])}"
            if summary.get("confirmed_on")
            else ""
        )
        + "). "
        + " ".join(parts)
        + " "
        "`runs/demo/report.md` has the frontiers, diversity and samples; `runs/demo/summary.json` the per-seed numbers "
        "and claims."
    )
