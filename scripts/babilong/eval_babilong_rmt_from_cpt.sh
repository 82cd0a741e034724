#!/usr/bin/env bash
# Evaluate MODEL_CPT/model_best.pth at 16 ... 4096 segments (about 8K to 2M tokens for the paper's setting); each
# length appends a record to MODEL_CPT/results.jsonl (python -m babilong.plot RUNS_DIR draws them). The model
# variables must be those the checkpoint was trained with. BS samples go through the segments together (one backbone
# call per segment for the whole batch; tokens per second at batch 1 and 16: docs/performance.md, from
# benchmarks/babilong_long_eval.py). Inference memory is constant in the number of segments; time grows linearly,
# so long lengths use fewer samples (NUM_VALID_SAMPLES).
set -euo pipefail
REPO_ROOT="$(realpath "$(dirname "${BASH_SOURCE[0]}")/../..")"

NP=${NP:-1}
MODEL_CPT=${MODEL_CPT:-}                      # run folder holding model_best.pth (required)
TASK=${TASK:-memorize}
BABI_PATH=${BABI_PATH:-}                      # folder with the bAbI files; default data/babi if it exists
[[ -n $BABI_PATH || ! -d $REPO_ROOT/data/babi ]] || BABI_PATH=$REPO_ROOT/data/babi
MODEL_NAME=${MODEL_NAME-bert-base-cased}
MODEL_TYPE=${MODEL_TYPE:-encoder}
NOISE_DATASET=${NOISE_DATASET:-tau/scrolls:quality}
INPUT_SIZE=${INPUT_SIZE:-512}
MEMORY_SIZE=${MEMORY_SIZE:-10}
MEMORY_TYPE=${MEMORY_TYPE:-tokens}            # tokens or associative, as trained
D_MEM=${D_MEM:-64}                            # associative memory: as trained
SEGMENTS=${SEGMENTS:-16 32 64 128 256 512 1024 2048 4096}
BS=${BS:-8}                                   # samples per forward pass per process (evaluated together)
NUM_VALID_SAMPLES=${NUM_VALID_SAMPLES:-100}
SEED=${SEED:-42}

[[ -n $MODEL_CPT ]] || { echo "error: MODEL_CPT is not set: expected the run folder holding model_best.pth" >&2; exit 2; }
[[ $NP =~ ^[1-9][0-9]*$ ]] || { echo "error: NP=$NP: expected a positive integer" >&2; exit 2; }
[[ $BS =~ ^[1-9][0-9]*$ ]] || { echo "error: BS=$BS: expected a positive integer" >&2; exit 2; }

source "$REPO_ROOT/scripts/launch.sh"               # checks NNODES, NODE_RANK, MASTER_*, LAUNCHER; defines launch
if [[ $MEMORY_TYPE != tokens ]]; then set -- "$@" --memory_type "$MEMORY_TYPE" --d_mem "$D_MEM"; fi
launch "$REPO_ROOT/run_finetuning_babilong_rmt.py" --validate_only \
    --task "$TASK" ${BABI_PATH:+--babi_path "$BABI_PATH"} --noise_dataset "$NOISE_DATASET" \
    --model_type "$MODEL_TYPE" ${MODEL_NAME:+--from_pretrained "$MODEL_NAME"} --model_cpt "$MODEL_CPT" \
    --input_size "$INPUT_SIZE" --num_mem_tokens "$MEMORY_SIZE" --eval_n_segments "$(echo $SEGMENTS | tr ' ' ',')" \
    --batch_size "$BS" --num_valid_samples "$NUM_VALID_SAMPLES" --seed "$SEED" "$@"
