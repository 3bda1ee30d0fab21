#!/usr/bin/env bash
# Measures the cost of one sweep run on this machine: for each LeNet-300-100 width pair, trains
# on the full MNIST on one thread for a fixed number of epochs, then runs dump-states,
# count-states and score-aiq (one thread each), and prints a CSV line with wall and CPU
# seconds per training epoch and for the three measuring stages. docs/sweeps.md turns these
# into seconds per run and the projected wall time of a grid.
#
# Usage: bash scripts/sweep-measure.sh [EPOCHS] [N1xN2 ...]   (release binaries in $BIN;
# no widths: all 100 of the LeNet-300-100 grid)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
DATA=${DATA:-data/mnist}
epochs=${1:-2}
shift || true
widths=("$@")
if [ ${#widths[@]} -eq 0 ]; then # the whole LeNet-300-100 grid
  for a in 2 4 8 16 32 64 128 256 512 1024; do
    for b in 2 4 8 16 32 64 128 256 512 1024; do widths+=("${a}x$b"); done
  done
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
TIMEFORMAT='%R %U %S'
echo "# $(uname -n), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), epochs=$epochs"
echo "n1,n2,parameters,epochs,train_wall_s,train_cpu_s,epoch_wall_s,train_overhead_wall_s,epoch_cpu_s,measure_wall_s,measure_cpu_s"
for w in "${widths[@]}"; do
  n1=${w%x*}; n2=${w#*x}
  params=$("$BIN/train" --describe --arch lenet300 --widths "$n1,$n2" | grep -m1 '"parameters"' | tr -dc 0-9)
  t=$( { time "$BIN/train" --arch lenet300 --widths "$n1,$n2" --seed 1 --data "$DATA" \
        --max-epochs "$epochs" --patience 1000 --threads 1 --log "$work/train.log" \
        -o "$work/model.bin" 2>/dev/null; } 2>&1 )
  read -r tw tu ts <<<"$t"
  # Wall seconds of the epochs themselves (train.log has one JSON line per epoch); the rest of
  # the training wall time is loading the data and writing the model.
  ew=$(grep -o '"seconds":[0-9.e+-]*' "$work/train.log" | cut -d: -f2 | awk '{s += $1} END {print s}')
  m=$( { time { "$BIN/dump-states" --model "$work/model.bin" --data "$DATA" --threads 1 -o "$work/states.bin" &&
       "$BIN/count-states" "$work/states.bin" --threads 1 -o "$work/counts.bin" &&
       "$BIN/score-aiq" "$work/counts.bin" --json -o "$work/score.json"; }; } 2>&1 )
  read -r mw mu ms <<<"$m"
  awk -v n1="$n1" -v n2="$n2" -v p="$params" -v e="$epochs" -v tw="$tw" -v tu="$tu" -v ts="$ts" \
      -v mw="$mw" -v mu="$mu" -v ms="$ms" -v ew="$ew" 'BEGIN {
    # On a busy machine the process gets a share cpu/wall of a core throughout, so an epoch
    # costs about its wall time times that share: the time it takes on a core of its own.
    printf "%s,%s,%s,%s,%.2f,%.2f,%.3f,%.2f,%.3f,%.2f,%.2f\n", n1, n2, p, e, tw, tu + ts, ew / e, tw - ew, ew / e * (tu + ts) / tw, mw, mu + ms }'
done
