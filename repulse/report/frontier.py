"""Reward-vs-risk frontiers: Pareto sets, and frontier points aggregated over seeds.

A method family (RePULSe at several α/β, REINFORCE at several reward transforms, ...) traces a
trade-off between a quantity to maximise (average reward or return) and one to minimise
(P(bad), GCG success).  The family's *frontier* is its non-dominated set: settings that no
other setting of the family beats on both axes.  The reference plots joined hard-coded index
groups instead (spec §5.2, §6.16); here the set is computed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from repulse.errors import UserError, warn_once
from repulse.evaluation.tail_stats import bootstrap_ci, t_interval
from repulse.report.runs import Run, run_value

__all__ = ["STATS", "INTERVALS", "FrontierPoint", "aggregate", "frontier_points", "non_dominated"]

STATS = ("mean", "geomean")
INTERVALS = ("bootstrap", "t")


def non_dominated(
    points: Sequence[Sequence[float]], maximize_x: bool = True, minimize_y: bool = True
) -> list[int]:
    """Indices of the Pareto (non-dominated) points, ordered by increasing x.

    With both axes oriented so that larger is better (x' = ±x, y' = ∓y), point i is dominated
    when some j has x'_j ≥ x'_i and y'_j ≥ y'_i with at least one strict inequality.  Equal
    points do not dominate each other (all are kept).  Points with a NaN coordinate are never
    in the set and dominate nothing.  Only the first two coordinates of each point are read, so
    (x, y, x_ci, y_ci) tuples can be passed as they are.  O(n²), fine for frontiers.
    """
    xy = np.array([[float(p[0]), float(p[1])] for p in points], dtype=np.float64).reshape(-1, 2)
    xs = xy[:, 0] if maximize_x else -xy[:, 0]
    ys = -xy[:, 1] if minimize_y else xy[:, 1]
    valid = ~(np.isnan(xs) | np.isnan(ys))
    keep = []
    for i in np.flatnonzero(valid):
        ge = valid & (xs >= xs[i]) & (ys >= ys[i])
        strict = ge & ((xs > xs[i]) | (ys > ys[i]))
        if not strict.any():
            keep.append(int(i))
    return sorted(keep, key=lambda i: (xy[i, 0], xy[i, 1]))


@dataclass(frozen=True)
class FrontierPoint:
    """One setting of a method, aggregated over its seeds.

    ``x``/``y`` are means over seeds; ``x_ci``/``y_ci`` are (low, high) intervals or None.
    Iterating gives (x, y, x_ci, y_ci, label), the form :func:`plot_frontier` takes.
    """

    x: float
    y: float
    x_ci: tuple[float, float] | None
    y_ci: tuple[float, float] | None
    label: str
    n_seeds: int

    def __iter__(self):
        return iter((self.x, self.y, self.x_ci, self.y_ci, self.label))

    def __len__(self) -> int:
        return 5

    def __getitem__(self, i: int) -> Any:
        return (self.x, self.y, self.x_ci, self.y_ci, self.label)[i]


def aggregate(
    values: Sequence[float],
    stat: str = "mean",
    interval: str = "bootstrap",
    ci: float = 0.95,
    n_boot: int = 10000,
    seed: int = 0,
) -> tuple[float, tuple[float, float] | None]:
    """One setting's value over its seeds, and its ``ci`` interval (None with fewer than 2 seeds).

    ``stat``: ``mean`` (x̄) or ``geomean`` (exp of the mean of log x: the centre of the seeds on a
    log axis, what a probability that spans orders of magnitude calls for; every value must be
    > 0).  ``interval``: ``t`` = the t-interval of the mean (of log x for ``geomean``, then
    exponentiated: spec §4.1's toy CIs), or ``bootstrap`` = seeded percentile bootstrap of the
    same statistic over seeds (spec §4.1's Sec. 4.3 CIs).
    """
    if stat not in STATS:
        raise ValueError(f"stat must be one of {STATS}, got {stat!r}")
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")
    x = np.asarray(values, dtype=np.float64)
    if stat == "geomean":
        if np.any(~(x > 0)):
            raise UserError(f"a geometric mean needs values > 0; got {sorted(x.tolist())[:3]} ...")
        x = np.log(x)
    centre = float(np.mean(x))
    if x.size < 2:
        band = None
    elif interval == "t":
        _, low, high = t_interval(x, ci)
        band = (low, high)
    else:
        band = bootstrap_ci(x, np.mean, n_boot=n_boot, ci=ci, seed=seed)
    if stat == "geomean":
        return math.exp(centre), None if band is None else (math.exp(band[0]), math.exp(band[1]))
    return centre, None if band is None else (float(band[0]), float(band[1]))


def _aggregate(
    values: list[float],
    intervals: list[tuple[float, float] | None],
    stat: str,
    interval: str,
    ci: float,
    n_boot: int,
    seed: int,
) -> tuple[float, tuple[float, float] | None]:
    centre, band = aggregate(values, stat, interval, ci, n_boot, seed)
    if len(values) < 2:
        return centre, intervals[0]  # one seed: the run's own (within-run) interval, if it has one
    return centre, band


def frontier_points(
    groups: dict[str, list[Run]],
    x: str,
    y: str,
    *,
    ci: float = 0.95,
    n_boot: int = 10000,
    seed: int = 0,
    x_stat: str = "mean",
    y_stat: str = "mean",
    interval: str = "bootstrap",
) -> dict[str, list[FrontierPoint]]:
    """{method: [one FrontierPoint per setting]} from loaded runs (see :func:`load_runs`).

    Per run, x and y are its final values (:func:`repulse.report.runs.run_value`).  Per
    setting, the point is ``x_stat`` / ``y_stat`` over seeds (:func:`aggregate`: mean or
    geometric mean) with ``interval`` CIs over seeds (seeded percentile bootstrap, or t; spec
    §4.1: 95 %; the reference used 5,000 unseeded resamples); a setting with one seed keeps the
    run's own interval from ``tail_summary.json`` (or none).  Runs lacking x or y are skipped
    with a warning; if no run has both, a UserError is raised.
    """
    out: dict[str, list[FrontierPoint]] = {}
    skipped: list[str] = []
    for method, runs in groups.items():
        by_setting: dict[str, list[Run]] = {}
        for r in runs:
            by_setting.setdefault(r.setting, []).append(r)
        points: list[FrontierPoint] = []
        for members in by_setting.values():
            xs, ys, xi, yi = [], [], [], []
            for r in members:
                vx, vy = run_value(r, x), run_value(r, y)
                if vx is None or vy is None or math.isnan(vx[0]) or math.isnan(vy[0]):
                    skipped.append(str(r.path))
                    continue
                xs.append(vx[0])
                ys.append(vy[0])
                xi.append(vx[1])
                yi.append(vy[1])
            if not xs:
                continue
            mx, cx = _aggregate(xs, xi, x_stat, interval, ci, n_boot, seed)
            my, cy = _aggregate(ys, yi, y_stat, interval, ci, n_boot, seed)
            points.append(FrontierPoint(mx, my, cx, cy, members[0].setting_label, len(xs)))
        if points:
            out[method] = points
    if skipped:
        warn_once(
            f"frontier.skipped.{x}.{y}",
            f"{len(skipped)} run(s) have no value for '{x}' or '{y}' and are left out: {', '.join(skipped[:3])}"
            + (" ..." if len(skipped) > 3 else ""),
        )
    if not out:
        raise UserError(f"no run has both '{x}' and '{y}' (in tail_summary.json or metrics.jsonl).")
    return out
