#!/usr/bin/env bash
# qa1 at 2 segments given a GPU's budget of steps: the offline job's stages (scripts/babilong/offline_babilong_job.sh),
# then variants of its 2-segment stage side by side, for thousands of steps. On one GPU, within DEADLINE_S seconds:
#   1. generated qa1 stories (the job's generator and seed);
#   2. the job's first two stages, for 4 memory tokens and for the sweep's other memory size, side by side: short
#      stories on 1 segment of 64 ids, then whole stories on 1 segment of 96 ids, each stopping at its target
#      (95%, 97%);
#   3. the sweep's variants side by side, each from its memory size's 1-segment checkpoint, at a constant lr after
#      10 warm-up steps (so that a curve reads as steps, not as a schedule), validated every VALID_INTERVAL steps on
#      NUM_VALID_SAMPLES test questions at its own length, until ITERS steps or the deadline. SWEEP picks them:
#      recipe  (T24-T31) the job's 2-segment stage, another seed, lr x3 and /3, batch 64, bf16 autocast, every fact
#              in the first segment (every answer through memory), 8 memory tokens;
#      lengths (T32-T36) does training on longer inputs teach the memory to keep every place? 3 and 4 segments, a
#              2 -> 3 -> 4 curriculum, 16 memory tokens at 2 segments, and the job's stage again as the control;
#              then every variant's best checkpoint is evaluated at 2 and 4 segments (EVAL_S seconds kept for it).
# The validation curves go to OUT_DIR/curves.tsv (variant, step, exact match %), the final evaluations to
# OUT_DIR/evaluations.tsv, the logs and results.jsonl files to OUT_DIR/logs.tgz. The backbone is the fp16 copy of
# the offline MiniLM that `python benchmarks/gpu/gpu_check.py --prepare` writes (the GPU machine lacks the MiniLM
# package; the Trainer keeps float32 weights). Device command: carry runs/gpu_check_assets, timeout_s 490,
# `scripts/babilong/qa1_gpu_sweep.sh` (SWEEP=lengths scripts/babilong/qa1_gpu_sweep.sh for the second sweep).
# A CPU dry run of every code path: DRY_RUN=1 scripts/babilong/qa1_gpu_sweep.sh (a few steps each).
# The trials it ran (T24-T36) are in babilong/RESULTS.md, "qa1 (offline job)".
set -uo pipefail
REPO_ROOT="$(realpath "$(dirname "${BASH_SOURCE[0]}")/../..")"
STARTED=$(date +%s)

OUT_DIR=${OUT_DIR:-${OUT:-$REPO_ROOT/runs/qa1_gpu_sweep}}
WORK=${WORK:-/tmp/qa1_gpu_sweep}                # stories, run folders and checkpoints (not copied back)
BACKBONE=${BACKBONE:-$REPO_ROOT/runs/gpu_check_assets/minilm-fp16}
SWEEP=${SWEEP:-recipe}                          # recipe or lengths (above)
DRY_RUN=${DRY_RUN:-0}                           # 1: a few steps of everything (on a CPU: under 3 minutes)
DEADLINE_S=${DEADLINE_S:-$(( DRY_RUN ? 900 : 420 ))}  # everything is stopped this many seconds after the start
EVAL_S=${EVAL_S:-$([[ $SWEEP == lengths ]] && echo 60 || echo 0)}  # the last seconds, kept for the evaluations
ITERS=${ITERS:-4000}                            # most steps per variant (the 2-3-4 curriculum: a tenth per stage)
VALID_INTERVAL=${VALID_INTERVAL:-100}
NUM_VALID_SAMPLES=${NUM_VALID_SAMPLES:-250}
STAGE_ITERS=${STAGE_ITERS:-150}                 # most steps of each of the first two stages
if (( DRY_RUN )); then
    ITERS=3 VALID_INTERVAL=2 NUM_VALID_SAMPLES=8 STAGE_ITERS=2
fi
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export TASK=qa1 NOISE_DATASET=default MODEL_NAME="$BACKBONE" BABI_PATH="$WORK/babi" WARMUP=10 PATIENCE=1000
LAUNCHER_SH="$REPO_ROOT/scripts/babilong/finetune_babilong_rmt.sh"
EVALUATE_SH="$REPO_ROOT/scripts/babilong/eval_babilong_rmt_from_cpt.sh"

[[ $SWEEP == recipe || $SWEEP == lengths ]] || { echo "error: SWEEP=$SWEEP: expected recipe or lengths" >&2; exit 2; }
[[ -f $BACKBONE/config.json ]] || { echo "error: no backbone in $BACKBONE: run python benchmarks/gpu/gpu_check.py"\
" --prepare and carry runs/gpu_check_assets" >&2; exit 2; }
mkdir -p "$OUT_DIR" "$WORK/logs"

left() { echo $(( STARTED + DEADLINE_S - $1 - $(date +%s) )); }  # left RESERVED: seconds to the deadline - RESERVED

# run SCRIPT RESERVED NAME [VAR=VALUE ...] -- [arguments]: one launcher run, stopped RESERVED s before the deadline
run() {
    local script=$1 reserved=$2 name=$3 environment=()
    shift 3
    while [[ $# -gt 0 && $1 != -- ]]; do environment+=("$1"); shift; done
    shift
    local seconds
    seconds=$(left "$reserved")
    (( seconds > 0 )) || { echo "$name: no time left" >>"$WORK/logs/$name.log"; return 1; }
    env "${environment[@]}" timeout --signal=TERM --kill-after=10 "$seconds" bash "$script" "$@" \
        >"$WORK/logs/$name.log" 2>&1
}

train() {  # train NAME [VAR=VALUE ...] -- [run script arguments]: a training in $WORK/NAME
    local name=$1
    shift
    run "$LAUNCHER_SH" "$EVAL_S" "$name" MODEL_PATH="$WORK/$name" "$@"
}

evaluate() {  # evaluate NAME MEMORY_SIZE: NAME's best checkpoint at 2 and 4 segments (into its results.jsonl)
    run "$EVALUATE_SH" 0 "eval_$1" MODEL_CPT="$WORK/$1" MEMORY_SIZE="$2" INPUT_SIZE=96 SEGMENTS="2 4" BS=50 \
        NUM_VALID_SAMPLES="$NUM_VALID_SAMPLES" --
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

# first_stages_beside MEMORY_SIZE: the first stages for 4 memory tokens, waited for, beside those for MEMORY_SIZE and
# then its 2-segment variant memMEMORY_SIZE, left running
first_stages_beside() {
    first_stages 4 &
    local memory_4=$!
    (first_stages "$1" && two_segments "mem$1" "$1" --) &
    wait "$memory_4"
}

sweep_recipe() {
    first_stages_beside 8
    two_segments base 4 -- &
    two_segments seed43 4 SEED=43 -- &
    two_segments lr3e-4 4 LR=3e-4 -- &
    two_segments lr3e-5 4 LR=3e-5 -- &
    two_segments tbs64 4 TBS=64 BS=64 LR=2e-4 -- &
    two_segments bf16 4 -- --bf16 &
    two_segments start 4 -- --placement start &
    wait
}

sweep_lengths() {
    first_stages_beside 16
    two_segments control 4 SEED=44 -- &
    two_segments seg3 4 SEGMENTS=3 -- &
    two_segments seg4 4 SEGMENTS=4 -- &
    two_segments cur234 4 SEGMENTS="2 3 4" ITERS=$(( ITERS / 10 > 0 ? ITERS / 10 : 1 )) \
        MODEL_PATH="$WORK/cur234_seg{n_segments}" -- &
    wait
    local name
    for name in control seg3 seg4 cur234_seg4; do evaluate "$name" 4 & done
    evaluate mem16 16 &
    wait
}

python -m babilong.generate_babi --out "$BABI_PATH" --tasks qa1 --n_train 10000 --n_test 1000 --seed 0 --overwrite \
    >"$WORK/logs/generate.log" 2>&1 || { cat "$WORK/logs/generate.log"; exit 1; }
"sweep_$SWEEP"

{
    printf 'variant\tstep\texact_match\n'
    for log in "$WORK"/logs/*.log; do
        name=$(basename "$log" .log)
        grep -oE "step [0-9]+ valid: loss [0-9.]+ \| exact_match [0-9.]+" "$log" \
            | awk -v name="$name" '{print name "\t" $2 "\t" $8}'
    done
} >"$OUT_DIR/curves.tsv"
python - "$WORK" >"$OUT_DIR/evaluations.tsv" <<'PYTHON'
import json, pathlib, sys
print("run\tsegments\taccuracy\tsamples")
for results in sorted(pathlib.Path(sys.argv[1]).glob("*/results.jsonl")):
    for record in map(json.loads, results.read_text().splitlines()):
        print(f"{results.parent.name}\t{record['n_segments']}\t{record['accuracy']:.1f}\t{record['n_samples']}")
PYTHON
(cd "$WORK" && tar czf "$OUT_DIR/logs.tgz" logs $(ls -d */results.jsonl 2>/dev/null))
echo "wall: $(( $(date +%s) - STARTED )) s"
awk -F'\t' 'NR > 1 {last[$1] = $2 ": " $3; if ($3 > best[$1]) best[$1] = $3} END {for (n in last)
    printf "%-12s last %-14s best %s\n", n, last[n], best[n]}' "$OUT_DIR/curves.tsv" | sort
grep -v "^run" "$OUT_DIR/evaluations.tsv" | grep -E "^(control|seg|cur|mem16)" || true
