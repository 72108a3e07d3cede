#!/usr/bin/env python3
"""Python interop check of `duquant bake`: a baked checkpoint read with numpy, as any stack would.

Usage: check_bake_python.py DUQUANT_BINARY FIXTURES_DIR WORK_DIR

Packs FIXTURES_DIR/pi05_tiny.safetensors (the action expert, row_rot restore; the vision tower, whose
layers have biases, with row_rot propagate and 0), bakes each with --dtype f32, then parses the baked
file and the pack's quantized.safetensors by hand (8-byte little-endian header length, JSON header,
data) and checks, in float64:
  * every packed layer: test_x @ W_baked.T + b_baked equals the pack's test_y_q (its contract output
    for test_x) within 1e-5 relative;
  * every other tensor: the input's name, dtype, shape and bytes, in the input's order;
  * the metadata: duquant.baked, the pack's name, the manifest's xxh128 is 32 hex digits.
Exit 0: all checks passed; 1: a check failed; 77: python or numpy unusable here (CTest: skipped).
"""
import json
import os
import shutil
import struct
import subprocess
import sys

try:
    import numpy as np
except Exception as e:  # pragma: no cover - depends on the machine
    print(f"SKIP: numpy is not importable ({e})")
    sys.exit(77)

FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print(f"FAIL: {what}")


def read_safetensors(path):
    """Returns (metadata, [(name, dtype, shape, raw bytes)] in data order)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    base = 8 + n
    tensors = []
    for name, info in header.items():
        b, e = info["data_offsets"]
        tensors.append((name, info["dtype"], tuple(info["shape"]), raw[base + b : base + e], b))
    tensors.sort(key=lambda t: t[4])
    return meta, [t[:4] for t in tensors]


def as_f64(dtype, shape, data):
    if dtype == "F32":
        return np.frombuffer(data, "<f4").astype(np.float64).reshape(shape)
    if dtype == "BF16":
        u = np.frombuffer(data, "<u2").astype(np.uint32) << 16
        return u.view(np.float32).astype(np.float64).reshape(shape)
    if dtype == "F16":
        return np.frombuffer(data, "<f2").astype(np.float64).reshape(shape)
    raise ValueError(dtype)


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stdout, r.stderr)
        raise SystemExit(f"FAIL: {' '.join(cmd)} exited {r.returncode}")
    return r.stdout


def check_bake(binary, ckpt, work, tag, scope, row_rot):
    pack = os.path.join(work, f"pack-{tag}")
    baked = os.path.join(work, f"baked-{tag}.safetensors")
    run([binary, "pack", ckpt, "-o", pack, "--scope", scope, "--row-rot", row_rot])
    out = run([binary, "bake", pack, "--checkpoint", ckpt, "-o", baked, "--dtype", "f32"])
    check("A8 activation contract is not represented" in out, f"{tag}: the CLI states that A8 is not represented")
    with open(os.path.join(pack, "manifest.json")) as f:
        manifest = json.load(f)
    layers = [l["name"] for l in manifest["layers"]]
    _, qt = read_safetensors(os.path.join(pack, "quantized.safetensors"))
    q = {name: (dtype, shape, data) for name, dtype, shape, data in qt}
    in_meta, src = read_safetensors(ckpt)
    meta, dst = read_safetensors(baked)
    check(meta.get("duquant.baked") == "1", f"{tag}: metadata duquant.baked")
    check(meta.get("duquant.pack") == os.path.basename(pack), f"{tag}: metadata duquant.pack {meta.get('duquant.pack')}")
    check(len(meta.get("duquant.pack_manifest_xxh128", "")) == 32, f"{tag}: metadata manifest digest")
    check("not quantized" in meta.get("duquant.activations", ""), f"{tag}: metadata duquant.activations")
    check(all(meta.get(k) == v for k, v in in_meta.items()), f"{tag}: the input's metadata kept")
    check([t[0] for t in src] == [t[0] for t in dst], f"{tag}: tensor names and order")
    baked_t = {name: (dtype, shape, data) for name, dtype, shape, data in dst}
    changed = set()
    for name in layers:
        changed.add(name + ".weight")
        if row_rot == "propagate" and (name + ".bias") in baked_t:
            changed.add(name + ".bias")
        wd, ws, wb = baked_t[name + ".weight"]
        check(wd == "F32", f"{name}: baked weight dtype {wd}")
        W = as_f64(wd, ws, wb)
        b = np.zeros(ws[0])
        if (name + ".bias") in baked_t:
            bd, bs, bb = baked_t[name + ".bias"]
            b = as_f64(bd, bs, bb)
        x = as_f64(*q[name + ".test_x"])
        y_q = as_f64(*q[name + ".test_y_q"])
        y = x @ W.T + b
        rel = np.linalg.norm(y - y_q) / np.linalg.norm(y_q)
        check(rel < 1e-5, f"{tag} {name}: x @ W_baked.T + b vs test_y_q rel {rel:.3e}")
    for (name, dtype, shape, data), (_, dtype2, shape2, data2) in zip(src, dst):
        if name in changed:
            continue
        check(dtype == dtype2 and shape == shape2 and data == data2, f"{tag}: {name} copied byte for byte")
    print(f"{tag}: {len(layers)} layers checked, {len(src) - len(changed)} tensors byte-identical")


def main():
    if len(sys.argv) != 4:
        print(__doc__)
        return 2
    binary, fixtures, work = sys.argv[1:]
    ckpt = os.path.join(fixtures, "pi05_tiny.safetensors")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    check_bake(binary, ckpt, work, "expert-restore", "paligemma_with_expert.gemma_expert.model.", "restore")
    vision = "paligemma_with_expert.paligemma.model.vision_tower."
    check_bake(binary, ckpt, work, "vision-propagate", vision, "propagate")
    check_bake(binary, ckpt, work, "vision-off", vision, "0")
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
