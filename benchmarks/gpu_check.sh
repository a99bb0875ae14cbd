#!/usr/bin/env bash
# GPU-scale extraction check, under 5 minutes on one GPU: the naive, prefix-reuse and all-variants-in-one-pass
# paths on a tiny real-class model and a ~1.3 B random-weight LLaVA-1.5-shaped model; prints throughput ratios
# and the largest differences between the paths. Runs as-is where an accelerator is available:
#   bash benchmarks/gpu_check.sh                              # with a GPU
#   bash benchmarks/gpu_check.sh --device cpu --scale smoke   # the same code at toy sizes on the CPU
# PYTHON=/path/to/python picks the interpreter (default: the project's .venv, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec "$PY" benchmarks/gpu_check.py "$@"
