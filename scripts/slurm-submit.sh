#!/usr/bin/env bash
# Submits a sweep grid to Slurm as a job array, then a report job that runs when every task
# has succeeded. Each array task runs a chunk of consecutive runs with the same make targets
# as a local sweep (`make sweep-chunk`), in this directory, which must be on a filesystem the
# compute nodes share. Runs already done are skipped, so resubmitting resumes a sweep.
#
# Usage: bash scripts/slurm-submit.sh GRID [MAKEVAR=VALUE ...]   (or: make sweep-slurm GRID=...)
# Environment:
#   SLURM_CPUS=1         CPUs per array task (the task runs make -j SLURM_CPUS)
#   SWEEP_CHUNK_SIZE=    runs per task (default SLURM_CPUS), raised so that the number of
#                        tasks stays within the cluster's MaxArraySize
#   SLURM_SBATCH_ARGS=   extra sbatch arguments, e.g. "--partition=cpu --time=24:00:00"
#   SLURM_WAIT=          1: wait for the report job and exit with its status
#   SWEEP_MAKEFILE=Makefile   the makefile that includes mk/sweep.mk
set -euo pipefail

grid=${1:?usage: slurm-submit.sh GRID [MAKEVAR=VALUE ...]}
shift
mk=${SWEEP_MAKEFILE:-Makefile}
cpus=${SLURM_CPUS:-1}
log() { echo "slurm-submit: $*" >&2; }

for tool in sbatch scontrol make; do
  command -v "$tool" >/dev/null || { log "$tool not found (is this a Slurm login node?)"; exit 1; }
done
[ -r "$grid" ] || { log "$grid: cannot read the grid file"; exit 1; }

# A make that calls this passes its flags and jobserver in the environment; sbatch would
# hand them to the tasks, so drop them (the variables that matter are passed explicitly).
unset MAKEFLAGS MFLAGS MAKELEVEL MAKEOVERRIDES
make_args=(-f "$mk" GRID="$grid" SWEEP_BUILD= "$@")
count=$(make -s --no-print-directory "${make_args[@]}" sweep-count)
root=$(make -s --no-print-directory "${make_args[@]}" sweep-print-root)
case "$count" in ''|*[!0-9]*) log "could not count the runs of $grid (got '$count')"; exit 1 ;; esac
[ "$count" -gt 0 ] || { log "$grid has no runs"; exit 1; }

# MaxArraySize N allows indices 0..N-1, so at most N tasks.
max_array=$(scontrol show config | awk '$1 == "MaxArraySize" {print $3}')
max_array=${max_array:-1001}
chunk=${SWEEP_CHUNK_SIZE:-$cpus}
min_chunk=$(( (count + max_array - 1) / max_array ))
[ "$chunk" -ge "$min_chunk" ] || chunk=$min_chunk
tasks=$(( (count + chunk - 1) / chunk ))

name=aiq-$(basename "$grid")
logs="$root/slurm-logs"
mkdir -p "$logs"
q() { printf '%q ' "$@"; }
# shellcheck disable=SC2206
extra=(${SLURM_SBATCH_ARGS:-})

array_id=$(sbatch --parsable --job-name="$name" --chdir="$PWD" \
  --array="0-$((tasks - 1))" --cpus-per-task="$cpus" \
  --output="$logs/%A_%a.out" "${extra[@]}" \
  --wrap="$(q make "${make_args[@]}" sweep-chunk -j "$cpus") SWEEP_CHUNK=\$SLURM_ARRAY_TASK_ID SWEEP_CHUNK_SIZE=$chunk")
array_id=${array_id%%;*}
log "$count runs of $grid in $tasks tasks of up to $chunk runs: job array $array_id (logs in $logs)"

wait_flag=()
[ "${SLURM_WAIT:-}" = 1 ] && wait_flag=(--wait)
report_id=$(sbatch --parsable --job-name="$name-report" --chdir="$PWD" \
  --dependency="afterok:$array_id" --kill-on-invalid-dep=yes \
  --output="$logs/report_%j.out" "${extra[@]}" "${wait_flag[@]}" \
  --wrap="$(q make "${make_args[@]}" sweep-report)")
report_id=${report_id%%;*}
log "report job $report_id runs after the array succeeds"
echo "$array_id $report_id"
