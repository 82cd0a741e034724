#!/usr/bin/env bash
# The paper's figure in miniature on the offline default (docs/design.md): memorize, detect&memorize and reasoning,
# each trained by scripts/babilong/offline_main_job.sh with its own recipe, each evaluated at its trained lengths,
# at 16x the longest and on 100k-token samples (LONG_EVAL_SEGMENTS = 1,755 segments, LONG_EVAL_SAMPLES samples),
# all drawn on one accuracy-vs-input-size plot, RUNS_DIR/accuracy_vs_length.png. Targets at 100k tokens (the
# paper's own 2M-token figures): memorize >= 99%, detect&memorize >= 96%, reasoning >= 82%. What each recipe
# reached, and what was tried: babilong/RESULTS.md.
#   detect&memorize: the main job with its long stage on DETECT_LONG_SEGMENTS (12) segments.
#   reasoning first learns reasoning_plain (both facts and the question in one phrasing) on one segment, starting
#   from memorize's checkpoint when memorize ran before it; then the main job's stages on the full task
#   (REASONING_RECIPE: up to 400 steps per curriculum stage).
# TASKS="detect_memorize" (any subset, in this order) runs part of the figure; the plot draws every task of TASKS
# found under RUNS_DIR. Every variable can be overridden from the environment; extra arguments go to
# run_finetuning_babilong_rmt.py.
set -euo pipefail
SCRIPT_DIR="$(realpath "$(dirname "${BASH_SOURCE[0]}")")"
REPO_ROOT="$(realpath "$SCRIPT_DIR/../..")"

RUNS_DIR=${RUNS_DIR:-$REPO_ROOT/runs/offline_paper_figure}
TASKS=${TASKS:-memorize detect_memorize reasoning}
LONG_EVAL_SEGMENTS=${LONG_EVAL_SEGMENTS:-1755}
LONG_EVAL_SAMPLES=${LONG_EVAL_SAMPLES:-64}
LONG_SEGMENTS=${LONG_SEGMENTS:-6}              # the main job's last stage, for memorize and reasoning
DETECT_LONG_SEGMENTS=${DETECT_LONG_SEGMENTS:-12}  # detect&memorize's long stage (why 12: docs/results.md)
WARMUP_ITERS=${WARMUP_ITERS:-300}              # reasoning_plain on 1 segment, ends at WARMUP_STOP_AT exact match (%)
WARMUP_STOP_AT=${WARMUP_STOP_AT:-95}
REASONING_RECIPE=${REASONING_RECIPE:-ITERS=400 VALID_INTERVAL=50 PATIENCE=3 STOP_AT=95}
INPUT_SIZE=${INPUT_SIZE:-64}
MEMORY_SIZE=${MEMORY_SIZE:-4}
TBS=${TBS:-16}

source "$SCRIPT_DIR/run_dirs.sh"

memorize_run() {  # memorize's last stage (the main job's long stage), when it has been trained
    local run
    run=$(offline_run_dir memorize "$INPUT_SIZE" "$LONG_SEGMENTS" "${LONG_LR:-5e-5}")
    if [[ -f $run/model_best.pth ]]; then echo "$run"; fi
}

for task in $TASKS; do  # checked before anything runs
    [[ $task =~ ^(memorize|detect_memorize|reasoning)$ ]] || {
        echo "error: TASKS has $task: expected memorize, detect_memorize and/or reasoning" >&2; exit 2; }
done
for task in $TASKS; do
    case $task in
        memorize) recipe="" long_segments=$LONG_SEGMENTS ;;
        detect_memorize) recipe="" long_segments=$DETECT_LONG_SEGMENTS ;;
        reasoning)
            long_segments=$LONG_SEGMENTS
            warmup_runs="$RUNS_DIR/warmup"  # outside the plot's tasks
            MODEL_CPT=$(memorize_run) TASK=reasoning_plain RUNS_DIR="$warmup_runs" MODEL_NAME="" \
                NOISE_DATASET=default INPUT_SIZE="$INPUT_SIZE" MEMORY_SIZE="$MEMORY_SIZE" TBS="$TBS" BS="$TBS" \
                SEGMENTS=1 ITERS="$WARMUP_ITERS" LR=1e-4 WARMUP=10 VALID_INTERVAL=25 PATIENCE=20 \
                STOP_AT="$WARMUP_STOP_AT" NUM_VALID_SAMPLES=128 "$SCRIPT_DIR/finetune_babilong_rmt.sh" "$@"
            recipe="MODEL_CPT=$(RUNS_DIR="$warmup_runs" offline_run_dir reasoning_plain "$INPUT_SIZE" 1 1e-4)"
            recipe+=" $REASONING_RECIPE" ;;
    esac
    env $recipe TASK="$task" RUNS_DIR="$RUNS_DIR" INPUT_SIZE="$INPUT_SIZE" MEMORY_SIZE="$MEMORY_SIZE" TBS="$TBS" \
        LONG_SEGMENTS="$long_segments" "$SCRIPT_DIR/offline_main_job.sh" "$@"
    TASK="$task" RUNS_DIR="$RUNS_DIR" INPUT_SIZE="$INPUT_SIZE" MEMORY_SIZE="$MEMORY_SIZE" \
        LONG_SEGMENTS="$long_segments" LENGTHS="$LONG_EVAL_SEGMENTS:$LONG_EVAL_SAMPLES" \
        "$SCRIPT_DIR/offline_main_job_long_eval.sh" "$@"
done
python -m babilong.plot "$RUNS_DIR" --tasks "$(echo $TASKS | tr ' ' ',')" --title "RMT on BABILong, offline miniature" \
    -o "$RUNS_DIR/accuracy_vs_length.png"
