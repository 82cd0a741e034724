# Sourced by the launchers, after their variables: checks that the integer variables are integers (NP, ITERS, TBS
# and BS positive; the others, where set, any integer: the run script checks their range) and sets
# GRAD_ACC = TBS / (BS * NP * NNODES), TBS being the total batch over all machines (NNODES is checked by
# scripts/launch.sh, sourced before this file). RESUME=1 / OVERWRITE=1 append --resume / --overwrite to the
# launcher's arguments (continue the run in MODEL_PATH, or start it over deleting its checkpoints); SEGMENT_CHECKPOINTING=1 appends
# --segment_checkpointing (memory-bounded BPTT) and preloads MALLOC_PRELOAD (tcmalloc). MEMORY_TYPE other than
# tokens appends --memory_type, --d_mem D_MEM and --memory_lr_scale MEMORY_LR_SCALE (the run script checks them).
# Bad values stop with one line, exit 2.
INTEGER_VARIABLES="VALID_INTERVAL WARMUP PATIENCE INPUT_SIZE MEMORY_SIZE MAX_N_SEGMENTS K2 SEED RUN_N
                   NUM_VALID_SAMPLES LOG_INTERVAL D_MEM"
for name in NP ITERS TBS BS; do
    [[ ${!name} =~ ^[1-9][0-9]*$ ]] || { echo "error: $name=${!name}: expected a positive integer" >&2; exit 2; }
done
for name in $INTEGER_VARIABLES; do
    [[ -z ${!name-} || ${!name} =~ ^-?[0-9]+$ ]] || { echo "error: $name=${!name}: expected an integer" >&2; exit 2; }
done
for name in RESUME OVERWRITE SEGMENT_CHECKPOINTING; do
    [[ ${!name:-0} =~ ^[01]$ ]] || { echo "error: $name=${!name}: expected 0 or 1" >&2; exit 2; }
done
PROCESSES=$(( NP * ${NNODES:-1} ))
if (( TBS % (BS * PROCESSES) != 0 )); then
    factors="BS*NP"; (( PROCESSES == NP )) || factors="BS*NP*NNODES"
    echo "error: TBS=$TBS is not divisible by $factors=$((BS * PROCESSES)): expected a multiple" >&2; exit 2
fi
GRAD_ACC=$(( TBS / (BS * PROCESSES) ))
if (( ${RESUME:-0} )); then set -- "$@" --resume; fi
if (( ${OVERWRITE:-0} )); then set -- "$@" --overwrite; fi
if (( ${SEGMENT_CHECKPOINTING:-0} )); then set -- "$@" --segment_checkpointing; fi
if [[ ${MEMORY_TYPE:-tokens} != tokens ]]; then
    set -- "$@" --memory_type "$MEMORY_TYPE" --d_mem "${D_MEM:-64}" --memory_lr_scale "${MEMORY_LR_SCALE:-1}"
fi
# With segment checkpointing, glibc's malloc fragments its heap (each segment's activations are recomputed and freed
# around small long-lived blocks), so that peak CPU memory grows with the number of segments; tcmalloc keeps it flat
# and was faster than glibc's malloc here (docs/performance.md, "Memory-bounded BPTT (segment checkpointing)").
# MALLOC_PRELOAD (its default is set at the top of the launcher that sources this file): the allocator preloaded
# then; empty: glibc's.
if (( ${SEGMENT_CHECKPOINTING:-0} )) && [[ -n ${MALLOC_PRELOAD:-} ]]; then
    if [[ -z $(LD_PRELOAD=$MALLOC_PRELOAD env true 2>&1) ]]; then  # the loader complains of a library it cannot load
        export LD_PRELOAD="$MALLOC_PRELOAD${LD_PRELOAD:+:$LD_PRELOAD}"
    else
        echo "warning: MALLOC_PRELOAD=$MALLOC_PRELOAD cannot be loaded (Debian/Ubuntu: apt install" \
             "libtcmalloc-minimal4); with glibc's malloc peak CPU memory grows with the number of segments" >&2
    fi
fi
