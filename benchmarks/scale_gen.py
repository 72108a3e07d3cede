#!/usr/bin/env python3
"""Writes a checkpoint of N tiny linear layers for benchmarks/scale.sh (pure Python, no numpy).

scale_gen.py N OUT_DIR [--shards S] [--out O] [--in I]

OUT_DIR gets:
  ckpt/model-0000K-of-0000S.safetensors and ckpt/model.safetensors.index.json: N linear layers
      'blocks.<i//4>.attn.<q|k|v|o>_proj' with an F32 weight [O, I] (and nothing else), split over
      S shards in order; the index names every tensor (N entries)
  config.json: a --config {"config": {"wbits": {<every layer>: 4 or 8}}} (one entry per layer)
  calib.safetensors: a dump of one call '<layer>.x_0000' [4, I] F32 per layer
"""
import argparse
import json
import os
import random
import struct

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")


def layer_name(i):
    return f"blocks.{i // 4}.attn.{PROJ[i % 4]}"


def write_safetensors(path, tensors):
    """tensors: list of (name, shape, blob); F32, stored in order."""
    header = {}
    offset = 0
    for name, shape, blob in tensors:
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, _, blob in tensors:
            f.write(blob)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("out_dir")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--out", type=int, default=4)
    ap.add_argument("--in", dest="inp", type=int, default=16)
    a = ap.parse_args()
    rng = random.Random(0)
    # A few distinct weights, cycled: the data is not what is measured.
    blobs = [struct.pack(f"<{a.out * a.inp}f", *[rng.gauss(0.0, 0.05) for _ in range(a.out * a.inp)]) for _ in range(7)]
    calls = [struct.pack(f"<{4 * a.inp}f", *[rng.gauss(0.0, 1.0) for _ in range(4 * a.inp)]) for _ in range(5)]
    names = [layer_name(i) for i in range(a.n)]
    ckpt = os.path.join(a.out_dir, "ckpt")
    os.makedirs(ckpt, exist_ok=True)
    shards = max(1, min(a.shards, a.n))
    weight_map = {}
    total = 0
    per = (a.n + shards - 1) // shards
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = [(names[i] + ".weight", (a.out, a.inp), blobs[i % len(blobs)]) for i in range(s * per, min(a.n, (s + 1) * per))]
        write_safetensors(os.path.join(ckpt, fname), part)
        for name, _, blob in part:
            weight_map[name] = fname
            total += len(blob)
    with open(os.path.join(ckpt, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(a.out_dir, "config.json"), "w") as f:
        json.dump({"config": {"wbits": {n: (8 if i % 3 == 0 else 4) for i, n in enumerate(names)}}}, f, indent=1)
    write_safetensors(os.path.join(a.out_dir, "calib.safetensors"),
                      [(n + ".x_0000", (4, a.inp), calls[i % len(calls)]) for i, n in enumerate(names)])


if __name__ == "__main__":
    main()
