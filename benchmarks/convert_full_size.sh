#!/usr/bin/env bash
# Times the converter half on a full-size synthetic pi0.5 (written here when missing): the action
# expert (openpi-dit, 126 layers) is packed, its npz files alone copied to a folder as the Python
# runtime leaves them, then `duquant import` makes a full pack of them again (checks by verify's
# rules, codes from the rotations, conformance vectors) and `duquant bake` writes the checkpoint with
# the W4 weights (every other tensor copied). Prints each step's wall time and peak RSS.
#   benchmarks/convert_full_size.sh [BUILD_DIR] [WORK_DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
work=${2:-$root/build/bench}
dq="$build/duquant"
mkdir -p "$work"
ckpt="$work/pi05_full.safetensors"
[ -f "$ckpt" ] || "$dq" synth -o "$ckpt" --factor 1
cat "$ckpt" > /dev/null  # warm page cache
pack="$work/convert-pack" runtime="$work/convert-runtime" imported="$work/convert-imported"
baked="$work/convert-baked.safetensors"
rm -rf "$pack" "$runtime" "$imported" "$baked"
timed() {  # timed NAME COMMAND...
  local name=$1
  shift
  /usr/bin/time -f "%e %M" -o "$work/time-$name.txt" "$@" > "$work/$name.log"
  read -r wall rss < "$work/time-$name.txt"
  echo "$name: wall $wall s, peak RSS $((rss / 1024)) MB"
}
timed pack "$dq" pack "$ckpt" -o "$pack" --preset openpi-dit
mkdir -p "$runtime"
cp "$pack"/*.npz "$runtime"/
timed import "$dq" import "$runtime" --checkpoint "$ckpt" -o "$imported" --preset openpi-dit
cmp -s "$pack/quantized.safetensors" "$imported/quantized.safetensors" &&
  echo "import: quantized.safetensors identical to the pack's"
timed bake "$dq" bake "$imported" --checkpoint "$ckpt" -o "$baked"
tail -n 3 "$work/bake.log"
