#!/usr/bin/env bash
# Times `duquant pack --device cuda` on a full-size synthetic pi0.5 (the checkpoint of
# benchmarks/pack_full_size.sh), for whoever has a GPU: openpi-dit (126 layers) and openpi-full
# (252 layers), then the same packs on the CPU for comparison unless SKIP_CPU=1. Prints the tool's
# summary with the time spent reading weights vs computing vs writing, layers/s, weight GB/s
# (BF16 bytes read), peak RSS, and how far the GPU pack is from the CPU pack (`duquant verify
# -r`, which compares rotations by eigenspace and quality within 1 %).
#   benchmarks/pack_cuda.sh [BUILD_DIR] [WORK_DIR] [DEVICE]     (DEVICE default: cuda)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
work=${2:-$root/build/bench}
device=${3:-cuda}
dq="$build/duquant"
mkdir -p "$work"
"$dq" version
if ! "$dq" version | grep -qE "devices: [1-9]"; then
  echo "pack_cuda.sh: no CUDA device here; nothing to time" >&2
  exit 77
fi
ckpt="$work/pi05_full.safetensors"
[ -f "$ckpt" ] || "$dq" synth -o "$ckpt" --factor 1
run() {  # run PRESET DEVICE
  local out="$work/pack-$1-${2//[:,]/_}"
  rm -rf "$out"
  /usr/bin/time -f "wall %e s, peak RSS %M KB" -o "$out.time" \
    "$dq" pack "$ckpt" -o "$out" --preset "$1" --device "$2" > "$out.log"
  echo "== $1 on $2"
  tail -n 4 "$out.log"
  cat "$out.time"
  local layers wall mb
  layers=$(grep -oE "packed [0-9]+ layers" "$out.log" | grep -oE "[0-9]+")
  wall=$(grep -oE "wall [0-9.]+" "$out.time" | grep -oE "[0-9.]+")
  mb=$(grep -oE "weights in: [0-9.]+ MB" "$out.log" | grep -oE "[0-9.]+")
  awk -v n="$layers" -v t="$wall" -v mb="$mb" 'BEGIN { printf "layers/s %.2f, weight GB/s %.3f\n", n / t, mb / 1000 / t }'
}
for preset in openpi-dit openpi-full; do
  run "$preset" "$device"
  if [ "${SKIP_CPU:-0}" != 1 ]; then
    run "$preset" cpu
    echo "== verify: the $device pack against the CPU pack and the checkpoint"
    "$dq" verify "$work/pack-$preset-${device//[:,]/_}" -c "$ckpt" -r "$work/pack-$preset-cpu" --quiet || true
  fi
done
