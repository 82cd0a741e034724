# Sourced by the launchers: checks NP, ITERS, TBS and BS, and sets GRAD_ACC = TBS / (BS * NP * NNODES).
# A total batch that the processes cannot split evenly stops the launcher with exit code 2.
for name in NP ITERS TBS BS; do
    [[ ${!name} =~ ^[1-9][0-9]*$ ]] || { echo "error: $name=${!name}: expected a positive integer" >&2; exit 2; }
done
PROCESSES=$(( NP * ${NNODES:-1} ))  # on all machines; NNODES is checked by launch.sh, sourced before this file
if (( TBS % (BS * PROCESSES) != 0 )); then
    factors="BS*NP"; (( PROCESSES == NP )) || factors="BS*NP*NNODES"
    echo "error: TBS=$TBS is not divisible by $factors=$((BS * PROCESSES)): expected a multiple" >&2; exit 2
fi
GRAD_ACC=$(( TBS / (BS * PROCESSES) ))
