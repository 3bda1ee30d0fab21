#!/usr/bin/env bash
# Fashion-MNIST for `make data-fashion`: Debian's dataset-fashion-mnist ships the four .gz
# files; copy them into DIR only after their MD5 matches the published sums.
set -euo pipefail
dir=${1:?usage: fetch-fashion.sh DIR}
declare -A md5=(
  [train-images-idx3-ubyte.gz]=cf8536b0aa1a6ac5fa3f23001093305c
  [train-labels-idx1-ubyte.gz]=10bea18fdb374794d4bb42e356e600c9
  [t10k-images-idx3-ubyte.gz]=f78720b4224f21cce2f2ccf2d7a94c9a
  [t10k-labels-idx1-ubyte.gz]=0d30e22e447f3c33dab9ed536400ac01
)
ok() { [ -f "$1" ] && [ "$(md5sum < "$1" | cut -d' ' -f1)" = "$2" ]; }
all_ok=1
for f in "${!md5[@]}"; do ok "$dir/$f" "${md5[$f]}" || all_ok=0; done
if [ "$all_ok" = 1 ]; then echo "fetch-fashion: $dir: all four files present and verified"; exit 0; fi
if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
fi
mkdir -p "$dir"
for f in "${!md5[@]}"; do
  src=$(dpkg -L dataset-fashion-mnist | grep "/$f\$" | head -n1)
  [ -n "$src" ] || { echo "fetch-fashion: dataset-fashion-mnist has no $f" >&2; exit 1; }
  tmp=$(mktemp "$dir/.$f.XXXXXX.part")
  cp "$src" "$tmp"
  ok "$tmp" "${md5[$f]}" || { rm -f "$tmp"; echo "fetch-fashion: $src: MD5 is not ${md5[$f]}" >&2; exit 1; }
  mv "$tmp" "$dir/$f"
  echo "fetch-fashion: $dir/$f verified"
done
