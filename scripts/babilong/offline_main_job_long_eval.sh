#!/usr/bin/env bash
# After scripts/babilong/offline_main_job.sh: evaluate its last stage's best checkpoint on 100k-token samples
# (1,755 segments, 32 samples) and 1M-token samples (17,544 segments, 16 samples), append the records to the same
# results.jsonl and redraw the same accuracy-vs-length plot. The offline validation background is ~34k tokens,
# so a 1M-token sample repeats it about 29 times. Samples of a batch go through the segments together; memory
# stays flat in the length. About an hour on a 2-core machine (the timings: docs/results.md, "The main job
# (offline default)"). Every variable can be overridden.
set -euo pipefail
SCRIPT_DIR="$(realpath "$(dirname "${BASH_SOURCE[0]}")")"
REPO_ROOT="$(realpath "$SCRIPT_DIR/../..")"

RUNS_DIR=${RUNS_DIR:-$REPO_ROOT/runs/offline_main_job}
TASK=${TASK:-memorize}
LONG_SEGMENTS=${LONG_SEGMENTS:-6}              # the main job's last stage
LENGTHS=${LENGTHS:-1755:32 17544:16}           # segments:samples, evaluated in turn
EVAL_BS=${EVAL_BS:-16}
SEED=${SEED:-42}

RUNS=("$RUNS_DIR/$TASK"/minilm-offline/encoder_in*_seg"${LONG_SEGMENTS}"_*/run_1)
MODEL_CPT=${MODEL_CPT:-${RUNS[-1]}}
[[ -f $MODEL_CPT/model_best.pth ]] || {
    echo "error: MODEL_CPT=$MODEL_CPT has no model_best.pth: expected bash scripts/babilong/offline_main_job.sh to have run" >&2
    exit 2; }
for length in $LENGTHS; do
    TASK="$TASK" MODEL_CPT="$MODEL_CPT" MODEL_NAME="" NOISE_DATASET=default INPUT_SIZE=${INPUT_SIZE:-64} MEMORY_SIZE=${MEMORY_SIZE:-4} \
        SEGMENTS="${length%%:*}" NUM_VALID_SAMPLES="${length##*:}" BS="$EVAL_BS" SEED="$SEED" \
        "$SCRIPT_DIR/eval_babilong_rmt_from_cpt.sh" "$@"
done
python -m babilong.plot "$RUNS_DIR" -o "$RUNS_DIR/accuracy_vs_length.png"
