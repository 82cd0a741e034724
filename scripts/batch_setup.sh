# Sourced by the launchers: checks NP, ITERS, TBS and BS, and sets GRAD_ACC = TBS / (BS * NP).
# A total batch that the processes cannot split evenly stops the launcher with exit code 2.
for name in NP ITERS TBS BS; do
    [[ ${!name} =~ ^[1-9][0-9]*$ ]] || { echo "error: $name=${!name}: expected a positive integer" >&2; exit 2; }
done
if (( TBS % (BS * NP) != 0 )); then
    echo "error: TBS=$TBS is not divisible by BS*NP=$((BS * NP)): expected a multiple" >&2; exit 2
fi
GRAD_ACC=$(( TBS / (BS * NP) ))
