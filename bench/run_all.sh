#!/usr/bin/env bash
# Runs every benchmark (repulse vs TRL side by side, repulse 1 vs 2 processes, Ray vs one process), writes
# bench/results/<name>.json and renders the tables into bench/README.md.
#
# Usage: bash bench/run_all.sh [--quick] [--rounds N] [--threads N]
#   (extra flags go to every driver; --quick = one round of few steps, a smoke test only:
#    its JSON is written as <name>_quick.json and is not rendered into the README.)
#
# Why one script: the README's numbers must come from one run on one machine state, with the
# same flags for every benchmark. A failing benchmark does not stop the others; the script
# exits non-zero at the end if any failed.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="$HERE/.venv/bin/python"
if [[ ! -x "$PY" ]]; then
  echo "error: $HERE/.venv does not exist; create it first with: bash $HERE/setup.sh" >&2
  exit 2
fi

status=0
for bench in bench_sft bench_pref bench_rl bench_rollout bench_scale; do
  echo "=== $bench $* ==="
  # Each trial has its own timeout inside the driver; this outer one only catches a wedged driver.
  timeout 7200 "$PY" "$HERE/$bench.py" "$@" || { echo "!!! $bench failed (status $?)" >&2; status=1; }
done
# bench_ray.py (phase timings on Ray vs one process) takes its own flags: one run of 12 steps, or
# a 3-step smoke run under --quick (written as ray_quick.json, not rendered)
ray_flags=()
[[ " $* " == *" --quick "* ]] && ray_flags=(--steps 3 --warmup 1 --out "$HERE/results/ray_quick.json")
echo "=== bench_ray ${ray_flags[*]} ==="
timeout 3600 "$PY" "$HERE/bench_ray.py" "${ray_flags[@]}" || { echo "!!! bench_ray failed (status $?)" >&2; status=1; }
"$PY" "$HERE/report.py" || status=1
exit $status
