"""Render ``bench/results/*.json`` as Markdown tables inside ``bench/README.md`` and the README.

Usage: ``python bench/report.py [--check]`` (standard library only: runs with any Python 3.10+);
``python bench/report.py --table rollout`` prints one results file's table and writes nothing.
The full tables go between ``<!-- bench:results:start -->`` and ``<!-- bench:results:end -->``
of ``bench/README.md``; a one-table summary (the ratios) between ``<!-- bench-results:start -->``
and ``<!-- bench-results:end -->`` of the top-level ``README.md``, and the Ray phase table between
``<!-- bench-ray:start -->`` and ``<!-- bench-ray:end -->`` of its multi-node section. Everything else in both files
is left alone. ``--check`` exits 1 if either is not up to date with the JSON (writing nothing).

Why generated: numbers typed by hand drift from the measurements; the JSON is the record.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
README = BENCH_DIR / "README.md"
START, END = "<!-- bench:results:start -->", "<!-- bench:results:end -->"
TOP_README = BENCH_DIR.parent / "README.md"
TOP_START, TOP_END = "<!-- bench-results:start -->", "<!-- bench-results:end -->"
RAY_START, RAY_END = "<!-- bench-ray:start -->", "<!-- bench-ray:end -->"  # the Ray section's phase table
ORDER = ["sft", "pref", "rl", "rollout", "scale", "ray"]
TITLES = {
    "sft": "SFT tokens/s vs TRL SFTTrainer (`bench_sft.py`)",
    "pref": "RM / DPO pairs/s vs TRL RewardTrainer / DPOTrainer (`bench_pref.py`)",
    "rl": "GRPO / RLOO samples/s vs TRL GRPOTrainer / RLOOTrainer (`bench_rl.py`)",
    "rollout": "GRPO samples/s by rollout backend: vLLM vs hf vs TRL GRPOTrainer (`bench_rollout.py`)",
    "scale": "repulse SFT, 1 vs 2 processes (`bench_scale.py`)",
    "ray": "GRPO phase timings on Ray vs one process (`bench_ray.py`)",
}
RAY_PHASES = ["generation", "reward", "training", "sync", "wait", "step"]
# bench_rollout.py's implementations, in table order, and the ratios its table shows
# (repulse_hf_vllm_venv: the hf backend in vLLM's venv, the like-for-like base of vLLM / hf)
ROLLOUT_IMPLS = {
    "repulse_vllm": "repulse, vLLM",
    "repulse_hf_vllm_venv": "repulse, hf (vLLM's venv)",
    "repulse": "repulse, hf",
    "trl": "TRL",
}
ROLLOUT_RATIOS = {
    "repulse_vllm/trl": "vLLM / TRL",
    "repulse/trl": "hf / TRL",
    "repulse_vllm/repulse_hf_vllm_venv": "vLLM / hf",
}


def _num(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}"


def _ratio(r: dict[str, Any] | None) -> str:
    if not r:
        return "n/a"
    text = f"**{r['ratio_of_medians']:.2f}x**"
    if r.get("paired_min") is not None and r.get("paired_max") is not None:
        text += f" ({r['paired_min']:.2f}-{r['paired_max']:.2f})"
    return text


def _goal(goal: float | None, r: dict[str, Any] | None) -> str:
    if goal is None:
        return ""
    if not r:
        return f">= {goal:g}x: not measured"
    if r["ratio_of_medians"] < goal:
        return f">= {goal:g}x: not met"
    low = r.get("paired_min")
    # "met" only when every paired round clears the goal; a median that clears it with some
    # rounds below is reported as such, not rounded up.
    return f">= {goal:g}x: {'met' if low is None or low >= goal else 'median only'}"


def _machine(m: dict[str, Any], cfg: dict[str, Any]) -> str:
    v = m.get("versions", {})
    load = m.get("loadavg_1_5_15")
    load_s = f", load average at the end {load[0]:.1f}" if load else ""
    return (
        f"_{m.get('date', '?')}; {m.get('cpu_count')} CPUs ({m.get('cpu_model') or 'unknown CPU'}){load_s}; "
        + ", ".join(f"{k} {v[k]}" for k in ("torch", "transformers", "trl", "deepspeed") if v.get(k))
        + f"; {cfg.get('rounds')} interleaved round(s), "
        f"{cfg.get('threads', '?')} thread(s) per process"
        + ("; QUICK smoke run, not a result" if cfg.get("quick") else "")
        + "._"
    )


def _errors(case: dict[str, Any]) -> list[str]:
    lines = []
    for impl, s in case["impls"].items():
        if s.get("n_failed"):
            first = (s.get("errors") or ["?"])[0].splitlines()
            head = first[0][:160] if first else "?"
            last = next((ln for ln in reversed(first) if ln.strip()), "")[:200]
            lines.append(
                f"- `{case['name']}` / {impl}: {s['n_failed']} trial(s) failed: `{head}` ... `{last}`"
            )
    return lines


def render_vs_trl(data: dict[str, Any]) -> list[str]:
    out = [
        "| case | unit | repulse | TRL | repulse / TRL (paired range) | goal |",
        "|---|---|---:|---:|---|---|",
    ]
    errors: list[str] = []
    for c in data["cases"]:
        imp = c["impls"]
        r = (c.get("ratios") or {}).get("repulse/trl")
        out.append(
            f"| `{c['name']}` | {c['unit']} | {_num(imp.get('repulse', {}).get('median'))} | "
            f"{_num(imp.get('trl', {}).get('median'))} | {_ratio(r)} | {_goal(c.get('goal_ratio'), r)} |"
        )
        errors += _errors(c)
    return out + ([""] + errors if errors else [])


def _generation_speedup(case: dict[str, Any], fast: str, base: str) -> dict[str, Any] | None:
    """Per round, ``base``'s mean logged generation time per step over ``fast``'s (the
    ``time_generate`` metric of both runs): the sampler alone, without the update around it."""
    per_round = []
    for rnd in sorted({t["round"] for t in case["trials"]}):
        times = {}
        for t in case["trials"]:
            if t["round"] == rnd and not t["error"] and t["extra"].get("mean_time_generate"):
                times[t["impl"]] = t["extra"]["mean_time_generate"]
        if fast in times and base in times:
            per_round.append(times[base] / times[fast])
    from harness import per_round_summary  # standard library only, as this file

    return per_round_summary(per_round)


def render_rollout(data: dict[str, Any]) -> list[str]:
    """One row per case: the four throughputs, the three ratios (medians, paired ranges), and the
    generation phase alone (vLLM against hf in the same venv)."""
    gen = "generation alone: vLLM / hf"
    head = ["case", "parameters", "new tokens", *ROLLOUT_IMPLS.values(), *ROLLOUT_RATIOS.values(), gen]
    out = [
        "| " + " | ".join(head) + " |",
        "|---|---:|---:|" + "---:|" * len(ROLLOUT_IMPLS) + "---|" * (len(ROLLOUT_RATIOS) + 1),
    ]
    errors: list[str] = []
    for c in data["cases"]:
        w, imp, ratios = c.get("workload", {}), c["impls"], c.get("ratios") or {}
        params = w.get("model_parameters")
        cells = [
            f"`{c['name']}`",
            f"{params / 1e6:.1f}M" if params else "toy (1M)",
            str(w.get("max_new_tokens", "?")),
            *(_num(imp.get(k, {}).get("median")) for k in ROLLOUT_IMPLS),
            *(_ratio(ratios.get(k)) for k in ROLLOUT_RATIOS),
            _ratio(_generation_speedup(c, "repulse_vllm", "repulse_hf_vllm_venv")),
        ]
        out.append("| " + " | ".join(cells) + " |")
        cpu = c.get("cpu_ratios") or {}
        if cpu:
            blank = [""] * (2 + len(ROLLOUT_IMPLS))
            cells = [
                f"`{c['name']}` per CPU-second",
                *blank,
                *(_ratio(cpu.get(k)) for k in ROLLOUT_RATIOS),
                "",
            ]
            out.append("| " + " | ".join(cells) + " |")
        errors += _errors(c)
    unit = data["cases"][0]["unit"] if data["cases"] else "samples/s"
    return [
        f"Throughput in {unit} (median over rounds); ratios of the medians (range of the per-round "
        "ratios). Generation alone: per round, the hf run's mean `time_generate` per step over the vLLM "
        "run's, both in vLLM's venv (median, range). Rows 'per CPU-second': the same ratios of samples "
        "per CPU-second of each worker process (one thread each), which the load of other jobs "
        "does not move.",
        "",
        *out,
    ] + ([""] + errors if errors else [])


def render_ray(data: dict[str, Any]) -> list[str]:
    """One row per case: the median time per step of each phase, samples/s, and the step time
    over the one-process run's (measured in the same run of the driver)."""
    cases = {c["case"]: c for c in data["cases"]}
    local = cases.get("local", {}).get("step")
    head = ["case", *RAY_PHASES, "samples/s", "step / one process"]
    out = [
        f"Median per step over the steps after the first {data.get('config', {}).get('warmup', '?')} "
        "(`time_*` metrics of each run); '-': the phase does not exist in that case. With async the "
        "generation runs beside the training, so a step takes less than the sum of its phases.",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    for c in data["cases"]:
        cells = ["-" if c.get(k) is None else f"{c[k] * 1000:,.0f} ms" for k in RAY_PHASES]
        ratio = f"{c['step'] / local:.2f}x" if local and c.get("step") else "n/a"
        out.append(
            f"| `{c['case']}` | " + " | ".join(cells) + f" | {_num(c.get('samples_per_s'))} | {ratio} |"
        )
    return out


def render_table(name: str) -> str:
    """One results file as Markdown: its heading, machine line, table and notes."""
    data = json.loads((RESULTS / f"{name}.json").read_text())
    kind = name.split("_quick")[0]
    lines = [f"### {TITLES.get(kind, name)}", "", _machine(data["machine"], data.get("config", {})), ""]
    lines += _render(kind, data)
    for note in data.get("notes", []):
        lines += ["", f"> {note}"]
    return "\n".join(lines)


def _render(name: str, data: dict[str, Any]) -> list[str]:
    if name == "scale":
        return render_scale(data)
    if name == "rollout":
        return render_rollout(data)
    if name == "ray":
        return render_ray(data)
    return render_vs_trl(data)


def render_scale(data: dict[str, Any]) -> list[str]:
    out = [
        "| variant | tokens/s | vs 1 process (paired range) | peak RSS per process (MiB) |",
        "|---|---:|---|---|",
    ]
    errors: list[str] = []
    for c in data["cases"]:
        for impl, s in c["impls"].items():
            r = (c.get("ratios") or {}).get(f"{impl}/1proc")
            per_proc = _per_process_rss(c, impl) or "n/a"
            out.append(
                f"| `{impl}` | {_num(s.get('median'))} | {'1.00x' if impl == '1proc' else _ratio(r)} | {per_proc} |"
            )
        errors += _errors(c)
    return out + ([""] + errors if errors else [])


def _per_process_rss(case: dict[str, Any], impl: str) -> str:
    """Median over trials of each rank's peak RSS, as 'rank0 / rank1'."""
    per_rank: dict[int, list[float]] = {}
    for t in case["trials"]:
        if t["impl"] == impl and not t["error"]:
            for rank, x in enumerate(t["peak_rss_mib"]):
                per_rank.setdefault(rank, []).append(x)
    parts = []
    for rank in sorted(per_rank):
        xs = sorted(per_rank[rank])
        parts.append(f"{xs[len(xs) // 2]:,.0f}")
    return " / ".join(parts)


def render() -> str:
    lines = [START, ""]
    results = _results()
    for name, data in results:
        lines += [f"### {TITLES.get(name, name)}", "", _machine(data["machine"], data.get("config", {})), ""]
        lines += _render(name, data)
        for note in data.get("notes", []):
            lines += ["", f"> {note}"]
        lines.append("")
    if not results:
        lines += ["_No results yet: run `bash bench/run_all.sh`._", ""]
    lines.append(END)
    return "\n".join(lines)


def _results() -> list[tuple[str, dict[str, Any]]]:
    names = ORDER + sorted(
        p.stem for p in RESULTS.glob("*.json") if p.stem not in ORDER and "quick" not in p.stem
    )
    return [
        (n, json.loads((RESULTS / f"{n}.json").read_text()))
        for n in names
        if (RESULTS / f"{n}.json").exists()
    ]


def render_summary() -> str:
    """The top-level README's table: every case's ratio, from the same JSON."""
    lines = [TOP_START, ""]
    rows = [
        "| benchmark | case | unit | repulse | peer | ratio (paired range) | goal |",
        "|---|---|---|---:|---:|---|---|",
    ]
    dates = set()
    for name, data in _results():
        dates.add(str(data["machine"].get("date", "?"))[:10])
        if name == "ray":
            local = next((c for c in data["cases"] if c["case"] == "local"), None)
            for c in data["cases"]:
                if c is local or not local or not c.get("samples_per_s"):
                    continue
                rows.append(
                    f"| {name} | `{c['case']}` vs one process | samples/s | {_num(c['samples_per_s'])} | "
                    f"{_num(local.get('samples_per_s'))} | {c['samples_per_s'] / local['samples_per_s']:.2f}x | |"
                )
            continue
        for c in data["cases"]:
            imp = c["impls"]
            if name == "rollout":
                for key, label in ROLLOUT_RATIOS.items():
                    a, b = key.split("/")
                    cpu = (c.get("cpu_ratios") or {}).get(key)
                    rows.append(
                        f"| {name} | `{c['name']}` {label} | {c['unit']} | {_num(imp.get(a, {}).get('median'))} | "
                        f"{_num(imp.get(b, {}).get('median'))} | {_ratio((c.get('ratios') or {}).get(key))}"
                        + (f"; per CPU-second {_ratio(cpu)}" if cpu else "")
                        + " | |"
                    )
                continue
            if name == "scale":
                for impl, st in imp.items():
                    if impl == "1proc":
                        continue
                    r = (c.get("ratios") or {}).get(f"{impl}/1proc")
                    rows.append(
                        f"| {name} | `{impl}` vs 1 process | {c['unit']} | {_num(st.get('median'))} | "
                        f"{_num(imp.get('1proc', {}).get('median'))} | {_ratio(r)} | |"
                    )
                continue
            r = (c.get("ratios") or {}).get("repulse/trl")
            rows.append(
                f"| {name} | `{c['name']}` vs TRL | {c['unit']} | {_num(imp.get('repulse', {}).get('median'))} | "
                f"{_num(imp.get('trl', {}).get('median'))} | {_ratio(r)} | {_goal(c.get('goal_ratio'), r)} |"
            )
    if len(rows) == 2:
        lines += ["_No results yet: run `bash bench/run_all.sh`._", ""]
    else:
        lines += [
            f"Measured {', '.join(sorted(dates))} on the 2-core CPU machine described in `bench/README.md`:",
            "",
        ]
        lines += rows + [""]
    lines.append(TOP_END)
    return "\n".join(lines)


def _splice(path: Path, start: str, end: str, body: str) -> tuple[str, str] | None:
    text = path.read_text()
    if start not in text or end not in text:
        sys.stderr.write(f"error: {path} has no {start} ... {end} markers to write the tables between.\n")
        return None
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return text, head + body + tail


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if a README is stale; write nothing")
    p.add_argument(
        "--table",
        metavar="NAME",
        help="print the Markdown of bench/results/NAME.json (e.g. rollout) and write nothing else",
    )
    args = p.parse_args(argv)
    if args.table:
        if not (RESULTS / f"{args.table}.json").exists():
            sys.stderr.write(f"error: no {RESULTS / args.table}.json; run its bench driver first.\n")
            return 2
        print(render_table(args.table))
        return 0
    targets = [(README, START, END, render()), (TOP_README, TOP_START, TOP_END, render_summary())]
    if (RESULTS / "ray.json").exists():
        targets.append(
            (TOP_README, RAY_START, RAY_END, "\n".join([RAY_START, "", render_table("ray"), "", RAY_END]))
        )
    status = 0
    for path, start, end, body in targets:
        spliced = _splice(path, start, end, body)
        if spliced is None:
            return 2
        old, new = spliced
        if args.check:
            if new != old:
                sys.stderr.write(f"{path} is out of date with bench/results: run python bench/report.py\n")
                status = 1
            continue
        path.write_text(new)
        print(f"[report] wrote the results tables into {path}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
