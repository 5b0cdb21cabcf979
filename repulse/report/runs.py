"""Find run directories, read their numbers, and group them by method, setting and seed.

A *run directory* is any directory holding ``config.yaml`` (the resolved config every command
writes) and ``metrics.jsonl`` (one JSON object per logged step, with ``step``) and/or
``tail_summary.json`` (the output of :func:`repulse.evaluation.tail_stats.summarise` for the
run's held-out samples).  Runs are discovered by walking the given paths - there are no file
lists or name patterns to keep in sync (spec §6.15: the reference plots located results by
long hard-coded name strings, which went stale).

Grouping:

* **method** (a plot's "family"): the config's top-level ``method`` key if present (a free
  label), else ``repulse.method``; the plain-RL method ``rl`` is qualified by its advantage
  estimator (``rl:gae`` for PPO, ``rl:rloo``, ...), since those are different baselines;
* **setting**: the config with the seed and run-specific paths removed (``train.seed``,
  ``seed``, the ``ckpt`` and ``logger`` sections, keys ending in ``_dir``/``_path``,
  ``repulse.save_negdata``).  Runs with equal settings are seeds of one configuration - one
  point of a frontier, one curve of a training plot; the keys that differ between settings of a
  method become the setting's label (``beta=10, alpha=0.01``);
* **seed**: ``train.seed`` (or a top-level ``seed``).

Tail summaries are read in either form: statistic blocks at the top level (the dict
:func:`~repulse.evaluation.tail_stats.summarise` returns), or nested per threshold under
``by_eta`` (as ``repulse eval-tail`` writes them) - see :func:`summary_metrics`.

GCG results (``gcg_summary.json``, written by ``repulse gcg`` into the policy's run directory)
hold every sample's reward, so the attack success rate is computed for whatever threshold a plot
asks for: ``attack_success@eta=-5`` (also spelled ``attack_success@-5``) is the fraction of
targets with some sample below -5, with a Wilson interval over targets (:func:`gcg_value`).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from repulse.errors import UserError, warn_once

__all__ = [
    "Run",
    "available_metrics",
    "curves_from_runs",
    "gcg_value",
    "load_runs",
    "resolve_metric",
    "run_series",
    "run_value",
    "summary_metrics",
]

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "tail_summary.json"
GCG_FILE = "gcg_summary.json"
_ASR = re.compile(r"^attack_success@(?:eta=)?([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)$")

_IGNORED_KEYS = {"train.seed", "seed", "repulse.save_negdata"}
_IGNORED_PREFIXES = ("ckpt.", "logger.")
_IGNORED_SUFFIXES = ("_dir", "_path")


@dataclass(frozen=True)
class Run:
    """One run directory's config and numbers."""

    path: Path
    method: str
    seed: int | None
    setting: str  # canonical JSON of the config without seed and paths
    config: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl, in order
    summary: dict[str, Any] | None = None  # tail_summary.json, as written
    setting_label: str = ""  # the keys that distinguish this setting within its method
    gcg: dict[str, Any] | None = None  # gcg_summary.json, as written

    @property
    def summary_values(self) -> dict[str, Any]:
        """The tail summary's statistics by name (:func:`summary_metrics`), plus the GCG attack
        success at the thresholds its file names (``attack_success@eta=X``; any other X is computed
        on demand by :func:`run_value`); {} without either."""
        out = summary_metrics(self.summary) if self.summary else {}
        if self.gcg:
            etas = [float(e) for e in self.gcg.get("eta") or [] if _is_number(e)]
            for eta in etas:
                out.setdefault(_asr_name(eta), gcg_value(self.gcg, eta))
            if len(etas) == 1:
                out.setdefault("attack_success", gcg_value(self.gcg, etas[0]))
        return out

    @property
    def label(self) -> str:
        """``method`` or ``method [setting_label]``."""
        return f"{self.method} [{self.setting_label}]" if self.setting_label else self.method


# --------------------------------------------------------------------------- reading


def _read_config(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read the run config ({exc}).") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the run config must be a YAML mapping, got {type(data).__name__}.")
    return data


def _number(value: Any) -> Any:
    """Floats written as strings by the metrics log ("nan", "inf", "-inf") become floats again."""
    if isinstance(value, str) and value.lower() in {"nan", "inf", "-inf", "+inf", "infinity", "-infinity"}:
        return float(value)
    return value


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc}).") from None
    records: list[dict[str, Any]] = []
    numbered = [(i + 1, ln) for i, ln in enumerate(lines) if ln.strip()]
    for pos, (lineno, line) in enumerate(numbered):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if pos == len(numbered) - 1:  # a run still writing, or killed mid-line
                warn_once(f"runs.partial.{path}", f"{path}:{lineno}: ignoring an incomplete last line.")
                continue
            raise UserError(
                f"{path}:{lineno}: not a JSON object; metrics.jsonl holds one per line."
            ) from None
        if not isinstance(rec, dict) or "step" not in rec:
            raise UserError(f"{path}:{lineno}: each line must be a JSON object with a 'step' key.")
        records.append({k: _number(v) for k, v in rec.items()})
    return records


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read the tail summary ({exc}).") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the tail summary must be a JSON object.")
    return data


def _read_gcg(path: Path) -> dict[str, Any]:
    from repulse.workflows.gcg import read_summary

    return read_summary(path)


def _asr_name(eta: float) -> str:
    return f"attack_success@eta={eta:g}"


def gcg_value(gcg: dict[str, Any], eta: float) -> dict[str, Any]:
    """Attack success rate at ``eta`` from a GCG summary's saved rewards: ``{"mean", "low", "high",
    "successes", "n_targets"}`` (a target succeeds if some sample has reward < eta)."""
    from repulse.workflows.gcg import attack_success, rewards_of

    block = attack_success(rewards_of(gcg), eta)
    return {k: block[k] for k in ("mean", "low", "high", "successes", "n_targets")}


def summary_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """Name → number or ``{"mean", "low", "high", ...}`` block, from a tail summary.

    * top-level numbers and blocks keep their names (``p_bad``, ``cvar@0.01``, ``avg_reward``,
      ``exact_log_p_bad``, ...);
    * under ``by_eta`` ({η: summarise() block}), every statistic is named ``{name}@eta={η}``,
      and also plain ``{name}`` when it is the same for every η (always so with one η; with
      several, ``avg_reward`` stays plain and ``p_bad`` does not);
    * a single-run importance-sampling estimate (``importance``: [one estimate]) becomes
      ``p_bad_is`` (unbiased, with its CLT interval) and ``p_bad_is_sn`` (self-normalised).
    """
    out: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in summary.items():
        if key == "by_eta" and isinstance(value, dict):
            for eta, block in value.items():
                if isinstance(block, dict):
                    nested[str(eta)] = summary_metrics(block)
        elif _summary_number(value) is not None:
            out[key] = value
        elif (
            key == "importance" and isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)
        ):
            est = value[0]
            if _is_number(est.get("estimate")):
                out["p_bad_is"] = {"mean": est["estimate"], "low": est.get("low"), "high": est.get("high")}
            # the self-normalised (biased) estimate; summaries written before it was so named say "self_normalised"
            sn = "self_normalised_biased" if "self_normalised_biased" in est else "self_normalised"
            if _is_number(est.get(sn)):
                out["p_bad_is_sn"] = {
                    "mean": est[sn],
                    "low": est.get(f"{sn}_low", est.get("sn_low")),
                    "high": est.get(f"{sn}_high", est.get("sn_high")),
                }
    names = {k for block in nested.values() for k in block}
    for name in sorted(names):
        values = [block.get(name) for block in nested.values()]
        for eta, block in nested.items():
            if name in block:
                out.setdefault(f"{name}@eta={eta}", block[name])
        same = {json.dumps(_summary_number(v)) for v in values}
        if len(same) == 1 and None not in values:
            out.setdefault(name, values[0])
    return out


def _get(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(cfg, dict):
        out: dict[str, Any] = {}
        for k, v in cfg.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: cfg}


def _setting_items(cfg: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in _flatten(cfg).items()
        if k not in _IGNORED_KEYS
        and not k.startswith(_IGNORED_PREFIXES)
        and not k.endswith(_IGNORED_SUFFIXES)
    }


def _method_of(cfg: dict[str, Any]) -> str:
    method = cfg.get("method")
    if not isinstance(method, str) or not method:
        method = _get(cfg, "repulse.method")
    if not isinstance(method, str) or not method:
        return "unknown"
    if method == "rl":
        estimator = _get(cfg, "algo.advantage.estimator")
        if isinstance(estimator, str) and estimator:
            return f"rl:{estimator}"
    return method


def _seed_of(cfg: dict[str, Any]) -> int | None:
    seed = _get(cfg, "train.seed")
    if seed is None:
        seed = cfg.get("seed")
    try:
        return None if seed is None else int(seed)
    except (TypeError, ValueError):
        return None


def _discover(paths: Iterable[str | Path]) -> list[Path]:
    found: dict[Path, None] = {}
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            raise UserError(f"--runs {raw}: no such file or directory.")
        if root.is_file():
            root = root.parent
        for dirpath, dirnames, filenames in os.walk(root):
            names = set(filenames)
            if CONFIG_FILE in names and names & {METRICS_FILE, SUMMARY_FILE, GCG_FILE}:
                found[Path(dirpath).resolve()] = None
                dirnames[:] = []  # a run's sub-directories (checkpoints, exports) are not runs
            else:
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return list(found)


def _label_settings(runs: list[Run]) -> list[Run]:
    """Name each setting of a method by the config keys whose values differ between settings."""
    settings = {r.setting: _setting_items(r.config) for r in runs}
    if len(settings) <= 1:
        return runs
    keys = sorted({k for items in settings.values() for k in items})
    varying = [
        k for k in keys if len({json.dumps(items.get(k), sort_keys=True) for items in settings.values()}) > 1
    ]
    short = {k: k.rsplit(".", 1)[-1] for k in varying}
    if len(set(short.values())) < len(short):
        short = {k: k for k in varying}
    labels = {
        s: ", ".join(f"{short[k]}={items.get(k)}" for k in varying if k in items) or "default"
        for s, items in settings.items()
    }
    return [replace(r, setting_label=labels[r.setting]) for r in runs]


def load_runs(paths: str | Path | Iterable[str | Path]) -> dict[str, list[Run]]:
    """Every run directory under ``paths`` (run directories or parents), grouped by method.

    Returns ``{method: [Run, ...]}`` with each method's runs ordered by (setting, seed, path).
    Raises :class:`~repulse.errors.UserError` if a path does not exist or no run is found.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = list(paths)
    dirs = _discover(paths)
    if not dirs:
        shown = " ".join(str(p) for p in paths) or "(none given)"
        raise UserError(
            f"no runs found under {shown}: a run directory holds {CONFIG_FILE} and {METRICS_FILE} "
            f"(or {SUMMARY_FILE}), as written by every repulse training command."
        )
    groups: dict[str, list[Run]] = {}
    for d in dirs:
        cfg = _read_config(d / CONFIG_FILE)
        records = _read_metrics(d / METRICS_FILE) if (d / METRICS_FILE).exists() else []
        summary = _read_summary(d / SUMMARY_FILE) if (d / SUMMARY_FILE).exists() else None
        gcg = _read_gcg(d / GCG_FILE) if (d / GCG_FILE).exists() else None
        setting = json.dumps(_setting_items(cfg), sort_keys=True, default=str)
        run = Run(d, _method_of(cfg), _seed_of(cfg), setting, cfg, records, summary, gcg=gcg)
        groups.setdefault(run.method, []).append(run)
    out: dict[str, list[Run]] = {}
    for method in sorted(groups):
        runs = sorted(groups[method], key=lambda r: (r.setting, r.seed is None, r.seed or 0, str(r.path)))
        seen: dict[tuple[str, int | None], Path] = {}
        for r in runs:
            key = (r.setting, r.seed)
            if key in seen and r.seed is not None:
                warn_once(
                    f"runs.duplicate_seed.{r.path}",
                    f"{r.path} and {seen[key]} are the same configuration with the same seed "
                    f"({r.seed}); both are used.",
                )
            seen.setdefault(key, r.path)
        out[method] = _label_settings(runs)
    return out


# --------------------------------------------------------------------------- metrics


def available_metrics(groups: dict[str, list[Run]], series_only: bool = False) -> list[str]:
    """Every metric name present in some run: metrics.jsonl keys and (unless ``series_only``,
    for curves over steps) tail-summary keys."""
    names: set[str] = set()
    for runs in groups.values():
        for r in runs:
            for rec in r.records:
                names.update(k for k, v in rec.items() if k not in {"step", "time"} and _is_number(v))
            if not series_only:
                names.update(r.summary_values)
    return sorted(names)


def resolve_metric(groups: dict[str, list[Run]], metric: str, series_only: bool = False) -> str:
    """The stored name of ``metric``: itself if present, else the unique key ending in ``/metric``
    (so ``p_bad`` finds ``eval/p_bad``).  Unknown or ambiguous names raise a UserError that
    lists the metrics that exist (``series_only``: only metrics.jsonl keys count)."""
    asr = _ASR.match(metric)
    if asr and not series_only and any(r.gcg for runs in groups.values() for r in runs):
        return _asr_name(float(asr.group(1)))  # any threshold: computed from the saved rewards
    names = available_metrics(groups, series_only)
    if metric in names:
        return metric
    matches = [n for n in names if n.endswith("/" + metric)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UserError(f"metric '{metric}' is ambiguous: it matches {', '.join(matches)}; name one of them.")
    listing = ", ".join(names) if names else "(none)"
    where = "metrics.jsonl over steps" if series_only else "metrics.jsonl or tail_summary.json"
    raise UserError(f"unknown metric '{metric}': the runs found have, in {where}: {listing}.")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _summary_number(v: Any) -> float | None:
    if _is_number(v):
        return float(v)
    if isinstance(v, dict):
        for key in ("mean", "value"):
            if _is_number(v.get(key)):
                return float(v[key])
    return None


def run_series(run: Run, metric: str) -> list[tuple[float, float]]:
    """(step, value) for every metrics.jsonl record that has ``metric`` (NaN values dropped)."""
    out = []
    for rec in run.records:
        v = rec.get(metric)
        if _is_number(v) and not math.isnan(v) and _is_number(rec.get("step")):
            out.append((float(rec["step"]), float(v)))
    return out


def run_value(run: Run, metric: str) -> tuple[float, tuple[float, float] | None] | None:
    """A run's final value of ``metric`` and, if the tail summary has one, its interval.

    ``attack_success@eta=X`` comes from the run's ``gcg_summary.json`` at any X.  Otherwise looks
    in ``tail_summary.json`` first (a number, or a block with ``mean``/``low``/``high``), then
    takes the last value logged in ``metrics.jsonl``.  None if the run has neither.
    """
    asr = _ASR.match(metric)
    if asr and run.gcg:
        block = gcg_value(run.gcg, float(asr.group(1)))
        return block["mean"], (block["low"], block["high"])
    values = run.summary_values
    if metric in values:
        block = values[metric]
        value = _summary_number(block)
        if value is not None:
            interval = None
            if isinstance(block, dict) and _is_number(block.get("low")) and _is_number(block.get("high")):
                interval = (float(block["low"]), float(block["high"]))
            return value, interval
    series = run_series(run, metric)
    if series:
        return series[-1][1], None
    return None


def curves_from_runs(
    groups: dict[str, list[Run]], metric: str
) -> tuple[str, dict[str, list[list[tuple[float, float]]]]]:
    """(resolved metric name, {run label: [per-seed (step, value) series]}) for :func:`plot_curves`.

    The label is the method, qualified by the setting when a method has several; runs that never
    logged the metric are left out.  An unknown metric raises a UserError (see
    :func:`resolve_metric`; only metrics.jsonl keys count).
    """
    name = resolve_metric(groups, metric, series_only=True)
    curves: dict[str, list[list[tuple[float, float]]]] = {}
    for runs in groups.values():
        for run in runs:
            series = run_series(run, name)
            if series:
                curves.setdefault(run.label, []).append(series)
    return name, curves
