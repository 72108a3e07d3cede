#!/usr/bin/env bash
# Peak memory of `duquant pack --calib` as the dump grows: dumps of increasing size for the 14
# action-expert linears of the fixture checkpoint (tests' pi05_tiny.safetensors, layers of 64 to
# 256 input features, a few hundred KB of weights), written with examples/dump_activations.py's
# DumpWriter, each packed with --calib-steps equal to its calls per layer (every call is read).
# Memory should stay flat: one call plus the layer set, whatever the dump's size. Prints a table
# of dump size, calls per layer, wall time and peak RSS; the first row packs without a dump.
#   benchmarks/calib_memory.sh [BUILD_DIR] [WORK_DIR] [SIZES_MB]
#     SIZES_MB: dump sizes in MB, space-separated (default "256 1024 2048")
#   environment: PYTHON (default /usr/bin/python3, needs numpy and h5py), ROWS (tokens per call,
#   default 4096), KEEP=1 keeps the dumps (default: each is deleted after its run)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
work=${2:-$root/build/bench}/calib-memory
sizes=${3:-256 1024 2048}
python=${PYTHON:-/usr/bin/python3}
rows=${ROWS:-4096}
dq="$build/duquant"
ckpt="$root/../shared/fixtures/pi05_tiny.safetensors"
scope=paligemma_with_expert.gemma_expert.model.
[ -x "$dq" ] || { echo "no $dq (build first)"; exit 1; }
[ -f "$ckpt" ] || { echo "no fixture checkpoint $ckpt"; exit 1; }
"$python" -c "import numpy, h5py" || { echo "$python lacks numpy or h5py (set PYTHON)"; exit 1; }
mkdir -p "$work"

# Writes a dump of about SIZE_MB for the selected layers: `calls` calls of `rows` float32 rows per
# layer. Each layer draws one random pool (outlier channels included) once; a call is a contiguous
# slice of it at a call-dependent offset, so generation costs little more than the write.
gen() {  # gen OUT SIZE_MB -> prints calls per layer
  "$python" - "$root/examples" "$ckpt" "$scope" "$1" "$2" "$rows" <<'EOF'
import json, struct, sys
import numpy as np
examples, ckpt, scope, out, size_mb, rows = sys.argv[1:7]
sys.path.insert(0, examples)
from dump_activations import DumpWriter, select_layers
rows = int(rows)
with open(ckpt, "rb") as f:
    header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
names = [k[:-7] for k, v in header.items() if k.endswith(".weight") and len(v["shape"]) == 2]
layers = select_layers(names, scope=scope)
widths = {n: header[n + ".weight"]["shape"][1] for n in layers}
per_call = rows * 4 * sum(widths.values())
calls = max(1, round(float(size_mb) * 1e6 / per_call))
rng = np.random.default_rng(0)
pools = {}
for n, w in widths.items():
    scale = rng.uniform(0.5, 2.0, size=w).astype(np.float32)
    scale[rng.choice(w, 2, replace=False)] *= 30
    pools[n] = rng.standard_normal((2 * rows, w), dtype=np.float32) * scale
with DumpWriter(out, max_tokens=rows, overwrite=True) as wr:
    for c in range(calls):
        for n in layers:
            off = (c * 977) % rows
            wr.add(n, pools[n][off:off + rows])
print(calls)
EOF
}

printf "%-10s %10s %10s %8s %10s %14s\n" dump "size MB" calls/layer rows "wall s" "peak RSS MB"
run() {  # run LABEL DUMP_OR_EMPTY CALLS
  local label=$1 dump=$2 calls=$3 out="$work/pack" args=()
  [ -n "$dump" ] && args=(--calib "$dump" --calib-steps "$calls")
  rm -rf "$out"
  /usr/bin/time -f "%e %M" -o "$work/time.txt" \
    "$dq" pack "$ckpt" -o "$out" --scope "$scope" "${args[@]}" > "$work/pack-$label.log" 2>&1 \
    || { echo "pack failed:"; tail -n 5 "$work/pack-$label.log"; exit 1; }
  read -r wall rss < "$work/time.txt"
  local mb=0
  [ -n "$dump" ] && mb=$(( $(stat -c %s "$dump") / 1000000 ))
  printf "%-10s %10s %10s %8s %10s %14s\n" "$label" "$mb" "$calls" "$([ -n "$dump" ] && echo "$rows" || echo -)" \
    "$wall" "$(( rss / 1024 ))"
}
run none "" 0
for size in $sizes; do
  dump="$work/calib-${size}MB.h5"
  calls=$(gen "$dump" "$size")
  run "${size}MB" "$dump" "$calls"
  [ "${KEEP:-0}" = 1 ] || rm -f "$dump"
done
