# Sourced by the BABILong launcher and the offline jobs: the names of the run folders finetune_babilong_rmt.sh
# writes, in one place. The memory enters the name only when it is not the paper's memory tokens
# (MEMORY_TYPE=associative, D_MEM=64: ..._mem10associative64_...; with MEMORY_LR_SCALE=10: ...associative64x10_...),
# so runs of the two memories never share a folder.
memory_tag() {
    if [[ ${MEMORY_TYPE:-tokens} == tokens ]]; then return; fi
    local scale=""
    if [[ ${MEMORY_LR_SCALE:-1} != 1 ]]; then scale="x${MEMORY_LR_SCALE}"; fi
    echo "${MEMORY_TYPE}${D_MEM:-64}${scale}"
}

run_setting() {  # the setting folder of model type $1, input size $2, segment count $3, learning rate $4
    echo "$1_in$2_mem${MEMORY_SIZE}$(memory_tag)_seg$3_tbs${TBS}_lr$4"
}

offline_run_dir() {  # the run folder of an offline MiniLM encoder: task $1, input size $2, segments $3, lr $4
    echo "$RUNS_DIR/$1/minilm-offline/$(run_setting encoder "$2" "$3" "$4")/run_1"
}
