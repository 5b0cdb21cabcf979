#!/usr/bin/env bash
# Runs every benchmark (repulse vs TRL side by side, and repulse 1 vs 2 processes), writes
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
"$PY" "$HERE/report.py" || status=1
exit $status
