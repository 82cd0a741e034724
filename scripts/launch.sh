# Sourced by the launchers: checks the launch variables below and defines `launch ENTRY_POINT ARGS...`, which starts
# the entry point on NP processes on each of NNODES machines with torchrun (LAUNCHER=torchrun, the default) or with
# `accelerate launch` (LAUNCHER=accelerate). Both set the environment the Trainer reads (RANK, WORLD_SIZE,
# LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so the Python side is the same either way. Several machines: run the same
# launcher on each, with the same NNODES, MASTER_ADDR (the address of the NODE_RANK=0 machine) and MASTER_PORT, and
# NODE_RANK 0 .. NNODES-1 (scripts/slurm/ does this under Slurm; docs/several_machines.md).
# Under accelerate, NP, NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT override what ACCELERATE_CONFIG says, and the
# precision is the entry point's own (--fp16 / --bf16; accelerate's mixed_precision is set to 'no'). A config that
# asks for DeepSpeed, FSDP, Megatron-LM or TPUs is refused: the Trainer runs torch DDP.
# Ctrl-C under torchrun: the workers' main process says in one line what was saved (a resumable checkpoint, or nothing
# before training started), and this exits 130.
NNODES=${NNODES:-1}                      # machines
NODE_RANK=${NODE_RANK:-}                 # this machine's rank, 0 .. NNODES-1 (default 0 on one machine only)
MASTER_ADDR=${MASTER_ADDR:-}             # address of the NODE_RANK=0 machine, reachable from all machines
                                         # (default 127.0.0.1 on one machine only)
MASTER_PORT=${MASTER_PORT:-}             # a free TCP port on that machine; default 29500, or any free port on one machine
LAUNCHER=${LAUNCHER:-torchrun}           # torchrun or accelerate
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-} # `accelerate config` file (LAUNCHER=accelerate only); empty: none

_READ_DISTRIBUTED_TYPE='import sys; from accelerate.commands.config.config_args import load_config_from_file as load
print(load(sys.argv[1]).distributed_type.value)'

_FREE_PORT='import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'

_launch_error() { echo "error: $1" >&2; exit 2; }
[[ $NNODES =~ ^[1-9][0-9]*$ ]] || _launch_error "NNODES=$NNODES: expected a positive integer"
if (( NNODES > 1 )); then  # a default would start each machine as a separate rendezvous on itself
    [[ -n $MASTER_ADDR ]] \
        || _launch_error "NNODES=$NNODES without MASTER_ADDR: expected the address of the NODE_RANK=0 machine"
    [[ -n $NODE_RANK ]] \
        || _launch_error "NNODES=$NNODES without NODE_RANK: expected this machine's rank, 0 .. $(( NNODES - 1 ))"
fi
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
if [[ -z $MASTER_PORT ]]; then  # two runs on one machine must not both claim 29500
    if (( NNODES == 1 )); then MASTER_PORT=$(python -c "$_FREE_PORT"); else MASTER_PORT=29500; fi
fi
[[ $NODE_RANK =~ ^(0|[1-9][0-9]*)$ ]] && (( NODE_RANK < NNODES )) \
    || _launch_error "NODE_RANK=$NODE_RANK: expected an integer from 0 to NNODES-1=$(( NNODES - 1 ))"
[[ $MASTER_PORT =~ ^[1-9][0-9]*$ ]] && (( MASTER_PORT >= 1 && MASTER_PORT <= 65535 )) \
    || _launch_error "MASTER_PORT=$MASTER_PORT: expected a port number from 1 to 65535"
[[ -n $MASTER_ADDR && $MASTER_ADDR != *[[:space:]]* ]] \
    || _launch_error "MASTER_ADDR='$MASTER_ADDR': expected a host name or IP address"
[[ $LAUNCHER == torchrun || $LAUNCHER == accelerate ]] \
    || _launch_error "LAUNCHER=$LAUNCHER: expected torchrun or accelerate"
if [[ -n $ACCELERATE_CONFIG ]]; then
    [[ $LAUNCHER == accelerate ]] \
        || _launch_error "ACCELERATE_CONFIG=$ACCELERATE_CONFIG with LAUNCHER=$LAUNCHER: expected LAUNCHER=accelerate"
    [[ -f $ACCELERATE_CONFIG ]] \
        || _launch_error "ACCELERATE_CONFIG=$ACCELERATE_CONFIG: expected an existing config file"
    _distributed_type=$(python -c "$_READ_DISTRIBUTED_TYPE" "$ACCELERATE_CONFIG" 2>/dev/null) \
        || _launch_error "ACCELERATE_CONFIG=$ACCELERATE_CONFIG: expected a config file written by accelerate config"
    [[ ! $_distributed_type =~ ^(DEEPSPEED|FSDP|MEGATRON_LM|XLA)$ ]] \
        || _launch_error "ACCELERATE_CONFIG=$ACCELERATE_CONFIG asks for distributed_type $_distributed_type:"\
" expected NO, MULTI_CPU or MULTI_GPU (the Trainer runs torch DDP)"
fi

# Runs `python -m lm_experiments_tools.launcher COMMAND...`: torchrun or accelerate launch, whose failure ends as the
# processes' one line and exit code (2 for bad input, 1 for a failure) instead of the launcher's own report. It gets
# its own process group, so that Ctrl-C (SIGINT to the terminal's foreground group) reaches this shell only, which
# passes it on to the workers, the launcher's children: their main process reports in one line what was saved, and
# they exit 0 (130 for a single process under accelerate), so the launcher ends without a traceback; this shell
# then exits 130. Only the workers know whether a checkpoint was saved, so this shell adds no line of its own.
# (Interrupted itself, torchrun would print a traceback of its own.) A shell started with SIGINT ignored (a
# background job of a script) cannot trap it: Ctrl-C does not reach such a run, SIGTERM to the workers stops it.
_run_launcher() {
    local pid status interrupted=0
    set -m
    python -m lm_experiments_tools.launcher "$@" &
    pid=$!
    set +m
    trap 'interrupted=1; pkill -INT -P "$pid" || true' INT
    while :; do
        status=0
        wait "$pid" || status=$?
        kill -0 "$pid" 2>/dev/null || break  # a wait cut short by the trap leaves the launcher running
    done
    trap - INT
    (( ! interrupted )) || exit 130
    return "$status"
}

launch() {
    local entry_point=$1
    shift
    if [[ $LAUNCHER == torchrun ]]; then
        _run_launcher torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" \
            --master_port "$MASTER_PORT" --nproc_per_node "$NP" "$entry_point" "$@"
        return
    fi
    local processes=$(( NP * NNODES ))
    local multi_process=()
    (( processes == 1 )) || multi_process=(--multi_gpu --gpu_ids all)  # torch DDP; gloo on machines without CUDA
    _run_launcher accelerate launch ${ACCELERATE_CONFIG:+--config_file "$ACCELERATE_CONFIG"} "${multi_process[@]}" \
        --num_processes "$processes" --num_machines "$NNODES" --machine_rank "$NODE_RANK" \
        --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" --same_network \
        --mixed_precision no --dynamo_backend no "$entry_point" "$@"
}
