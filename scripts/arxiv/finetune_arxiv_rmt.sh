#!/usr/bin/env bash
# GPT-2 + RMT language modelling on ArXiv documents (docs/design.md, "ArXiv language modelling"), the paper's
# setting: GPT-2, input 1024 (or 128) tokens, 2 memory tokens, lr 1e-5, total batch 32. Every variable below can
# be overridden from the environment; extra arguments go to run_finetuning_arxiv_rmt.py. DATASET_PATH is a
# `load_from_disk` folder with train/validation/test splits (the paper: the ArXiv part of the Pile); empty uses
# the offline default text.
# MODEL_NAME empty trains the offline default (a small GPT-2 from scratch with the MiniLM tokenizer).
# A small CPU run: see arxiv_lm/RESULTS.md.
set -euo pipefail
REPO_ROOT="$(realpath "$(dirname "${BASH_SOURCE[0]}")/../..")"

NP=${NP:-1}                              # processes (GPUs) per machine
MODEL_NAME=${MODEL_NAME-gpt2}            # --from_pretrained; empty: offline default backbone
DATASET_PATH=${DATASET_PATH:-}           # load_from_disk folder; empty: offline default text
INPUT_SIZE=${INPUT_SIZE:-1024}           # tokens per forward: segment + 2 * MEMORY_SIZE (associative: + MEMORY_SIZE)
MEMORY_SIZE=${MEMORY_SIZE:-2}            # memory tokens; 0 = no-memory baseline
MEMORY_TYPE=${MEMORY_TYPE:-tokens}       # tokens (the paper's RMT) or associative (ARMT, docs/design.md)
D_MEM=${D_MEM:-64}                       # associative memory: key size before DPFP
MEMORY_LR_SCALE=${MEMORY_LR_SCALE:-1}    # associative memory: its projections train at this multiple of LR
MAX_N_SEGMENTS=${MAX_N_SEGMENTS:-2}      # blocks per sample (scored block + history)
K2=${K2:--1}                             # truncated BPTT depth in segments; -1 = full
ITERS=${ITERS:-10000}                    # optimizer steps (our choice; the paper does not state it for ArXiv)
TBS=${TBS:-32}                           # total batch: samples per optimizer step over all processes
BS=${BS:-4}                              # samples per forward pass per process (GRAD_ACC = TBS / (BS * NP))
RESUME=${RESUME:-0}                      # 1: continue the run in MODEL_PATH (--resume)
OVERWRITE=${OVERWRITE:-0}                # 1: start MODEL_PATH over, deleting its checkpoints (--overwrite)
LR=${LR:-1e-5}
WEIGHT_DECAY=${WEIGHT_DECAY:-1e-3}       # AdamW, warm-up and clipping as BABILong (docs/design.md)
SEED=${SEED:-42}
SEGMENT_CHECKPOINTING=${SEGMENT_CHECKPOINTING:-0}  # 1: recompute segment activations in backward (memory of ~1 segment)
MALLOC_PRELOAD=${MALLOC_PRELOAD-libtcmalloc_minimal.so.4}  # allocator with SEGMENT_CHECKPOINTING=1 (flat memory); empty: glibc
RUN_N=${RUN_N:-1}
RUNS_DIR=${RUNS_DIR:-$REPO_ROOT/runs}
MODEL_CPT=${MODEL_CPT:-}                 # run folder whose model_best.pth initialises this run (curriculum)
NUM_VALID_SAMPLES=${NUM_VALID_SAMPLES:-} # evenly spaced validation/test samples; empty: all
PATIENCE=${PATIENCE:-15}                 # early stopping, in validations
MODEL_TAG=${MODEL_NAME:-gpt2-small-scratch}
MEMORY_TAG=""; [[ $MEMORY_TYPE == tokens ]] || MEMORY_TAG="${MEMORY_TYPE}${D_MEM}"  # e.g. mem2associative64
[[ $MEMORY_TYPE == tokens || $MEMORY_LR_SCALE == 1 ]] || MEMORY_TAG+="x${MEMORY_LR_SCALE}"  # e.g. ...associative64x10
SETTING=lm_in${INPUT_SIZE}_mem${MEMORY_SIZE}${MEMORY_TAG}_seg${MAX_N_SEGMENTS}_k2${K2}_tbs${TBS}_lr${LR}
MODEL_PATH=${MODEL_PATH:-$RUNS_DIR/arxiv/${MODEL_TAG//\//_}/$SETTING/run_$RUN_N}

source "$REPO_ROOT/scripts/launch.sh"               # checks NNODES, NODE_RANK, MASTER_*, LAUNCHER; defines launch
source "$REPO_ROOT/scripts/batch_setup.sh"          # checks the integers, sets GRAD_ACC, RESUME/OVERWRITE flags
TENTH=$(( ITERS / 10 > 0 ? ITERS / 10 : 1 ))
VALID_INTERVAL=${VALID_INTERVAL:-$TENTH}
WARMUP=${WARMUP:-$TENTH}                 # linear warm-up steps (ITERS/10)
LOG_INTERVAL=${LOG_INTERVAL:-$(( TENTH < 50 ? TENTH : 50 ))}

launch "$REPO_ROOT/run_finetuning_arxiv_rmt.py" \
    ${MODEL_NAME:+--from_pretrained "$MODEL_NAME"} \
    ${DATASET_PATH:+--dataset_path "$DATASET_PATH"} \
    ${MODEL_CPT:+--model_cpt "$MODEL_CPT"} \
    ${NUM_VALID_SAMPLES:+--num_valid_samples "$NUM_VALID_SAMPLES"} \
    --model_path "$MODEL_PATH" \
    --input_size "$INPUT_SIZE" --num_mem_tokens "$MEMORY_SIZE" --max_n_segments "$MAX_N_SEGMENTS" --k2 "$K2" \
    --batch_size "$BS" --gradient_accumulation_steps "$GRAD_ACC" --iters "$ITERS" \
    --optimizer AdamW --lr "$LR" --weight_decay "$WEIGHT_DECAY" \
    --lr_scheduler linear --num_warmup_steps "$WARMUP" --clip_grad_value 5.0 \
    --log_interval "$LOG_INTERVAL" --valid_interval "$VALID_INTERVAL" \
    --save_best --optimize_metric last_block_loss --optimize_mode min --early_stopping_patience "$PATIENCE" \
    --seed "$SEED" "$@"
