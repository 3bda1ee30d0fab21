#!/usr/bin/env bash
# Installs what sweeps and reports need beyond the Rust toolchain, from Debian's packages:
# make and awk (the sweep rules), and DejaVu Sans (text in the report's PNG heatmaps).
# Idempotent; run as root. Slurm itself is installed by scripts/slurm-local-up.sh (test
# cluster) or is already on a real cluster.
set -euo pipefail
need=()
command -v make >/dev/null || need+=(make)
command -v awk >/dev/null || need+=(mawk)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "sweep-deps: need root to install ${need[*]}" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  echo "sweep-deps: installed ${need[*]}" >&2
fi
