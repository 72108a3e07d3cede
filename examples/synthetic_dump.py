#!/usr/bin/env python3
"""Write a synthetic calibration dump for the selected linears of a checkpoint.

For trying `duquant pack --calib` without a policy at hand (the demo uses it): per layer, standard
normal activations whose channels have random scales in [0.5, 2] and a few outlier channels 30x
larger, `--calls` calls of `--rows` tokens, written with DumpWriter (examples/dump_activations.py).
Layers reading the same input get the same activations (q/k/v, gate/up), as in a real model.

    python3 synthetic_dump.py CKPT.safetensors OUT.h5 [--scope S] [--calls 8] [--rows 256]

Only single-file checkpoints; needs numpy and h5py.
"""

import argparse
import json
import os
import re
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dump_activations import DumpWriter, select_layers  # noqa: E402


def input_key(name: str) -> str:
    """Layers with the same key read the same input."""
    return re.sub(r"\.(self_attn\.[qkv]_proj|mlp\.(gate|up)_proj)$", lambda m: ".qkv" if "attn" in m.group(1) else ".gate_up",
                  name)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("output")
    p.add_argument("--scope", default="")
    p.add_argument("--calls", type=int, default=8)
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--outliers", type=int, default=2, help="outlier channels per input (x30)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    with open(a.checkpoint, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    names = [k[: -len(".weight")] for k, v in header.items()
             if k.endswith(".weight") and isinstance(v, dict) and len(v["shape"]) == 2]
    layers = select_layers(names, scope=a.scope)
    if not layers:
        print(f"no layer selected with scope {a.scope!r}", file=sys.stderr)
        return 1
    rng = np.random.default_rng(a.seed)
    scales = {}
    with DumpWriter(a.output, overwrite=True) as writer:
        for call in range(a.calls):
            cache = {}
            for name in layers:
                width = header[name + ".weight"]["shape"][1]
                key = input_key(name)
                if key not in scales:
                    s = rng.uniform(0.5, 2.0, size=width).astype(np.float32)
                    s[rng.choice(width, min(a.outliers, width), replace=False)] *= 30
                    scales[key] = s
                if key not in cache:
                    cache[key] = rng.standard_normal((a.rows, width), dtype=np.float32) * scales[key]
                writer.add(name, cache[key])
    print(f"{a.output}: {len(layers)} layers, {a.calls} calls of {a.rows} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
