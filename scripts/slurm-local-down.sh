#!/usr/bin/env bash
# Stops the one-node Slurm cluster that scripts/slurm-local-up.sh started: cancels its jobs,
# then ends slurmd, slurmctld and munged by the pids that script recorded (nothing else).
set -uo pipefail

STATE=${SLURM_LOCAL_STATE:-/run/aiq-slurm}

if [ -s "$STATE/slurmctld.pid" ] && command -v scancel >/dev/null; then
  scancel --user=root >/dev/null 2>&1 || true
fi
for d in slurmd slurmctld munged; do
  f="$STATE/$d.pid"
  [ -s "$f" ] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$f"
done
echo "slurm-local-down: stopped" >&2
