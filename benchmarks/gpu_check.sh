#!/usr/bin/env bash
# The one-GPU check of issue 16 (benchmarks/gpu/gpu_check.py; benchmarks/gpu/README.md): the CUDA tests, training
# through the launcher with fp16 and bf16 (and a resume), inference memory, wrapper overhead, training step time
# and memory with and without segment checkpointing; one JSON line per figure on stdout, logs and gpu_check.jsonl
# under OUT_DIR. Without a GPU it prints one line saying so and exits 0. Arguments go to gpu_check.py, e.g.
#   benchmarks/gpu_check.sh --parts infer_memory,overhead      # some parts only
#   benchmarks/gpu_check.sh --device cpu --dry_run            # every code path on tiny sizes, on the CPU
set -euo pipefail
REPO_ROOT="$(realpath "$(dirname "${BASH_SOURCE[0]}")/..")"

PYTHON=${PYTHON:-python}
OUT_DIR=${OUT_DIR:-${OUT:-$REPO_ROOT/runs/gpu_check}}   # the device tool's $OUT comes back to the caller

export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" "$REPO_ROOT/benchmarks/gpu/gpu_check.py" --out_dir "$OUT_DIR" "$@"
