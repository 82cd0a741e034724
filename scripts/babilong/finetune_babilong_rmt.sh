#!/usr/bin/env bash
# RMT on a BABILong task (docs/design.md, "BABILong data") with the paper's setting: bert-base-cased, input 512,
# 10 memory tokens, 499 * N task tokens, AdamW lr 1e-5 wd 1e-3, linear warm-up ITERS/10, total batch 32, clip value
# 5.0, validation every ITERS/10, early stopping after 15 validations without improvement, exact_match. SEGMENTS is
# one segment count or a list trained in turn as a curriculum (each stage from the previous stage's model_best.pth).
# Every variable below can be overridden from the environment; extra arguments go to
# run_finetuning_babilong_rmt.py (e.g. --eval_n_segments 16,32). MODEL_NAME empty: the offline MiniLM backbone.
# A small CPU run:  MODEL_NAME= NOISE_DATASET=default INPUT_SIZE=64 MEMORY_SIZE=4 ITERS=100 TBS=16 BS=16 LR=1e-4 \
#                   SEGMENTS="1 2" scripts/babilong/finetune_babilong_rmt.sh
set -euo pipefail
REPO_ROOT="$(realpath "$(dirname "${BASH_SOURCE[0]}")/../..")"

NP=${NP:-1}                                   # processes (GPUs) per machine
TASK=${TASK:-memorize}                        # memorize, detect_memorize, reasoning, qa1..qa20 (needs BABI_PATH)
BABI_PATH=${BABI_PATH:-}                      # folder with the bAbI files; default data/babi if it exists
[[ -n $BABI_PATH || ! -d $REPO_ROOT/data/babi ]] || BABI_PATH=$REPO_ROOT/data/babi
MODEL_NAME=${MODEL_NAME-bert-base-cased}      # --from_pretrained; empty: offline MiniLM
MODEL_TYPE=${MODEL_TYPE:-encoder}             # encoder (classification, the paper) or decoder (generation)
NOISE_DATASET=${NOISE_DATASET:-tau/scrolls:quality}  # background text; 'default' is the offline one
INPUT_SIZE=${INPUT_SIZE:-512}                 # ids per segment, memory and special tokens included
MEMORY_SIZE=${MEMORY_SIZE:-10}                # memory tokens
MEMORY_TYPE=${MEMORY_TYPE:-tokens}            # tokens (the paper's RMT) or associative (ARMT, docs/design.md)
D_MEM=${D_MEM:-64}                            # associative memory: key size before DPFP
MEMORY_LR_SCALE=${MEMORY_LR_SCALE:-1}         # associative memory: its projections train at this multiple of LR
MAX_N_SEGMENTS=${MAX_N_SEGMENTS:-1}
SEGMENTS=${SEGMENTS:-$MAX_N_SEGMENTS}         # one count, or a curriculum such as "1 2 3 4 5 6 7"
ITERS=${ITERS:-3000}                          # optimizer steps per stage
TBS=${TBS:-32}                                # total batch: samples per optimizer step over all processes
BS=${BS:-8}                                   # samples per forward pass per process (GRAD_ACC = TBS / (BS * NP))
RESUME=${RESUME:-0}                           # 1: continue the run in MODEL_PATH (--resume)
OVERWRITE=${OVERWRITE:-0}                     # 1: start MODEL_PATH over, deleting its checkpoints (--overwrite)
SEGMENT_CHECKPOINTING=${SEGMENT_CHECKPOINTING:-0}  # 1: recompute segment activations in backward (memory of ~1 segment)
MALLOC_PRELOAD=${MALLOC_PRELOAD-libtcmalloc_minimal.so.4}  # allocator with SEGMENT_CHECKPOINTING=1 (flat memory); empty: glibc
source "$REPO_ROOT/scripts/launch.sh"    # checks NNODES, NODE_RANK, MASTER_*, LAUNCHER; defines launch
source "$REPO_ROOT/scripts/batch_setup.sh"    # checks the integers (before they are used), sets GRAD_ACC
LR=${LR:-1e-5}
WEIGHT_DECAY=${WEIGHT_DECAY:-1e-3}
VALID_INTERVAL=${VALID_INTERVAL:-$(( ITERS / 10 > 0 ? ITERS / 10 : 1 ))}
WARMUP=${WARMUP:-$VALID_INTERVAL}             # linear warm-up steps (ITERS/10)
PATIENCE=${PATIENCE:-15}                      # early stopping, in validations
STOP_AT=${STOP_AT:-}                          # also end a stage once the optimized metric reaches this (exact_match: 100)
NUM_VALID_SAMPLES=${NUM_VALID_SAMPLES:-1000}
SEED=${SEED:-42}
RUN_N=${RUN_N:-1}
RUNS_DIR=${RUNS_DIR:-$REPO_ROOT/runs}
MODEL_CPT=${MODEL_CPT:-}                      # run folder whose model_best.pth initialises the first stage
MODEL_TAG=${MODEL_NAME:-minilm-offline}
N_SEGMENTS='{n_segments}'                     # filled in by the run script for each curriculum stage
source "$REPO_ROOT/scripts/babilong/run_dirs.sh"  # run_setting: the folder names, in one place
SETTING=$(run_setting "$MODEL_TYPE" "$INPUT_SIZE" "$N_SEGMENTS" "$LR")
MODEL_PATH=${MODEL_PATH:-$RUNS_DIR/$TASK/${MODEL_TAG//\//_}/$SETTING/run_$RUN_N}

CURRICULUM=$(echo $SEGMENTS | tr ' ' ',')

launch "$REPO_ROOT/run_finetuning_babilong_rmt.py" \
    --task "$TASK" ${BABI_PATH:+--babi_path "$BABI_PATH"} --noise_dataset "$NOISE_DATASET" \
    --model_type "$MODEL_TYPE" ${MODEL_NAME:+--from_pretrained "$MODEL_NAME"} ${MODEL_CPT:+--model_cpt "$MODEL_CPT"} \
    --model_path "$MODEL_PATH" \
    --input_size "$INPUT_SIZE" --num_mem_tokens "$MEMORY_SIZE" --curriculum "$CURRICULUM" \
    --batch_size "$BS" --gradient_accumulation_steps "$GRAD_ACC" --iters "$ITERS" \
    --optimizer AdamW --lr "$LR" --weight_decay "$WEIGHT_DECAY" \
    --lr_scheduler linear --num_warmup_steps "$WARMUP" --clip_grad_value 5.0 \
    --log_interval "$(( VALID_INTERVAL < 50 ? VALID_INTERVAL : 50 ))" --valid_interval "$VALID_INTERVAL" \
    --save_best --optimize_metric exact_match --optimize_mode max --early_stopping_patience "$PATIENCE" \
    ${STOP_AT:+--early_stopping_target "$STOP_AT"} \
    --num_valid_samples "$NUM_VALID_SAMPLES" --show_valid_examples 3 --seed "$SEED" "$@"
