#!/usr/bin/env bash
# Times `duquant pack` on a full-size synthetic pi0.5 (benchmarks/list_linears.sh writes it):
# the 126 action-expert layers (openpi-dit) and the 252 language-model + action-expert layers
# (openpi-full). Prints the tool's summary (with its split: reading, computing and writing, which
# overlap on their own threads), wall time, layers/s, weight GB/s and peak RSS. Environment:
# DUQUANT_CPU_FEATURES forces a kernel level (scalar, sse2, avx2, avx512).
#   benchmarks/pack_full_size.sh [BUILD_DIR] [WORK_DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
work=${2:-$root/build/bench}
dq="$build/duquant"
ckpt="$work/pi05_full.safetensors"
[ -f "$ckpt" ] || "$dq" synth -o "$ckpt" --factor 1
for preset in openpi-dit openpi-full; do
  out="$work/pack-$preset"
  rm -rf "$out"
  /usr/bin/time -f "wall %e s, peak RSS %M KB" -o "$work/time-$preset.txt" \
    "$dq" pack "$ckpt" -o "$out" --preset "$preset" > "$work/pack-$preset.log"
  echo "== $preset"
  tail -n 4 "$work/pack-$preset.log"
  cat "$work/time-$preset.txt"
  layers=$(grep -oE "packed [0-9]+ layers" "$work/pack-$preset.log" | grep -oE "[0-9]+")
  wall=$(grep -oE "wall [0-9.]+" "$work/time-$preset.txt" | grep -oE "[0-9.]+")
  gb=$(grep -oE "weights in: [0-9.]+ MB" "$work/pack-$preset.log" | grep -oE "[0-9.]+")
  awk -v l="$layers" -v w="$wall" -v g="$gb" 'BEGIN { printf "layers/s %.2f, weight GB/s %.3f\n", l / w, g / 1000 / w }'
done
