"""The demo's statistics over seeds, its claims, and the check of claims against any demo summary.

A claim ``{"setting", "lower", "than", "metric"}`` says: in that setting, method ``lower``'s value of
``metric`` (at its headline hyper-parameters) is below method ``than``'s, with non-overlapping 95%
t-intervals over seeds - for ``p_bad`` of the mean of log P(bad) (the geometric mean), for
``avg_reward`` of the mean.  A *frontier* claim adds ``lower_hp`` / ``than_hp`` (grid points of the
sweep instead of the headlines) and ``"reward_at_least": true``: the ``lower`` setting's P(bad) is
below with separated intervals *and* its mean average reward is at least the other's - it beats
that setting on both axes.  Claims are derived from one run's per-seed numbers
(:func:`derive_claims`) and can be checked against another run's (:func:`check_claims`), e.g. the
same demo on other seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from repulse.report.frontier import aggregate

CI = 0.95
GEOMETRIC = ("p_bad", "p_bad_word", "q_p_bad")  # spans orders of magnitude: geometric mean, CI of the log
CLAIM_METRICS = ("p_bad", "avg_reward")
BASELINES = ("reinforce", "reward_transform", "p_proposal")


@dataclass(frozen=True)
class Interval:
    """A statistic over seeds with its 95% t-interval (``low``/``high`` NaN with one seed)."""

    centre: float
    low: float
    high: float
    n: int

    def below(self, other: Interval) -> bool:
        """Entirely below ``other``: this interval's top under the other's bottom."""
        return self.high < other.low


def interval(values: Sequence[float], metric: str) -> Interval:
    """Geometric mean with the exponentiated t-interval of the mean log for probabilities
    (:data:`GEOMETRIC`), else the mean with its t-interval (:func:`repulse.report.frontier.aggregate`,
    the statistic ``repulse plot frontier`` draws)."""
    stat = "geomean" if metric in GEOMETRIC else "mean"
    centre, band = aggregate(list(values), stat, "t", CI)
    low, high = band if band is not None else (math.nan, math.nan)
    return Interval(centre, low, high, len(values))


def derive_claims(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Every separated comparison between RePULSe and a baseline at their headline settings, either
    way, on P(bad) and on average reward; then the frontier claims: each pair of a RePULSe grid
    point and a baseline grid point where one beats the other on both axes (P(bad) intervals
    separated, mean reward at least as high).  ``settings`` is summary.json's ``settings`` block."""
    claims: list[dict[str, Any]] = []
    for name, block in settings.items():
        methods = block["methods"]
        for base in BASELINES:
            for metric in CLAIM_METRICS:
                a = interval(methods["repulse"][metric], metric)
                b = interval(methods[base][metric], metric)
                if a.below(b):
                    claims.append({"setting": name, "lower": "repulse", "than": base, "metric": metric})
                elif b.below(a):
                    claims.append({"setting": name, "lower": base, "than": "repulse", "metric": metric})
    for name, block in settings.items():
        sweep = block.get("sweep", {})
        for r in sweep.get("repulse", []):
            for base in BASELINES:
                for b in sweep.get(base, []):
                    for (lm, lo), (tm, th) in ((("repulse", r), (base, b)), ((base, b), ("repulse", r))):
                        if beats(lo, th):
                            claims.append(
                                {"setting": name, "lower": lm, "lower_hp": lo["hp"], "than": tm, "than_hp": th["hp"],
                                 "metric": "p_bad", "reward_at_least": True}
                            )  # fmt: skip
    return claims


def beats(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a``'s P(bad) interval entirely below ``b``'s and ``a``'s mean average reward at least ``b``'s."""
    return interval(a["p_bad"], "p_bad").below(interval(b["p_bad"], "p_bad")) and (
        interval(a["avg_reward"], "avg_reward").centre >= interval(b["avg_reward"], "avg_reward").centre
    )


def _values(block: dict[str, Any], method: str, hp: dict | None) -> dict[str, Any] | None:
    if hp is None:
        return block.get("methods", {}).get(method)
    for entry in block.get("sweep", {}).get(method, []):
        if entry["hp"] == hp:
            return entry
    return None


def check_claims(claims: list[dict[str, Any]], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Each claim checked against ``summary``'s per-seed numbers: ``{"claim", "holds", "lower",
    "than"}`` with the two intervals of the claim's metric.  A claim about a setting, method or
    grid point the summary lacks does not hold."""
    out = []
    for claim in claims:
        block = summary.get("settings", {}).get(claim["setting"], {})
        lo = _values(block, claim["lower"], claim.get("lower_hp"))
        hi = _values(block, claim["than"], claim.get("than_hp"))
        metric = claim["metric"]
        if lo is None or hi is None or metric not in lo or metric not in hi:
            out.append({"claim": claim, "holds": False, "lower": None, "than": None})
            continue
        a, b = interval(lo[metric], metric), interval(hi[metric], metric)
        holds = beats(lo, hi) if claim.get("reward_at_least") else a.below(b)
        out.append({"claim": claim, "holds": holds, "lower": a, "than": b})
    return out


def confirm_claims(
    claims: list[dict[str, Any]], others: list[tuple[str, dict[str, Any]]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split ``claims`` into those that hold on every other summary in ``others`` ((label, summary)
    pairs: the same demo on other seeds, another rarity) and those that do not, each of the latter
    as ``{"claim", "failed_on": [labels]}``.  A claim kept here holds on every run it was checked on."""
    kept, dropped = [], []
    for claim in claims:
        failed = [label for label, other in others if not check_claims([claim], other)[0]["holds"]]
        if failed:
            dropped.append({"claim": claim, "failed_on": failed})
        else:
            kept.append(claim)
    return kept, dropped
