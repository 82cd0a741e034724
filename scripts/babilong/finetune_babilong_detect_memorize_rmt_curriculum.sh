#!/usr/bin/env bash
# Detect & memorize: the fact starts a uniformly chosen segment; the paper's curriculum and setting.
# Same variables and overrides as finetune_babilong_rmt.sh.
set -euo pipefail
SCRIPT_DIR="$(realpath "$(dirname "${BASH_SOURCE[0]}")")"

TASK=detect_memorize exec "$SCRIPT_DIR/finetune_babilong_rmt_curriculum.sh" "$@"
