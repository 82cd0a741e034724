#!/usr/bin/env bash
# Reasoning: two relation facts at random positions; the paper trains 20000 iterations per stage.
# Same variables and overrides as finetune_babilong_rmt.sh.
set -euo pipefail
SCRIPT_DIR="$(realpath "$(dirname "${BASH_SOURCE[0]}")")"

TASK=reasoning ITERS=${ITERS:-20000} exec "$SCRIPT_DIR/finetune_babilong_rmt_curriculum.sh" "$@"
