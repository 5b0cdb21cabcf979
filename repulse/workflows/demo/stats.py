"""The demo's statistics over seeds, its claims, and the check of claims against any demo summary.

A claim ``{"setting", "lower", "than", "metric"}`` says: in that setting, method ``lower``'s value of
``metric`` is below method ``than``'s, with non-overlapping 95% t-intervals over seeds - for
``p_bad`` of the mean of log P(bad) (the geometric mean), for ``avg_reward`` of the mean.  The
claims are derived from one run's per-seed numbers (:func:`derive_claims`) and can be checked
against another run's (:func:`check_claims`), e.g. the same demo on other seeds.
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


def derive_claims(settings: dict[str, Any]) -> list[dict[str, str]]:
    """Every separated comparison between RePULSe and a baseline (headline settings), either way,
    on P(bad) and on average reward.  ``settings`` is summary.json's ``settings`` block."""
    claims = []
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
    return claims


def check_claims(claims: list[dict[str, str]], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Each claim checked against ``summary``'s per-seed numbers: ``{"claim", "holds", "lower",
    "than"}`` with the two intervals.  A claim about a setting or method the summary lacks does
    not hold."""
    out = []
    for claim in claims:
        block = summary.get("settings", {}).get(claim["setting"], {}).get("methods", {})
        lo, hi = block.get(claim["lower"]), block.get(claim["than"])
        if lo is None or hi is None or claim["metric"] not in lo or claim["metric"] not in hi:
            out.append({"claim": claim, "holds": False, "lower": None, "than": None})
            continue
        a, b = interval(lo[claim["metric"]], claim["metric"]), interval(hi[claim["metric"]], claim["metric"])
        out.append({"claim": claim, "holds": a.below(b), "lower": a, "than": b})
    return out
