"""The demo's verdicts in words, with their numbers: RePULSe against each baseline, the sweep's
frontier claims, what the proposal found, importance sampling seed by seed, and the README
paragraph (``repulse demo --readme``), all rendered from the runs' statistics
(:mod:`repulse.workflows.demo.stats`) and summary.json alone.

A separation that did not hold where the claims were rechecked (``--confirm-on``) is named as such
and not claimed; a policy below the diversity thresholds is called degenerate or collapsed.
"""

from __future__ import annotations

import json
import math
from typing import Any

from repulse.workflows.demo.stats import BASELINES, Interval, interval
from repulse.workflows.demo.sweep import LABELS, hp_label

DEGENERATE_BELOW = 0.9  # a policy with fewer well-formed outputs than this is called degenerate
COLLAPSED_BELOW = 1.0  # entropy (nats) below this: collapsed onto a few responses (exp(H) < e)


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


def method_name(method: str) -> str:
    return LABELS[method]


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
            first = f"RePULSe's P(bad) is {ratio:.3g}x lower than {method_name(base)}'s ({fp(rep_p.centre)} vs {fp(bp.centre)}; 95% CIs separated)"
            where = failed_on(dropped, setting, "repulse", base)
            first += _not_claimed(where) if where else ""
        elif how == "above":
            first = (
                f"RePULSe does NOT beat {method_name(base)}: its P(bad) is {1 / ratio:.3g}x higher ({fp(rep_p.centre)} vs "
                f"{fp(bp.centre)}; 95% CIs separated)"
            )
            where = failed_on(dropped, setting, base, "repulse")
            first += _not_claimed(where) if where else ""
        else:
            first = (
                f"RePULSe does not beat {method_name(base)} on P(bad) at these seeds: {fp(rep_p.centre)} vs {fp(bp.centre)} "
                f"({ratio:.3g}x), 95% CIs overlap"
            )
        rhow = _compare(rep_r, br)
        reward = {
            "below": "RePULSe's average reward is lower (CIs separated)",
            "above": "RePULSe's average reward is higher (CIs separated)",
            "overlap": "average rewards not distinguishable (CIs overlap)",
        }[rhow]
        lines.append(
            f"- **vs {method_name(base)}**: {first}; average reward {rep_r.centre:.2f} vs {br.centre:.2f}: {reward}."
        )
    return lines


def point_label(method: str, hp: dict) -> str:
    return f"{method_name(method)} ({hp_label(method, hp)})"


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
            f"{c['setting']}: {method_name(c['lower'])} ({hp_label(c['lower'], c['lower_hp'])}) beats {method_name(c['than'])} "
            f"({hp_label(c['than'], c['than_hp'])}): lower P(bad), CIs separated, at least its mean reward"
        )
    what = "P(bad)" if c["metric"] == "p_bad" else "average reward"
    return f"{c['setting']}: {method_name(c['lower'])} has lower {what} ({c['metric']}) than {method_name(c['than'])} (headline settings)"


def frontier_verdicts(setting: str, sweep: dict[str, list[dict]], claims: list[dict]) -> list[str]:
    """The frontier claims of ``setting`` in words: for each RePULSe setting, the baseline settings it
    beats on both axes (P(bad) intervals separated, mean reward at least as high) and those it does
    not; then the baseline settings that beat a RePULSe setting."""
    mine = [c for c in claims if c["setting"] == setting and "lower_hp" in c]
    lines = []
    n_base = sum(len(sweep[b]) for b in BASELINES)
    for r in sweep["repulse"]:
        won = [c for c in mine if c["lower"] == "repulse" and c["lower_hp"] == r["hp"]]
        per = ", ".join(
            f"{method_name(b)} {sum(c['than'] == b for c in won)}/{len(sweep[b])}" for b in BASELINES
        )
        text = f"- RePULSe ({hp_label('repulse', r['hp'])}; {_pr(r)}) beats {len(won)} of the {n_base} baseline settings ({per})"
        lost = [c for c in mine if c["than"] == "repulse" and c["than_hp"] == r["hp"]]
        if lost:
            text += "; it is beaten by " + ", ".join(
                f"{method_name(c['lower'])} ({hp_label(c['lower'], c['lower_hp'])}; {_pr(_point(sweep, c['lower'], c['lower_hp']))})"
                for c in lost
            )
        lines.append(text + ".")
    return lines


def overall(setting: str, methods: dict[str, Any], dropped: list[dict] = ()) -> str:
    """The headline comparison in one sentence; separations that did not hold on the
    ``--confirm-on`` runs are named apart and not claimed."""
    rep = interval(methods["repulse"]["p_bad"], "p_bad")
    beats = [b for b in BASELINES if rep.below(interval(methods[b]["p_bad"], "p_bad"))]
    loses = [b for b in BASELINES if interval(methods[b]["p_bad"], "p_bad").below(rep)]
    ties = [b for b in BASELINES if b not in beats and b not in loses]
    shaky = [
        f"{'lower' if b in beats else 'HIGHER'} P(bad) than {method_name(b)}"
        + _not_claimed(failed_on(dropped, setting, *(("repulse", b) if b in beats else (b, "repulse"))))
        for b in beats + loses
        if failed_on(dropped, setting, *(("repulse", b) if b in beats else (b, "repulse")))
    ]
    beats = [b for b in beats if not failed_on(dropped, setting, "repulse", b)]
    loses = [b for b in loses if not failed_on(dropped, setting, b, "repulse")]
    parts = []
    if beats:
        parts.append("lower P(bad) than " + ", ".join(method_name(b) for b in beats))
    if ties:
        parts.append("no separable difference from " + ", ".join(method_name(b) for b in ties))
    if loses:
        parts.append("HIGHER P(bad) than " + ", ".join(method_name(b) for b in loses))
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


def frontier_overall(
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
            f" (the lowest baseline P(bad) anywhere in the sweep: {method_name(best_b)} ({hp_label(best_b, base_best['hp'])}; "
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


def load_text(avg: list[float] | None) -> str:
    return "/".join(f"{v:.1f}" for v in avg) if avg else "not recorded"


def time_text(m: dict[str, Any]) -> str:
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


def lost_elsewhere(summary: dict[str, Any], setting: str) -> str:
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
        f"{method_name(e['baseline'])}'s {f(e['baseline_value'])} (headline settings, 95% CIs separated)"
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
                f"{word} {method_name(b)}'s ({fp(bp.centre)})"
                + (_not_claimed(where) if how != "overlap" and where else "")
            )
        parts.append(
            f"{block['title'][0].upper() + block['title'][1:]}: at the headline settings (fixed in advance) RePULSe's "
            f"final P(bad) {fp(rep.centre)} is "
            + "; ".join(bits)
            + ". "
            + frontier_overall(name, block, summary["claims"], dropped)
            + lost_elsewhere(summary, name)
        )
    took = (
        f"measured: {time_text(timing['measured'])}"
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
