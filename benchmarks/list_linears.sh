#!/usr/bin/env bash
# Times `duquant list-linears` on a full-size synthetic pi0.5 checkpoint (about 5.4 GB, BF16):
# opening and listing read only the headers, so the time must not grow with the file.
#   benchmarks/list_linears.sh [BUILD_DIR] [WORK_DIR]
# Prints the checkpoint size, the synth write time and, per preset, the best and median of 10
# listing runs and the peak resident memory.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
work=${2:-$root/build/bench}
dq="$build/duquant"
mkdir -p "$work"
ckpt="$work/pi05_full.safetensors"
if [ ! -f "$ckpt" ]; then
  start=$(date +%s.%N)
  "$dq" synth -o "$ckpt" --factor 1
  echo "synth: $(echo "$(date +%s.%N) - $start" | bc) s to write"
fi
echo "checkpoint: $(stat -c %s "$ckpt") bytes"
# Drop this file's pages from the page cache where allowed, so the first run is a cold one.
if command -v python3 > /dev/null; then
  python3 -c "import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)" "$ckpt" || true
fi
for preset in openpi-dit openpi-full; do
  times=()
  for i in $(seq 10); do
    s=$(date +%s%N)
    "$dq" list-linears "$ckpt" --preset "$preset" > /dev/null
    e=$(date +%s%N)
    times+=($(( (e - s) / 1000 )))
  done
  sorted=$(printf '%s\n' "${times[@]}" | sort -n)
  first=${times[0]}
  best=$(echo "$sorted" | head -1)
  median=$(echo "$sorted" | sed -n 5p)
  rss=$(/usr/bin/time -f %M "$dq" list-linears "$ckpt" --preset "$preset" 2>&1 > /dev/null | tail -1)
  echo "list-linears --preset $preset: first (cold) ${first} us, best ${best} us, median ${median} us, peak RSS ${rss} KB"
done
