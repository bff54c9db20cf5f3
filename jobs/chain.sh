#!/bin/bash
# Submit the whole pipeline with plain sbatch: the scripts in this folder (the same ones
# `python -m hpc.submit` renders), chained with afterok dependencies.
#
#   jobs/chain.sh RUN PRESET [SAMPLES] [SHARDS]        e.g.  jobs/chain.sh runs/tiny tiny 8 2
#
# Every stage: one array job (one task per shard; for score one array per reward) and a finalisation
# job (afterok on the array); the next stage waits (afterok) on the finalisations. Extra sbatch
# options for every job (they override the #SBATCH lines): SBATCH_ARGS="--partition=gpu --account=me".
# PYTHON: the interpreter on the compute nodes (default: python on PATH).
set -euo pipefail
usage="usage: jobs/chain.sh RUN PRESET [SAMPLES] [SHARDS]"
RUN=$(realpath -m "${1:?$usage}")
PRESET=${2:?$usage}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python}
export RUN PYTHON

# config.yaml and every store array, written once before any task runs
"$PYTHON" -m hpc.submit prepare --run "$RUN" --preset "$PRESET" ${3:+--samples "$3"} ${4:+--shards "$4"} --create-only

after=""
while read -r STAGE SHARDS VARIANTS; do
  finals=""
  for VARIANT in ${VARIANTS//,/ }; do
    [ "$VARIANT" = "-" ] && VARIANT=""
    export STAGE VARIANT
    mkdir -p "$RUN/logs/$STAGE${VARIANT:+/$VARIANT}"   # sbatch does not create log folders
    tasks=$(sbatch --parsable --chdir="$RUN" ${SBATCH_ARGS:-} --array="0-$((SHARDS - 1))" \
      ${after:+--dependency=afterok:$after} "$HERE/$STAGE.sbatch")
    final=$(sbatch --parsable --chdir="$RUN" ${SBATCH_ARGS:-} --dependency="afterok:$tasks" "$HERE/finalize.sbatch")
    echo "$STAGE${VARIANT:+/$VARIANT}: tasks $tasks, finalize $final"
    finals="${finals:+$finals:}$final"
  done
  after=$finals
done < <("$PYTHON" -m hpc.jobs plan "$RUN")
