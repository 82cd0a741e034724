#!/usr/bin/env bash
# BABILong qa1 offline, for a 2-core CPU machine without internet: generate bAbI-format stories
# (python -m babilong.generate_babi), train RMT around the offline MiniLM backbone on qa1 hidden in the offline
# background, evaluate the last stage's best checkpoint out to 16x the longest trained length, write the plot.
#   1. Short stories: 1 segment of SHORT_INPUT_SIZE ids on the questions whose story has at most
#      SHORT_MAX_N_FACTS facts (the first two questions of each qa1 story), so that the model learns to bind a name
#      to its latest move before it meets whole stories (babilong/RESULTS.md, T0-T3).
#   2. A curriculum over SEGMENTS of INPUT_SIZE ids (4 memory tokens, 89 task tokens: a whole qa1 question with
#      its up to 10 facts takes at most ~75 MiniLM tokens), whole stories; every stage stops at its first
#      validation at STOP_AT exact match (%) and keeps its best exact-match checkpoint.
#   3. The last stage's checkpoint is evaluated on EVAL_NUM_VALID_SAMPLES test questions at every trained length
#      and on LONG_VALID_SAMPLES at LONG_SEGMENTS (up to 16x the longest trained length); then the plot; with
#      FACT_SPLIT_SAMPLES, the accuracy split by where the answer's fact lies (python -m
#      babilong.analysis.fact_position) goes to fact_split.json in the last run folder.
# Run: bash scripts/babilong/offline_babilong_job.sh. Its times and accuracies: babilong/RESULTS.md, "qa1 (offline
# job)".
# TASKS="qa1 qa2" adds qa2 with the same recipe (not measured; its stories are longer, see data/README.md). Every
# variable can be overridden from the environment; extra arguments go to run_finetuning_babilong_rmt.py.
set -euo pipefail
SCRIPT_DIR="$(realpath "$(dirname "${BASH_SOURCE[0]}")")"
REPO_ROOT="$(realpath "$SCRIPT_DIR/../..")"

RUNS_DIR=${RUNS_DIR:-$REPO_ROOT/runs/offline_babilong_job}
BABI_PATH=${BABI_PATH:-$RUNS_DIR/babi}          # generated stories go here
TASKS=${TASKS:-qa1}
N_TRAIN=${N_TRAIN:-10000}                       # generated questions per task (en-10k sizes)
N_TEST=${N_TEST:-1000}
GEN_SEED=${GEN_SEED:-0}
SHORT_MAX_N_FACTS=${SHORT_MAX_N_FACTS:-4}       # stage 1: stories of at most this many facts; empty: no stage 1
SHORT_INPUT_SIZE=${SHORT_INPUT_SIZE:-64}        # 57 task tokens: a 4-fact question takes at most ~37
SHORT_ITERS=${SHORT_ITERS:-150}
SHORT_STOP_AT=${SHORT_STOP_AT:-95}              # exact match, %
SEGMENTS=${SEGMENTS:-1 2}                       # stage 2: curriculum on whole stories
ITERS=${ITERS:-150}                             # most optimizer steps per stage (STOP_AT usually ends sooner)
STOP_AT=${STOP_AT:-97}                          # a stage ends at its first validation at this exact match (%)
LR=${LR:-1e-4}
VALID_INTERVAL=${VALID_INTERVAL:-20}
PATIENCE=${PATIENCE:-3}
NUM_VALID_SAMPLES=${NUM_VALID_SAMPLES:-128}     # test questions per validation during training
EVAL_NUM_VALID_SAMPLES=${EVAL_NUM_VALID_SAMPLES:-250}  # the final evaluation at the trained lengths
LONG_SEGMENTS=${LONG_SEGMENTS:-4 8 16 32}       # 32 = 16x the longest trained length
LONG_VALID_SAMPLES=${LONG_VALID_SAMPLES:-100}   # fewer at the long lengths: time grows with the length
FACT_SPLIT_SAMPLES=${FACT_SPLIT_SAMPLES:-}      # test questions split by where the answer lies; empty: no split
INPUT_SIZE=${INPUT_SIZE:-96}
MEMORY_SIZE=${MEMORY_SIZE:-4}
MEMORY_TYPE=${MEMORY_TYPE:-tokens}              # tokens (RMT) or associative (ARMT)
D_MEM=${D_MEM:-64}                              # associative memory: key size before DPFP
MEMORY_LR_SCALE=${MEMORY_LR_SCALE:-1}           # associative memory: its projections train at this multiple of LR
TBS=${TBS:-16}
BS=${BS:-16}
BF16=${BF16:-auto}                              # 1: train under bf16 autocast; auto: when the CPU has native bf16
case $BF16 in  # bf16 pays with native bf16 (AVX-512 BF16, AMX; babilong/RESULTS.md, J1), not expected to without
    auto) if grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null; then BF16=1; else BF16=0; fi ;;
    0 | 1) ;;
    *) echo "error: BF16=$BF16: expected auto, 0 or 1" >&2; exit 2 ;;
esac
PRECISION=()
if (( BF16 )); then PRECISION=(--bf16); fi
export MODEL_NAME="" NOISE_DATASET=default BABI_PATH MEMORY_SIZE MEMORY_TYPE D_MEM MEMORY_LR_SCALE TBS BS LR RUNS_DIR
source "$SCRIPT_DIR/run_dirs.sh"

run_dir() {  # the run folder finetune_babilong_rmt.sh writes for task $1, input size $2, segment count $3
    offline_run_dir "$1" "$2" "$3" "$LR"
}

python -m babilong.generate_babi --out "$BABI_PATH" --tasks "$(echo $TASKS | tr ' ' ',')" \
    --n_train "$N_TRAIN" --n_test "$N_TEST" --seed "$GEN_SEED" --overwrite  # the same seed: the same files
for TASK in $TASKS; do
    export TASK
    MODEL_CPT=""
    if [[ -n $SHORT_MAX_N_FACTS ]]; then
        RUNS_DIR="$RUNS_DIR/short" INPUT_SIZE="$SHORT_INPUT_SIZE" SEGMENTS=1 ITERS="$SHORT_ITERS" \
            STOP_AT="$SHORT_STOP_AT" WARMUP=10 VALID_INTERVAL="$VALID_INTERVAL" PATIENCE="$PATIENCE" \
            NUM_VALID_SAMPLES="$NUM_VALID_SAMPLES" "$SCRIPT_DIR/finetune_babilong_rmt.sh" \
            --max_n_facts "$SHORT_MAX_N_FACTS" "${PRECISION[@]}" "$@"
        MODEL_CPT=$(RUNS_DIR="$RUNS_DIR/short" run_dir "$TASK" "$SHORT_INPUT_SIZE" 1)
    fi
    MODEL_CPT="$MODEL_CPT" INPUT_SIZE="$INPUT_SIZE" SEGMENTS="$SEGMENTS" ITERS="$ITERS" STOP_AT="$STOP_AT" WARMUP=10 \
        VALID_INTERVAL="$VALID_INTERVAL" PATIENCE="$PATIENCE" NUM_VALID_SAMPLES="$NUM_VALID_SAMPLES" \
        "$SCRIPT_DIR/finetune_babilong_rmt.sh" "${PRECISION[@]}" "$@"
    LAST_RUN=$(run_dir "$TASK" "$INPUT_SIZE" "${SEGMENTS##* }")
    MODEL_CPT="$LAST_RUN" INPUT_SIZE="$INPUT_SIZE" SEGMENTS="$SEGMENTS" NUM_VALID_SAMPLES="$EVAL_NUM_VALID_SAMPLES" \
        "$SCRIPT_DIR/eval_babilong_rmt_from_cpt.sh" "$@"
    MODEL_CPT="$LAST_RUN" INPUT_SIZE="$INPUT_SIZE" SEGMENTS="$LONG_SEGMENTS" NUM_VALID_SAMPLES="$LONG_VALID_SAMPLES" \
        "$SCRIPT_DIR/eval_babilong_rmt_from_cpt.sh" "$@"
    if [[ -n $FACT_SPLIT_SAMPLES ]]; then
        python -m babilong.analysis.fact_position "$LAST_RUN" --n_segments "${SEGMENTS##* }" \
            --n_samples "$FACT_SPLIT_SAMPLES" > "$LAST_RUN/fact_split.json"
    fi
done
python -m babilong.plot "$RUNS_DIR" -o "$RUNS_DIR/accuracy_vs_length.png"
