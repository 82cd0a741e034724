#!/usr/bin/env bash
# A launcher as thin as those in scripts/: starts train_tiny.py through scripts/launch.sh (torchrun or accelerate,
# one or several machines); extra arguments go to train_tiny.py.
set -euo pipefail
SCRIPT_DIR="$(realpath "$(dirname "${BASH_SOURCE[0]}")")"
REPO_ROOT="$(realpath "$SCRIPT_DIR/../..")"

NP=${NP:-1}

source "$REPO_ROOT/scripts/launch.sh"               # checks NNODES, NODE_RANK, MASTER_*, LAUNCHER; defines launch
launch "$SCRIPT_DIR/train_tiny.py" "$@"
