#!/usr/bin/env bash
# The paper's curriculum: train on 1, 2, ..., 7 segments in turn, each stage initialised from the previous
# stage's best checkpoint (docs/design.md, "Training, checkpoints and resume"). Same variables and overrides as
# finetune_babilong_rmt.sh.
set -euo pipefail
SCRIPT_DIR="$(realpath "$(dirname "${BASH_SOURCE[0]}")")"

SEGMENTS=${SEGMENTS:-1 2 3 4 5 6 7} exec "$SCRIPT_DIR/finetune_babilong_rmt.sh" "$@"
