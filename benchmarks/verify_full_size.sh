#!/usr/bin/env bash
# Times `duquant verify` on the full-size packs benchmarks/pack_full_size.sh writes: structure and
# checksums only, then against the checkpoint. Prints the verdict line, wall time and peak RSS.
#   benchmarks/verify_full_size.sh [BUILD_DIR] [WORK_DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
work=${2:-$root/build/bench}
dq="$build/duquant"
ckpt="$work/pi05_full.safetensors"
for preset in openpi-dit openpi-full; do
  pack="$work/pack-$preset"
  [ -f "$pack/manifest.json" ] || { echo "run benchmarks/pack_full_size.sh first ($pack missing)"; exit 1; }
  for mode in plain checkpoint; do
    args=()
    [ "$mode" = checkpoint ] && args=(--checkpoint "$ckpt")
    echo "== verify $preset ($mode)"
    /usr/bin/time -f "wall %e s, peak RSS %M KB" "$dq" verify "$pack" --quiet "${args[@]}" 2>&1 | tail -n 2
  done
done
