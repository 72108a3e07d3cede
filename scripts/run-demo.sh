#!/usr/bin/env bash
# The main job on the embedded default: installs what is missing, builds, writes the synthetic
# pi0.5-shaped checkpoint (`duquant synth`), lists what every preset selects from it, and packs
# its language model and action expert (preset openpi-full) into demo/pack, verifies the pack
# against the checkpoint and writes its inspection report (demo/report.html).
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
echo "   ... (all of it in demo/inspect.txt; the chart in demo/report.html)"
