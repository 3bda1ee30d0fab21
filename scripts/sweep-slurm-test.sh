#!/usr/bin/env bash
# End-to-end test of Slurm sweeps (CI runs it as root on a fresh Debian 12): brings up a
# one-node Slurm on localhost (scripts/slurm-local-up.sh, MaxArraySize=3 so the submitter
# must chunk), builds the binaries, submits the tiny grid with `make sweep-slurm`, waits for
# the report job, checks every run and the report, checks that a second make has nothing to
# do, and stops the daemons it started. Prints "N passed, M failed" and exits non-zero on a
# failure.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
passed=0
failed=0
check() { # check NAME COMMAND...
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok   $name"; else failed=$((failed + 1)); echo "FAIL $name"; fi
}

started=0
if ! { [ -s /run/aiq-slurm/slurmctld.pid ] && kill -0 "$(cat /run/aiq-slurm/slurmctld.pid)" 2>/dev/null; }; then
  started=1
fi
cleanup() { [ "$started" = 1 ] && bash scripts/slurm-local-down.sh || true; }
trap cleanup EXIT
# A cluster left running by an earlier bring-up is restarted so MaxArraySize applies.
[ "$started" = 0 ] && { bash scripts/slurm-local-down.sh; started=1; }
SLURM_MAX_ARRAY_SIZE=3 bash scripts/slurm-local-up.sh
bash scripts/sweep-deps.sh

target=${CARGO_TARGET_DIR:-$repo/target}
cargo build --locked --bins -q
bin=$target/debug

work=$target/sweep-slurm-test
rm -rf "$work"
mkdir -p "$work"
# The top-level Makefile includes mk/sweep.mk; fall back to it alone when not wired yet.
mk=Makefile
grep -q 'mk/sweep.mk' Makefile 2>/dev/null || mk=mk/sweep.mk
vars=(GRID=grids/tiny BIN="$bin" SWEEP_ROOT="$work/runs" SWEEP_GEN="$work/gen"
      SWEEP_REPORT_DIR="$work/report" SWEEP_BUILD=)

start=$(date +%s)
# Bounded: a cluster that never runs the jobs fails the test instead of hanging CI.
ids=$(SLURM_WAIT=1 timeout 900 make -s -f "$mk" "${vars[@]}" sweep-slurm)
echo "slurm jobs: $ids ($(( $(date +%s) - start )) s)"
array_id=${ids%% *}

count() { find "$work/runs" -name "$1" -type f | wc -l; }
check "8 runs scored" test "$(count score.json)" = 8
check "8 models" test "$(count model.bin)" = 8
check "no states left (intermediate)" test "$(count states.bin)" = 0
check "report written" test -s "$work/report/summary.json"
check "report has Table 1" grep -q "Table 1" "$work/report/tables.md"
check "heatmap PNG" test -s "$work/report/fig1-lenet300-none-r0-aiq.png"
# MaxArraySize=3 allows 3 tasks: 8 runs in chunks of 3.
check "3 array tasks (chunked to MaxArraySize)" test "$(ls "$work/runs/slurm-logs/${array_id}"_*.out | wc -l)" = 3
check "every run trained once" test "$(cat "$work"/runs/slurm-logs/"${array_id}"_*.out | grep -c '^train ')" = 8
check "second make has nothing to do" make -q -f "$mk" "${vars[@]}" sweep
# Resubmitting resumes: lose one run entirely and another's score, and only those are redone.
rm -f "$work"/runs/lenet300-4-4/none/r0/seed2/* "$work"/runs/lenet300-2-2/none/r0/seed1/score.json
ids=$(SLURM_WAIT=1 timeout 900 make -s -f "$mk" "${vars[@]}" sweep-slurm)
array_id=${ids%% *}
check "resubmission: 8 runs scored" test "$(count score.json)" = 8
check "resubmission trained only the lost run" test "$(cat "$work"/runs/slurm-logs/"${array_id}"_*.out | grep -c '^train ')" = 1
check "resubmission rescored two runs" test "$(cat "$work"/runs/slurm-logs/"${array_id}"_*.out | grep -c 'score-aiq ')" = 2
echo "slurm sweep test: $(( $(date +%s) - start )) s"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
