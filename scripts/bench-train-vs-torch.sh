#!/usr/bin/env bash
# Side-by-side epoch times of `train` and the PyTorch peer (/work/shared/peers/torch_lenet.py,
# or $TORCH_LENET), same architecture, batch and thread count, alternating ours and theirs
# per configuration in one run so both see the same machine load. Prints, per configuration
# and thread count, the median epoch training time of epochs 2 and later and the ratio
# ours / PyTorch. Full MNIST epochs (60k images); neither side times its test evaluation.
#
#   scripts/bench-train-vs-torch.sh                      # defaults below
#   THREADS="2 1" EPOCHS=4 ROUNDS=2 scripts/bench-train-vs-torch.sh
#   CONFIGS="lenet5:3,9,4" scripts/bench-train-vs-torch.sh
#
# Needs: a release build (`cargo build --release --bin train`), MNIST in $DATA, and a Python
# with torch ($TORCH_PYTHON, e.g. a venv made with `pip install numpy torch`).
set -euo pipefail

DATA=${DATA:-data/mnist}
OURS=${OURS:-${CARGO_TARGET_DIR:-target}/release/train}
TORCH_PYTHON=${TORCH_PYTHON:-python3}
TORCH_LENET=${TORCH_LENET:-/work/shared/peers/torch_lenet.py}
THREADS=${THREADS:-2 1}
EPOCHS=${EPOCHS:-3}
ROUNDS=${ROUNDS:-1}
BATCH=${BATCH:-200}
CONFIGS=${CONFIGS:-lenet300:11,4 lenet5:3,9,4 lenet300:128,1024 lenet5:32,64,128}

[[ -x $OURS ]] || { echo "bench-train-vs-torch: no $OURS (cargo build --release --bin train)" >&2; exit 1; }
[[ $EPOCHS -ge 2 ]] || { echo "bench-train-vs-torch: EPOCHS must be at least 2 (epoch 1 is not timed)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); batch $BATCH, $EPOCHS epochs x $ROUNDS rounds, epochs 2+ timed"
printf '%-22s %7s %12s %12s %8s\n' config threads ours_s torch_s ratio
for threads in $THREADS; do
  for cfg in $CONFIGS; do
    arch=${cfg%%:*} widths=${cfg#*:}
    : > "$work/ours" && : > "$work/torch"
    for ((r = 0; r < ROUNDS; r++)); do
      "$OURS" --arch "$arch" --widths "$widths" --batch "$BATCH" --max-epochs "$EPOCHS" \
        --patience "$EPOCHS" --threads "$threads" --seed "$r" --data "$DATA" \
        --log "$work/ours.log" -o "$work/model.bin" 2>/dev/null
      # Epoch 1 is warm-up on both sides.
      python3 -c 'import json,sys
for l in open(sys.argv[1]):
    j = json.loads(l)
    if j["epoch"] >= 2: print(j["seconds"])' "$work/ours.log" >> "$work/ours"
      "$TORCH_PYTHON" "$TORCH_LENET" --arch "$arch" --widths "$widths" --batch "$BATCH" \
        --epochs "$EPOCHS" --threads "$threads" --seed "$r" --data "$DATA" |
        python3 -c 'import json,sys
for l in sys.stdin:
    j = json.loads(l)
    if j["epoch"] >= 2: print(j["train_s"])' >> "$work/torch"
    done
    python3 - "$cfg" "$threads" "$work/ours" "$work/torch" <<'PY'
import statistics, sys
cfg, threads, ours, torch = sys.argv[1:]
o = statistics.median(float(v) for v in open(ours))
t = statistics.median(float(v) for v in open(torch))
print(f"{cfg:<22} {threads:>7} {o:>12.3f} {t:>12.3f} {o / t:>8.3f}")
PY
  done
done
