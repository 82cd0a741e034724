#!/usr/bin/env bash
# The two memories side by side on the offline default: for each memory of MEMORY_TYPES (memory tokens, RMT;
# associative, ARMT) and each task of TASKS, the task's offline job trains the MiniLM backbone on the same generated
# stories (GEN_SEED) and background with the same step budget, evaluates at the trained lengths and out to 16x the
# longest; qa tasks are also split by where the answer's fact lies (python -m babilong.analysis.fact_position,
# in each last run folder as fact_split.json). Then one plot per task with both memories (RUNS_DIR/TASK.png) and the
# table of every record (RUNS_DIR/comparison.md, python -m babilong.compare). Each memory's runs go under
# RUNS_DIR/MEMORY. Recipes: qa1..qa5 scripts/babilong/offline_babilong_job.sh; memorize, detect_memorize and
# reasoning scripts/babilong/offline_paper_figure.sh (with their 100k-token evaluations). Every variable of those
# jobs can be overridden from the environment; extra arguments go to run_finetuning_babilong_rmt.py.
set -euo pipefail
SCRIPT_DIR="$(realpath "$(dirname "${BASH_SOURCE[0]}")")"
REPO_ROOT="$(realpath "$SCRIPT_DIR/../..")"

RUNS_DIR=${RUNS_DIR:-$REPO_ROOT/runs/offline_memory_compare}
TASKS=${TASKS:-qa1}                            # qa1..qa5, memorize, detect_memorize, reasoning
MEMORY_TYPES=${MEMORY_TYPES:-tokens associative}
FACT_SPLIT_SAMPLES=${FACT_SPLIT_SAMPLES:-500}  # qa tasks: test questions of the split by fact position

for task in $TASKS; do  # everything is checked before anything trains
    [[ $task =~ ^(qa[1-5]|memorize|detect_memorize|reasoning)$ ]] || {
        echo "error: TASKS has '$task': expected qa1..qa5, memorize, detect_memorize or reasoning" >&2; exit 2; }
done
for memory in $MEMORY_TYPES; do
    [[ $memory =~ ^(tokens|associative)$ ]] || {
        echo "error: MEMORY_TYPES has '$memory': expected tokens and/or associative" >&2; exit 2; }
done
[[ $FACT_SPLIT_SAMPLES =~ ^[1-9][0-9]*$ ]] || {
    echo "error: FACT_SPLIT_SAMPLES=$FACT_SPLIT_SAMPLES: expected a positive integer" >&2; exit 2; }

for memory in $MEMORY_TYPES; do
    for task in $TASKS; do
        if [[ $task == qa* ]]; then
            MEMORY_TYPE="$memory" RUNS_DIR="$RUNS_DIR/$memory" TASKS="$task" FACT_SPLIT_SAMPLES="$FACT_SPLIT_SAMPLES" \
                "$SCRIPT_DIR/offline_babilong_job.sh" "$@"
        else
            MEMORY_TYPE="$memory" RUNS_DIR="$RUNS_DIR/$memory" TASKS="$task" "$SCRIPT_DIR/offline_paper_figure.sh" "$@"
        fi
    done
done
for task in $TASKS; do
    python -m babilong.plot "$RUNS_DIR" --tasks "$task" --title "$task: memory tokens vs associative memory" \
        -o "$RUNS_DIR/$task.png"
done
python -m babilong.compare "$RUNS_DIR" --json "$RUNS_DIR/comparison.json" | tee "$RUNS_DIR/comparison.md"
