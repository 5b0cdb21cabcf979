#!/usr/bin/env bash
# Creates bench/.venv: repulse (editable) + TRL, the side-by-side peer (+ py-spy for profiles).
#
# Why a separate environment: TRL is a benchmark peer, never a dependency of repulse, so it
# must not leak into the project's own venv. torch is installed first and every later
# install is constrained by ../constraints.txt, so pip can never swap the CPU torch build for
# a multi-GB CUDA one, nor move transformers off the pin repulse is tested with.
#
# Idempotent: re-running skips the venv creation and lets pip report "already satisfied".
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VENV="$HERE/.venv"
PY="${PYTHON:-python3}"
TRL_VERSION="${TRL_VERSION:-1.16.0}"

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off)

"${PIP[@]}" --upgrade pip >/dev/null
# 1. torch first, from its pin (the local CPU wheel).
"${PIP[@]}" "torch==2.13.0"
# 2. repulse's pinned stack + deepspeed (bench_scale) + ray (bench_ray) + TRL, all under the constraints.
#    trl is not in constraints.txt, so it is pinned here; if its requirements conflicted with
#    the pins, pip would fail loudly here instead of silently moving transformers.
"${PIP[@]}" -c "$ROOT/constraints.txt" \
  transformers tokenizers huggingface-hub safetensors accelerate peft datasets \
  deepspeed ray pyyaml rich tensorboard matplotlib \
  "trl==$TRL_VERSION" psutil py-spy
# 3. repulse itself, editable, without letting its loose lower bounds re-resolve anything.
"${PIP[@]}" -c "$ROOT/constraints.txt" -e "$ROOT"

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md

for name in ("torch", "transformers", "trl", "accelerate", "datasets", "deepspeed", "repulse"):
    print(f"[setup] {name}=={md.version(name)}")
PY
echo "[setup] done: $VENV"
