#!/usr/bin/env bash
# The existing Python runtime's own packer against `duquant pack`, on the same layers of the same
# full-size synthetic pi0.5, in one run: the 7 linear layers of the action expert's layer 0
# (q/k/v/o_proj, gate/up/down_proj; 1024 and 4096 wide), block 16, permutation on, lambda 0.15, W4.
#   benchmarks/pack_vs_python.sh RUNTIME_DIR [BUILD_DIR] [WORK_DIR]
# RUNTIME_DIR holds the runtime's packer as its users have it, duquant_preprocess.py (fetched by
# the user from the runtime's repository, src/openpi/models_pytorch/; this repository does not
# carry it). PYTHON (default python3) must import numpy and torch. The Python side is timed from
# the weight in memory as a float32 tensor to the layer's pack and forward weights and scales
# (pack_weight, then transform_weight_for_forward: what the runtime computes per layer when it
# packs); duquant is timed as a whole process (start, reading, packing, writing, syncing). Both run
# one after the other on an otherwise idle machine; the ratio is printed last.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 RUNTIME_DIR [BUILD_DIR] [WORK_DIR]"; exit 2; }
runtime=$(cd "$1" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
build=${2:-$root/build}
work=${3:-$root/build/bench}
python=${PYTHON:-python3}
dq="$build/duquant"
mkdir -p "$work"
ckpt="$work/pi05_full.safetensors"
[ -f "$runtime/duquant_preprocess.py" ] || { echo "$runtime/duquant_preprocess.py not found"; exit 2; }
"$python" -c "import numpy, torch" || { echo "$python cannot import numpy and torch (set PYTHON)"; exit 2; }
[ -f "$ckpt" ] || "$dq" synth -o "$ckpt" --factor 1
prefix=paligemma_with_expert.gemma_expert.model.layers.0
layers="$prefix.self_attn.q_proj,$prefix.self_attn.k_proj,$prefix.self_attn.v_proj,$prefix.self_attn.o_proj,$prefix.mlp.gate_proj,$prefix.mlp.up_proj,$prefix.mlp.down_proj"
cat "$ckpt" > /dev/null  # warm page cache for both

py_seconds=$("$python" - "$runtime" "$ckpt" "$layers" <<'PY'
import json, struct, sys, time
import numpy as np
import torch
sys.path.insert(0, sys.argv[1])
import duquant_preprocess as dp

def read_weight(path, name):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        t = header[name + ".weight"]
        b0, b1 = t["data_offsets"]
        f.seek(8 + n + b0)
        raw = np.frombuffer(f.read(b1 - b0), dtype=np.uint16)
    assert t["dtype"] == "BF16", t["dtype"]
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(t["shape"])

total = 0.0
for name in sys.argv[3].split(","):
    W = torch.from_numpy(read_weight(sys.argv[2], name).copy())
    start = time.perf_counter()
    pack = dp.pack_weight(W, block_size=16, block_out_size=16, enable_permute=True, lambda_smooth=0.15)
    dp.transform_weight_for_forward(W, pack, weight_bits=4)
    seconds = time.perf_counter() - start
    total += seconds
    print(f"  python {name} {tuple(W.shape)}: {seconds:.2f} s", file=sys.stderr)
print(f"{total:.3f}")
PY
)

out="$work/pack-vs-python"
rm -rf "$out"
start=$(date +%s.%N)
"$dq" pack "$ckpt" -o "$out" --preset openpi-dit --layers "$layers" > "$work/pack-vs-python.log"
end=$(date +%s.%N)
dq_seconds=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
echo "python packer (duquant_preprocess.pack_weight + transform_weight_for_forward), 7 layers: $py_seconds s"
echo "duquant pack (whole process), 7 layers: $dq_seconds s"
awk -v p="$py_seconds" -v d="$dq_seconds" 'BEGIN { printf "ratio: %.0fx\n", p / d }'
