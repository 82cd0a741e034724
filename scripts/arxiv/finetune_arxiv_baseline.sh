#!/usr/bin/env bash
# The no-memory baseline of the ArXiv experiment: the same GPT-2 on one block, no memory tokens. Same variables
# and overrides as finetune_arxiv_rmt.sh. To score exactly the blocks an RMT run scores, set INPUT_SIZE to that
# run's segment size (its INPUT_SIZE - 2 * MEMORY_SIZE, e.g. 1020 or 124).
set -euo pipefail
SCRIPT_DIR="$(realpath "$(dirname "${BASH_SOURCE[0]}")")"

MEMORY_SIZE=0 MAX_N_SEGMENTS=1 exec "$SCRIPT_DIR/finetune_arxiv_rmt.sh" "$@"
