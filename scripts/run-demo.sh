#!/usr/bin/env bash
# The main job on the embedded default: installs what is missing, builds, writes the synthetic
# pi0.5-shaped checkpoint (`duquant synth`), lists what every preset selects from it, and packs
# its language model and action expert (preset openpi-full) into demo/pack, verifies the pack
# against the checkpoint and writes its inspection report (demo/report.html); imports its npz files
# alone (as the Python runtime leaves a pack) back into a full pack and bakes the pack's W4 weights
# into a checkpoint (demo/baked.safetensors); then calibrates the
# action expert from a synthetic activation dump (static activation scales, smoothing folded into
# a copy of the checkpoint, the W4A8 output error on held-out calls). Then the same tool on the
# layouts people download: a LeRobot copy of pi0.5 (every name under `model.`) and GR00T N1.5
# (sharded like NVIDIA's release, and under LeRobot's `_groot_model.`), selected with the GR00T
# port's own rules and packed with the GR00T presets.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" build > "$root/build.log" 2>&1 || { tail -50 "$root/build.log"; exit 1; }
dq="$root/build/duquant"
demo="$root/demo"
mkdir -p "$demo"
"$dq" version
"$dq" synth -o "$demo/pi05_synth.safetensors" --factor 16 --force
for preset in openpi-dit-qkvo openpi-dit openpi-llm openpi-full openpi-llm-dit-mlp; do
  echo
  echo "== duquant list-linears demo/pi05_synth.safetensors --preset $preset"
  "$dq" list-linears "$demo/pi05_synth.safetensors" --preset "$preset" > "$demo/list-$preset.txt"
  head -n 4 "$demo/list-$preset.txt"
  echo "   ... (all $(grep -c DRYRUN "$demo/list-$preset.txt") lines in demo/list-$preset.txt)"
  tail -n 1 "$demo/list-$preset.txt"
done

echo
echo "== duquant pack demo/pi05_synth.safetensors -o demo/pack --preset openpi-full"
"$dq" pack "$demo/pi05_synth.safetensors" -o "$demo/pack" --preset openpi-full --force > "$demo/pack.log"
head -n 4 "$demo/pack.log"
echo "   ... (every layer in demo/pack.log)"
tail -n 5 "$demo/pack.log"

echo
echo "== duquant verify demo/pack --checkpoint demo/pi05_synth.safetensors --quiet"
"$dq" verify "$demo/pack" --checkpoint "$demo/pi05_synth.safetensors" --quiet

echo
echo "== duquant inspect demo/pack --html demo/report.html (the layers that hurt most)"
"$dq" inspect "$demo/pack" --checkpoint "$demo/pi05_synth.safetensors" --html "$demo/report.html" > "$demo/inspect.txt"
head -n 24 "$demo/inspect.txt"
echo "   ... (all of it in demo/inspect.txt; the maps in demo/report.html)"

echo
echo "== duquant import demo/runtime-pack (the npz files alone, as the Python runtime leaves a pack) -> demo/imported"
rm -rf "$demo/runtime-pack" "$demo/imported" "$demo/baked.safetensors"
mkdir -p "$demo/runtime-pack"
cp "$demo/pack"/*.npz "$demo/runtime-pack/"
"$dq" import "$demo/runtime-pack" --checkpoint "$demo/pi05_synth.safetensors" -o "$demo/imported" \
  --preset openpi-full > "$demo/import.log"
tail -n 4 "$demo/import.log"
cmp -s "$demo/pack/quantized.safetensors" "$demo/imported/quantized.safetensors" &&
  echo "   imported quantized.safetensors: byte for byte the pack's"
"$dq" verify "$demo/imported" --checkpoint "$demo/pi05_synth.safetensors" --quiet | tail -n 1
echo "== duquant bake demo/pack --checkpoint demo/pi05_synth.safetensors -o demo/baked.safetensors"
"$dq" bake "$demo/pack" --checkpoint "$demo/pi05_synth.safetensors" -o "$demo/baked.safetensors" > "$demo/bake.log"
tail -n 3 "$demo/bake.log"

echo
echo "== duquant pack demo/pi05_synth.safetensors -o demo/pack-a8 --preset openpi-dit --calib demo/acts.h5 --smooth-alpha 0.5"
/usr/bin/python3 "$root/examples/synthetic_dump.py" "$demo/pi05_synth.safetensors" "$demo/acts.h5" \
  --scope paligemma_with_expert.gemma_expert.model. --calls 12 --rows 256
"$dq" pack "$demo/pi05_synth.safetensors" -o "$demo/pack-a8" --preset openpi-dit --calib "$demo/acts.h5" \
  --calib-steps 8 --smooth-alpha 0.5 --fold-smoothing "$demo/pi05_synth-smoothed.safetensors" --force > "$demo/pack-a8.log"
tail -n 8 "$demo/pack-a8.log"
echo "== duquant verify demo/pack-a8 --checkpoint demo/pi05_synth-smoothed.safetensors (the folded checkpoint it is made for)"
"$dq" verify "$demo/pack-a8" --checkpoint "$demo/pi05_synth-smoothed.safetensors" --strict --quiet > "$demo/verify-a8.txt"
tail -n 1 "$demo/verify-a8.txt"
echo "== duquant verify demo/pack-a8 --checkpoint demo/pi05_synth.safetensors (WARN per smoothed layer: it needs the folded checkpoint)"
"$dq" verify "$demo/pack-a8" --checkpoint "$demo/pi05_synth.safetensors" --quiet | tail -n 1

echo
echo "== LeRobot's pi0.5 layout: duquant synth --prefix model. ; list-linears --preset openpi-dit (same layers, same names)"
"$dq" synth -o "$demo/pi05_lerobot.safetensors" --factor 16 --prefix model. --force
"$dq" list-linears "$demo/pi05_lerobot.safetensors" --preset openpi-dit > "$demo/list-lerobot-openpi-dit.txt"
tail -n 1 "$demo/list-lerobot-openpi-dit.txt"

echo
echo "== GR00T N1.5: duquant synth --model gr00t-n1.5 (sharded, with model.safetensors.index.json)"
"$dq" synth --model gr00t-n1.5 -o "$demo/gr00t_synth" --factor 16 --force
"$dq" synth --model gr00t-n1.5 -o "$demo/gr00t_lerobot" --factor 16 --prefix _groot_model. --force
echo "== duquant list-linears demo/gr00t_synth --env-prefix GR00T_DUQUANT_ (the GR00T port's own defaults)"
"$dq" list-linears "$demo/gr00t_synth" --env-prefix GR00T_DUQUANT_ > "$demo/list-gr00t-defaults.txt"
head -n 3 "$demo/list-gr00t-defaults.txt"
tail -n 1 "$demo/list-gr00t-defaults.txt"
for preset in gr00t-llm-dit gr00t-llm-dit-mlp; do
  echo "== duquant list-linears demo/gr00t_lerobot --preset $preset"
  "$dq" list-linears "$demo/gr00t_lerobot" --preset "$preset" > "$demo/list-gr00t-$preset.txt"
  tail -n 1 "$demo/list-gr00t-$preset.txt"
done
echo
echo "== duquant pack demo/gr00t_lerobot -o demo/pack-gr00t --preset gr00t-llm-dit-mlp"
"$dq" pack "$demo/gr00t_lerobot" -o "$demo/pack-gr00t" --preset gr00t-llm-dit-mlp --force > "$demo/pack-gr00t.log"
tail -n 4 "$demo/pack-gr00t.log"
echo "== duquant verify demo/pack-gr00t --checkpoint demo/gr00t_lerobot, then demo/gr00t_synth (the same weights in NVIDIA's layout)"
"$dq" verify "$demo/pack-gr00t" --checkpoint "$demo/gr00t_lerobot" --strict --quiet | tail -n 1
"$dq" verify "$demo/pack-gr00t" --checkpoint "$demo/gr00t_synth" --strict --quiet | tail -n 1
