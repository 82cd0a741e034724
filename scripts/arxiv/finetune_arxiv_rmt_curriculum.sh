#!/usr/bin/env bash
# Curriculum of the ArXiv experiment: train on SEGMENTS = 2, 3, ..., 7 segments in turn, each stage initialised
# from the best checkpoint of the stage before (--model_cpt). MODEL_CPT, when set, initialises the first stage.
# Same variables and overrides as finetune_arxiv_rmt.sh.
set -euo pipefail
SCRIPT_DIR="$(realpath "$(dirname "${BASH_SOURCE[0]}")")"

SEGMENTS=${SEGMENTS:-2 3 4 5 6 7}
MODEL_NAME=${MODEL_NAME-gpt2}
INPUT_SIZE=${INPUT_SIZE:-1024}
MEMORY_SIZE=${MEMORY_SIZE:-2}
RUN_N=${RUN_N:-1}
RUNS_DIR=${RUNS_DIR:-$(realpath "$SCRIPT_DIR/../..")/runs}
MODEL_TAG=${MODEL_NAME:-gpt2-small-scratch}
CURRICULUM_DIR=$RUNS_DIR/arxiv/${MODEL_TAG//\//_}/curriculum_in${INPUT_SIZE}_mem${MEMORY_SIZE}
MODEL_CPT=${MODEL_CPT:-}

for N in $SEGMENTS; do
    MODEL_PATH="$CURRICULUM_DIR/seg$N/run_$RUN_N"
    MODEL_NAME="$MODEL_NAME" INPUT_SIZE="$INPUT_SIZE" MEMORY_SIZE="$MEMORY_SIZE" MAX_N_SEGMENTS="$N" \
        MODEL_CPT="$MODEL_CPT" MODEL_PATH="$MODEL_PATH" "$SCRIPT_DIR/finetune_arxiv_rmt.sh" "$@"
    MODEL_CPT="$MODEL_PATH"
done
