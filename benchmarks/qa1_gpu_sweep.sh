#!/usr/bin/env bash
# qa1 at 2 segments given a GPU's budget of steps (babilong/RESULTS.md, "qa1 (offline job)"): does the offline job's
# recipe reach 95% with thousands of 2-segment steps instead of the 150-400 that 2 CPU cores allow, and which of
# its settings buy accuracy per step? On one GPU, within DEADLINE_S seconds of wall time:
#   1. generated qa1 stories (the job's generator and seed);
#   2. the job's first two stages for 4 and for 8 memory tokens, side by side: short stories on 1 segment of 64
#      ids, then whole stories on 1 segment of 96 ids, each stopping at its target (95%, 97%);
#   3. the 2-segment variants listed at the end, side by side, each from its memory size's 1-segment checkpoint, at a constant
#      lr after 10 warm-up steps (so that a curve reads as steps, not as a schedule), validated every
#      VALID_INTERVAL steps on NUM_VALID_SAMPLES test questions, until ITERS steps or the deadline.
# Every training is stopped at the deadline; the validation curves go to OUT_DIR/curves.tsv (variant, step, exact
# match %) and the logs and results.jsonl files to OUT_DIR/logs.tgz. The backbone is the fp16 copy of the offline
# MiniLM that `python benchmarks/gpu_check.py --prepare` writes (the GPU machine lacks the MiniLM package; the
# Trainer keeps float32 weights). Device command (benchmarks/README.md): carry runs/gpu_check_assets, timeout_s 490,
#   benchmarks/qa1_gpu_sweep.sh
# A CPU dry run of every code path: DRY_RUN=1 benchmarks/qa1_gpu_sweep.sh (a few steps each).
set -uo pipefail
REPO_ROOT="$(realpath "$(dirname "${BASH_SOURCE[0]}")/..")"
STARTED=$(date +%s)

OUT_DIR=${OUT_DIR:-${OUT:-$REPO_ROOT/runs/qa1_gpu_sweep}}
WORK=${WORK:-/tmp/qa1_gpu_sweep}                # stories, run folders and checkpoints (not copied back)
BACKBONE=${BACKBONE:-$REPO_ROOT/runs/gpu_check_assets/minilm-fp16}
DRY_RUN=${DRY_RUN:-0}                           # 1: a few steps of everything (on a CPU: under 3 minutes)
DEADLINE_S=${DEADLINE_S:-$(( DRY_RUN ? 900 : 420 ))}  # every training is stopped this many seconds after the start
ITERS=${ITERS:-4000}                            # most 2-segment steps per variant
VALID_INTERVAL=${VALID_INTERVAL:-100}
NUM_VALID_SAMPLES=${NUM_VALID_SAMPLES:-250}
STAGE_ITERS=${STAGE_ITERS:-150}                 # most steps of each of the first two stages
if (( DRY_RUN )); then
    ITERS=3 VALID_INTERVAL=2 NUM_VALID_SAMPLES=8 STAGE_ITERS=2
fi
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export TASK=qa1 NOISE_DATASET=default MODEL_NAME="$BACKBONE" BABI_PATH="$WORK/babi" WARMUP=10 PATIENCE=1000
LAUNCHER_SH="$REPO_ROOT/scripts/babilong/finetune_babilong_rmt.sh"

[[ -f $BACKBONE/config.json ]] || { echo "error: no backbone in $BACKBONE: run python benchmarks/gpu_check.py"\
" --prepare and carry runs/gpu_check_assets" >&2; exit 2; }
mkdir -p "$OUT_DIR" "$WORK/logs"

left() { echo $(( STARTED + DEADLINE_S - $(date +%s) )); }

train() {  # train NAME [VAR=VALUE ...] -- [run script arguments]: one run, stopped at the deadline
    local name=$1 environment=()
    shift
    while [[ $# -gt 0 && $1 != -- ]]; do environment+=("$1"); shift; done
    shift
    local seconds
    seconds=$(left)
    (( seconds > 0 )) || { echo "$name: no time left" >>"$WORK/logs/$name.log"; return 1; }
    env MODEL_PATH="$WORK/$name" "${environment[@]}" timeout --signal=TERM --kill-after=10 "$seconds" \
        bash "$LAUNCHER_SH" "$@" >"$WORK/logs/$name.log" 2>&1
}

first_stages() {  # first_stages MEMORY_SIZE: the offline job's short and 1-segment stages
    local memory=$1
    train "m${memory}_short" MEMORY_SIZE="$memory" INPUT_SIZE=64 SEGMENTS=1 ITERS="$STAGE_ITERS" TBS=16 BS=16 LR=1e-4 \
        VALID_INTERVAL=20 STOP_AT=95 NUM_VALID_SAMPLES=128 -- --max_n_facts 4 || return 1
    train "m${memory}_seg1" MEMORY_SIZE="$memory" INPUT_SIZE=96 SEGMENTS=1 ITERS="$STAGE_ITERS" TBS=16 BS=16 LR=1e-4 \
        VALID_INTERVAL=20 STOP_AT=97 NUM_VALID_SAMPLES=128 MODEL_CPT="$WORK/m${memory}_short" --
}

two_segments() {  # two_segments NAME MEMORY_SIZE [VAR=VALUE ...] -- [arguments]: a 2-segment variant
    local name=$1 memory=$2
    shift 2
    train "$name" MEMORY_SIZE="$memory" INPUT_SIZE=96 SEGMENTS=2 ITERS="$ITERS" TBS=16 BS=16 LR=1e-4 \
        VALID_INTERVAL="$VALID_INTERVAL" NUM_VALID_SAMPLES="$NUM_VALID_SAMPLES" MODEL_CPT="$WORK/m${memory}_seg1" \
        "$@" --lr_scheduler constant_with_warmup
}

python -m babilong.generate_babi --out "$BABI_PATH" --tasks qa1 --n_train 10000 --n_test 1000 --seed 0 \
    >"$WORK/logs/generate.log" 2>&1 || { cat "$WORK/logs/generate.log"; exit 1; }

first_stages 4 &
memory_4=$!
(first_stages 8 && two_segments mem8 8 --) &
wait "$memory_4"
# the job's 2-segment stage (lr 1e-4, batch 16), another seed, lr x3 and /3, batch 64, bf16 autocast, every fact in
# the first segment (every answer through memory); and above, 8 memory tokens
two_segments base 4 -- &
two_segments seed43 4 SEED=43 -- &
two_segments lr3e-4 4 LR=3e-4 -- &
two_segments lr3e-5 4 LR=3e-5 -- &
two_segments tbs64 4 TBS=64 BS=64 LR=2e-4 -- &
two_segments bf16 4 -- --bf16 &
two_segments start 4 -- --placement start &
wait

{
    printf 'variant\tstep\texact_match\n'
    for log in "$WORK"/logs/*.log; do
        name=$(basename "$log" .log)
        grep -oE "step [0-9]+ valid: loss [0-9.]+ \| exact_match [0-9.]+" "$log" \
            | awk -v name="$name" '{print name "\t" $2 "\t" $8}'
    done
} >"$OUT_DIR/curves.tsv"
(cd "$WORK" && tar czf "$OUT_DIR/logs.tgz" logs $(ls -d */results.jsonl 2>/dev/null))
echo "wall: $(( $(date +%s) - STARTED )) s"
awk -F'\t' 'NR > 1 {last[$1] = $2 ": " $3; if ($3 > best[$1]) best[$1] = $3} END {for (n in last)
    printf "%-12s last %-14s best %s\n", n, last[n], best[n]}' "$OUT_DIR/curves.tsv" | sort
