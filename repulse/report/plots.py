"""Training curves and reward-vs-risk frontiers, written as PNG and PDF.

Figures are drawn on matplotlib's Agg canvas directly (``matplotlib.figure.Figure``), never
through ``pyplot``: no global backend switch, no display needed, no figure left open.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from repulse.errors import warn_once
from repulse.evaluation.tail_stats import t_interval
from repulse.report.frontier import FrontierPoint, frontier_points, non_dominated
from repulse.report.runs import Run, curves_from_runs, load_runs

__all__ = ["aggregate_curve", "frontier_figure", "load_runs", "plot_curves", "plot_frontier"]

_STYLES = ["-", "--", "-.", ":"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def _figure(figsize: tuple[float, float] = (6.4, 4.4)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, out_path_stem: str | Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` (a .png/.pdf suffix on the stem is dropped)."""
    stem = Path(out_path_stem)
    if stem.suffix.lower() in {".png", ".pdf"}:
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")]
    fig.tight_layout()
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1], metadata={"CreationDate": None})  # byte-stable PDFs
    return paths


def aggregate_curve(
    per_seed: Sequence[Sequence[tuple[float, float]]], ci: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, low, high, n) over seeds at every step any seed logged.

    At each step, the seeds that logged it give x̄ and the t band x̄ ∓ t_{(1+c)/2, n-1}·s/√n
    (spec §5.1).  Where only one seed logged a step the band is NaN (not drawn).
    """
    values: dict[float, list[float]] = {}
    for series in per_seed:
        seen: dict[float, float] = {}
        for step, value in series:
            seen[float(step)] = float(value)  # a step logged twice in one run: the last wins
        for step, value in seen.items():
            if not math.isnan(value):
                values.setdefault(step, []).append(value)
    steps = np.array(sorted(values), dtype=np.float64)
    mean, low, high, n = (np.empty(steps.size) for _ in range(4))
    for i, s in enumerate(steps):
        mean[i], low[i], high[i] = t_interval(values[float(s)], ci)
        n[i] = len(values[float(s)])
    return steps, mean, low, high, n


def plot_curves(
    runs: Mapping[str, Sequence[Sequence[tuple[float, float]]]] | Mapping[str, Sequence[Run]],
    metric: str,
    out_path_stem: str | Path,
    *,
    xlabel: str = "step",
    ylabel: str | None = None,
    title: str | None = None,
    log_y: bool = False,
    ci: float = 0.95,
) -> list[Path]:
    """Mean over seeds of ``metric`` against step, with t-based ``ci`` bands; PNG + PDF.

    ``runs`` maps a method (label) to its seeds, each a list of (step, value); or it is what
    :func:`load_runs` returns ({method: [Run]}), and ``metric`` is read from each run's
    metrics.jsonl (:func:`~repulse.report.runs.curves_from_runs`).  Returns [png, pdf].
    """
    if any(isinstance(item, Run) for seq in runs.values() for item in seq):
        metric, runs = curves_from_runs(dict(runs), metric)  # type: ignore[arg-type]
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    drawn = 0
    for i, (method, per_seed) in enumerate(runs.items()):
        steps, mean, low, high, n = aggregate_curve(per_seed, ci)
        if steps.size == 0:
            warn_once(
                f"plots.empty_curve.{method}.{metric}", f"{method}: no values of '{metric}'; not drawn."
            )
            continue
        seeds = len(per_seed)
        (line,) = ax.plot(
            steps, mean, linestyle=_STYLES[(i // 10) % len(_STYLES)], label=f"{method} (n={seeds})", lw=1.6
        )
        if np.isfinite(low).any():
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, lw=0)
        drawn += 1
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel or metric)
    ax.set_title(title or f"{metric} (mean over seeds, {ci:.0%} t-interval)")
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    return _save(fig, out_path_stem)


def _errors(centre: float, interval: Any) -> list[list[float]] | None:
    if interval is None:
        return None
    low, high = float(interval[0]), float(interval[1])
    if math.isnan(low) or math.isnan(high):
        return None
    return [[max(0.0, centre - low)], [max(0.0, high - centre)]]


def plot_frontier(
    points: Mapping[str, Sequence[Sequence[Any]]],
    xlabel: str,
    ylabel: str,
    out_path_stem: str | Path,
    *,
    log_y: bool = False,
    maximize_x: bool = True,
    minimize_y: bool = True,
    title: str | None = None,
    annotate: bool = True,
) -> list[Path]:
    """Every point with its error bars; each family's non-dominated set joined by a line.

    Points on a family's frontier are filled, dominated ones hollow.

    ``points`` maps a method family to its points ``(x, y, x_ci, y_ci[, label])``; x_ci and
    y_ci are (low, high) or None.  The line joins :func:`non_dominated` (with ``maximize_x``,
    ``minimize_y``) in order of x - computed, not chosen by hand.  On a log y axis, points with
    y ≤ 0 cannot be drawn (a warning says how many).  Returns the written paths [png, pdf].
    """
    fig = _figure((6.8, 4.8))
    ax = fig.add_subplot(1, 1, 1)
    hidden = 0
    for i, (family, pts) in enumerate(points.items()):
        if not pts:
            continue
        color = f"C{i % 10}"
        marker = _MARKERS[i % len(_MARKERS)]
        front = non_dominated(pts, maximize_x, minimize_y)
        on_front = set(front)
        for j, p in enumerate(pts):
            x, y = float(p[0]), float(p[1])
            if log_y and y <= 0:
                hidden += 1
                continue
            ax.errorbar(
                x,
                y,
                xerr=_errors(x, p[2] if len(p) > 2 else None),
                yerr=_errors(y, p[3] if len(p) > 3 else None),
                fmt=marker,
                color=color,
                mfc=color if j in on_front else "none",  # dominated points are hollow
                ms=5,
                capsize=2,
                elinewidth=0.8,
                alpha=0.9,
            )
            if annotate and len(p) > 4 and p[4]:
                ax.annotate(str(p[4]), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        front = [j for j in front if not (log_y and float(pts[j][1]) <= 0)]
        ax.plot(
            [float(pts[j][0]) for j in front],
            [float(pts[j][1]) for j in front],
            linestyle=_STYLES[i % len(_STYLES)],
            color=color,
            marker=marker,
            ms=5,
            label=family,
        )
    if hidden:
        warn_once(
            f"plots.log_y_hidden.{ylabel}",
            f"{hidden} point(s) with {ylabel} <= 0 cannot be shown on a log axis (no bad sample seen?).",
        )
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    arrows = f"{'higher' if maximize_x else 'lower'} x, {'lower' if minimize_y else 'higher'} y is better"
    ax.set_title(title or f"{ylabel} vs {xlabel} ({arrows})", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_path_stem)


def _axis_label(metric: str, stat: str, interval: str, ci: float, n_seeds: set[int]) -> str:
    seeds = f"{min(n_seeds)}-{max(n_seeds)}" if len(n_seeds) > 1 else str(next(iter(n_seeds), 0))
    name = "geometric mean" if stat == "geomean" else "mean"
    return f"{metric} ({name} over {seeds} seeds, {ci:.0%} {interval} CI)"


def frontier_figure(
    groups: Mapping[str, Sequence[Run]],
    x: str,
    y: str,
    out_path_stem: str | Path,
    *,
    log_y: bool = False,
    maximize_x: bool = True,
    minimize_y: bool = True,
    ci: float = 0.95,
    n_boot: int = 10000,
    seed: int = 0,
    x_stat: str = "mean",
    y_stat: str = "mean",
    interval: str = "bootstrap",
    title: str | None = None,
) -> tuple[dict[str, list[FrontierPoint]], list[Path]]:
    """The frontier of loaded runs (:func:`~repulse.report.frontier.frontier_points`), drawn by
    :func:`plot_frontier` with axis labels that name the statistic and interval: what
    ``repulse plot frontier`` draws.  The points are also written as ``<stem>.json`` (the numbers
    the figure shows, and how they were aggregated).  Returns (points, [png, pdf, json])."""
    points = frontier_points(
        dict(groups), x, y, ci=ci, n_boot=n_boot, seed=seed, x_stat=x_stat, y_stat=y_stat, interval=interval
    )
    seeds = {p.n_seeds for pts in points.values() for p in pts}
    paths = plot_frontier(
        points,
        _axis_label(x, x_stat, interval, ci, seeds),
        _axis_label(y, y_stat, interval, ci, seeds),
        out_path_stem,
        log_y=log_y,
        maximize_x=maximize_x,
        minimize_y=minimize_y,
        title=title
        or f"{y} vs {x} ({'higher' if maximize_x else 'lower'} x, {'lower' if minimize_y else 'higher'} y is better)",
    )
    record = {
        "x": x,
        "y": y,
        "x_stat": x_stat,
        "y_stat": y_stat,
        "interval": interval,
        "ci": ci,
        "points": {
            method: [
                {"label": p.label, "x": p.x, "y": p.y, "x_ci": p.x_ci, "y_ci": p.y_ci, "n_seeds": p.n_seeds}
                for p in pts
            ]
            for method, pts in points.items()
        },
    }
    stem = paths[0].with_suffix("")
    paths.append(stem.with_name(stem.name + ".json"))
    paths[-1].write_text(json.dumps(record, indent=1))
    return points, paths
