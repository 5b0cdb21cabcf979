"""``repulse plot``: training curves and reward-vs-risk frontiers from run directories.

    repulse plot curves   --runs DIR [DIR ...] --metric p_bad --out figs/p_bad
    repulse plot frontier --runs DIR [DIR ...] --x avg_reward --y p_bad --out figs/frontier --log-y

A frontier point is a setting's statistic over its seeds: the mean, or on a log axis the
geometric mean (the mean of log y, exponentiated), with a t or bootstrap interval over seeds.

``--runs`` takes run directories or any parents of them (they are found by walking, see
:mod:`repulse.report.runs`).  ``--out`` is a path stem: ``.png`` and ``.pdf`` are written.
"""

from __future__ import annotations

import argparse
import sys

from repulse.errors import UserError

__all__ = ["plot_main"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad input as a UserError (one paragraph, exit 2) instead of exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (see '{self.prog} --help').")


def _parser() -> _Parser:
    p = _Parser(prog="repulse plot", description="Plot training curves and reward-vs-risk frontiers.")
    sub = p.add_subparsers(dest="kind", metavar="{curves,frontier}", parser_class=_Parser)
    sub.required = True

    c = sub.add_parser("curves", help="a metric over training steps, mean over seeds with t bands")
    c.add_argument("--runs", nargs="+", required=True, metavar="DIR", help="run directories or their parents")
    c.add_argument("--metric", required=True, help="a metrics.jsonl key, e.g. p_bad or loss")
    c.add_argument(
        "--out", required=True, metavar="PATH", help="output path stem (.png and .pdf are written)"
    )
    c.add_argument("--log-y", action="store_true", help="logarithmic y axis")
    c.add_argument("--ci", type=float, default=0.95, help="band coverage (default 0.95)")
    c.add_argument("--xlabel", default="step")

    f = sub.add_parser("frontier", help="one point per setting (mean over seeds), Pareto line per method")
    f.add_argument("--runs", nargs="+", required=True, metavar="DIR", help="run directories or their parents")
    f.add_argument("--x", required=True, help="x metric, e.g. avg_reward or avg_return")
    f.add_argument(
        "--y", required=True, help="y metric, e.g. p_bad, cvar@0.0001 or attack_success@eta=-5 (GCG, any eta)"
    )
    f.add_argument(
        "--out", required=True, metavar="PATH", help="output path stem (.png and .pdf are written)"
    )
    f.add_argument("--log-y", action="store_true", help="logarithmic y axis")
    f.add_argument("--minimize-x", action="store_true", help="lower x is better (default: higher)")
    f.add_argument("--maximize-y", action="store_true", help="higher y is better (default: lower), e.g. CVaR")
    f.add_argument("--ci", type=float, default=0.95, help="interval coverage (default 0.95)")
    for axis in ("x", "y"):
        f.add_argument(
            f"--{axis}-stat",
            choices=("auto", "mean", "geomean"),
            default="auto",
            help=f"statistic over seeds for {axis}: mean, geomean (exp of the mean log), or auto "
            f"(default: geomean on a log axis, else mean)",
        )
    f.add_argument(
        "--interval",
        choices=("bootstrap", "t"),
        default="bootstrap",
        help="interval over seeds: bootstrap (percentile, seeded; default) or t (t-interval of the "
        "mean, of log values for geomean)",
    )
    f.add_argument(
        "--n-boot",
        type=int,
        default=10000,
        help="bootstrap resamples over seeds (default 10000; --interval bootstrap)",
    )
    f.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    return p


def plot_main(argv: list[str] | None = None) -> int:
    """Entry point of ``repulse plot``; returns the exit status (0)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if not 0.0 < args.ci < 1.0:
        raise UserError(f"--ci {args.ci}: must be between 0 and 1 (e.g. 0.95).")

    from repulse.report.runs import curves_from_runs, load_runs, resolve_metric

    groups = load_runs(args.runs)
    if args.kind == "curves":
        from repulse.report.plots import plot_curves

        metric, curves = curves_from_runs(groups, args.metric)
        paths = plot_curves(curves, metric, args.out, xlabel=args.xlabel, log_y=args.log_y, ci=args.ci)
    else:
        if args.n_boot < 1:
            raise UserError(f"--n-boot {args.n_boot}: must be at least 1.")
        from repulse.report.plots import frontier_figure

        x, y = resolve_metric(groups, args.x), resolve_metric(groups, args.y)
        _, paths = frontier_figure(
            groups,
            x,
            y,
            args.out,
            log_y=args.log_y,
            maximize_x=not args.minimize_x,
            minimize_y=not args.maximize_y,
            ci=args.ci,
            n_boot=args.n_boot,
            seed=args.seed,
            x_stat="mean" if args.x_stat == "auto" else args.x_stat,
            y_stat=("geomean" if args.log_y else "mean") if args.y_stat == "auto" else args.y_stat,
            interval=args.interval,
        )
    for path in paths:
        print(path)
    return 0
