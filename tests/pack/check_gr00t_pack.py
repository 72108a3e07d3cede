#!/usr/bin/env python3
"""GR00T N1.5 packs as the GR00T port loads them (numpy only).

Usage: check_gr00t_pack.py DUQUANT_BINARY WORK_DIR

1. `duquant synth --model gr00t-n1.5 --factor 16` twice: NVIDIA's layout (sharded, with an index)
   and LeRobot's (every name under `_groot_model.`).
2. `duquant pack --preset gr00t-llm-dit-mlp` (116 layers) and `--preset gr00t-llm-dit` (180) of the
   LeRobot copy, and `gr00t-llm-dit-mlp` of the NVIDIA one.
3. Each pack: exactly the expected layers, named as the port names its modules (no prefix; never
   the vision tower, vl_self_attention or the category-specific parts); every npz read with
   numpy.load(allow_pickle=False) with the port's members and meta; the port's forward pass
   (restore mode, perm and block rotations, output rotations restored, bias added) on a random
   input, with the checkpoint's weight and bias read from the stored (prefixed) names, equals
   x @ W.T + b; `L.bias` in quantized.safetensors equals the checkpoint's bias; both layouts give
   byte-identical npz files; `duquant verify --checkpoint` passes.
Exit 0: all checks passed; 1: a check failed; 77: numpy unusable here (CTest: skipped).
"""
import json
import os
import re
import shutil
import struct
import subprocess
import sys

try:
    import numpy as np
except Exception as e:  # pragma: no cover
    print(f"SKIP: numpy is not importable ({e})")
    sys.exit(77)

FAILURES = []
PREFIX = "_groot_model."
LM = re.compile(r"^backbone\.eagle_model\.language_model\.model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)$")
DIT_FF = re.compile(r"^action_head\.model\.transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)$")
DIT_ATTN = re.compile(r"^action_head\.model\.transformer_blocks\.\d+\.attn1\.(to_q|to_k|to_v|to_out\.0)$")


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("FAIL:", what)


def run(args):
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        print("command failed:", args, r.stdout[-2000:], r.stderr[-2000:])
        sys.exit(1)
    return r


class Checkpoint:
    """A sharded safetensors checkpoint read by hand: header, offsets, BF16/F32 data."""

    def __init__(self, folder):
        with open(os.path.join(folder, "model.safetensors.index.json")) as f:
            self.where = json.load(f)["weight_map"]
        self.folder = folder
        self.headers = {}

    def _header(self, shard):
        if shard not in self.headers:
            with open(os.path.join(self.folder, shard), "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                self.headers[shard] = (json.loads(f.read(n)), 8 + n)
        return self.headers[shard]

    def has(self, name):
        return name in self.where

    def tensor(self, name):
        shard = self.where[name]
        header, base = self._header(shard)
        t = header[name]
        start, end = t["data_offsets"]
        with open(os.path.join(self.folder, shard), "rb") as f:
            f.seek(base + start)
            raw = f.read(end - start)
        if t["dtype"] == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(raw, dtype="<f4")
        return a.reshape(t["shape"]).astype(np.float64)


def quantized_tensors(pack):
    """name -> (dtype, shape, bytes) of quantized.safetensors (one file or shards)."""
    files = [f for f in sorted(os.listdir(pack)) if f.startswith("quantized") and f.endswith(".safetensors")]
    out = {}
    for file in files:
        with open(os.path.join(pack, file), "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
            data = f.read()
        header.pop("__metadata__", None)
        for k, t in header.items():
            s, e = t["data_offsets"]
            out[k] = (t["dtype"], t["shape"], data[s:e])
    return out


def forward(npz, x):
    """The port's forward pass without quantization (reference section 4, row_rot restore)."""
    meta = json.loads(str(npz["meta"]))
    n_in, b = meta["in_features"], meta["block_size"]
    xt = x[:, npz["perm"]] if meta["enable_permute"] else x.copy()
    for blk in npz["R_in_blocks"]:
        s = slice(blk * b, min((blk + 1) * b, n_in))
        xt[:, s] = xt[:, s] @ npz["Rin_%d" % blk].astype(np.float64)
    return meta, xt


def check_pack(pack, ckpt, stored_prefix, expected):
    names = sorted(f[: -len(".npz")] for f in os.listdir(pack) if f.endswith(".npz"))
    check(names == sorted(expected), "%s: %d npz files, expected %d (extra %s, missing %s)" % (
        pack, len(names), len(expected), sorted(set(names) - set(expected))[:3], sorted(set(expected) - set(names))[:3]))
    with open(os.path.join(pack, "manifest.json")) as f:
        manifest = json.load(f)
    check(manifest["config"]["runtime"] == "gr00t", "%s: runtime %s" % (pack, manifest["config"]["runtime"]))
    check(manifest["checkpoint"]["names"]["checkpoint_prefix"] == stored_prefix,
          "%s: names %s" % (pack, manifest["checkpoint"]["names"]))
    q = quantized_tensors(pack)
    rng = np.random.default_rng(5)
    worst = 0.0
    for name in names:
        npz = np.load(os.path.join(pack, name + ".npz"), allow_pickle=False)
        w = ckpt.tensor(stored_prefix + name + ".weight")
        bias_name = stored_prefix + name + ".bias"
        b = ckpt.tensor(bias_name) if ckpt.has(bias_name) else np.zeros(w.shape[0])
        if DIT_FF.match(name) or DIT_ATTN.match(name):
            check(ckpt.has(bias_name), "%s: the DiT linear has no bias in the checkpoint" % name)
        meta = json.loads(str(npz["meta"]))
        check(set(meta) == {"in_features", "out_features", "block_size", "block_out_size", "enable_permute",
                            "lambda_smooth"}, "%s: meta keys %s" % (name, sorted(meta)))
        check((meta["out_features"], meta["in_features"]) == w.shape, "%s: meta shape" % name)
        x = rng.standard_normal((3, w.shape[1]))
        meta, xt = forward(npz, x)
        wt = w[:, npz["perm"]] if meta["enable_permute"] else w.copy()
        bi = meta["block_size"]
        for blk in npz["R_in_blocks"]:
            s = slice(blk * bi, min((blk + 1) * bi, w.shape[1]))
            wt[:, s] = wt[:, s] @ npz["Rin_%d" % blk].astype(np.float64)
        bo = meta["block_out_size"]
        for blk in npz["R_out_blocks"]:
            s = slice(blk * bo, min((blk + 1) * bo, w.shape[0]))
            wt[s, :] = npz["Rout_%d" % blk].astype(np.float64) @ wt[s, :]
        y = xt @ wt.T
        for blk in npz["R_out_blocks"]:  # restore
            s = slice(blk * bo, min((blk + 1) * bo, w.shape[0]))
            y[:, s] = y[:, s] @ npz["Rout_%d" % blk].astype(np.float64)
        y += b
        ref = x @ w.T + b
        err = float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))
        worst = max(worst, err)
        check(err < 1e-5, "%s: the port's forward pass differs from x @ W.T + b by %.3g" % (name, err))
        if ckpt.has(bias_name):
            dt, shape, raw = q.get(name + ".bias", (None, None, b""))
            check(dt == "BF16" and shape == [w.shape[0]], "%s.bias in quantized.safetensors: %s %s" % (name, dt, shape))
            got = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
            check(got.shape == b.shape and np.array_equal(got, b), "%s.bias differs from the checkpoint's" % name)
    print("%s: %d layers, the port's forward pass within %.2g of x @ W.T + b" % (os.path.basename(pack), len(names), worst))
    return names


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 1
    binary, work = sys.argv[1:3]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    nvidia, lerobot = os.path.join(work, "gr00t"), os.path.join(work, "gr00t-lerobot")
    run([binary, "synth", "--model", "gr00t-n1.5", "--factor", "16", "-o", nvidia])
    run([binary, "synth", "--model", "gr00t-n1.5", "--factor", "16", "--prefix", PREFIX, "-o", lerobot])
    with open(os.path.join(nvidia, "model.safetensors.index.json")) as f:
        stored = list(json.load(f)["weight_map"])
    modules = [n[: -len(".weight")] for n in stored if n.endswith(".weight")]
    mlp = [m for m in modules if LM.match(m) or DIT_FF.match(m)]
    both = [m for m in modules if LM.match(m) or DIT_FF.match(m) or DIT_ATTN.match(m)]
    check(len(mlp) == 116 and len(both) == 180, "expected sets: %d and %d" % (len(mlp), len(both)))

    for tag, ckpt_dir, preset, expected, prefix in (
            ("mlp-lerobot", lerobot, "gr00t-llm-dit-mlp", mlp, PREFIX),
            ("all-lerobot", lerobot, "gr00t-llm-dit", both, PREFIX),
            ("mlp-nvidia", nvidia, "gr00t-llm-dit-mlp", mlp, "")):
        pack = os.path.join(work, tag)
        r = run([binary, "pack", ckpt_dir, "-o", pack, "--preset", preset])
        check(("packed %d layers" % len(expected)) in r.stdout, "%s: %s" % (tag, r.stdout[-300:]))
        if prefix:
            check("GR00T N1.5 in LeRobot's layout" in r.stderr, "%s: no notice of the layout: %s" % (tag, r.stderr))
        check_pack(pack, Checkpoint(ckpt_dir), prefix, expected)
        v = subprocess.run([binary, "verify", pack, "--checkpoint", ckpt_dir, "--strict"], capture_output=True, text=True)
        check(v.returncode == 0, "%s: verify exit %d: %s" % (tag, v.returncode, v.stdout[-1500:]))
    for name in mlp:  # the layout does not change a byte of what the port loads
        with open(os.path.join(work, "mlp-lerobot", name + ".npz"), "rb") as a, \
                open(os.path.join(work, "mlp-nvidia", name + ".npz"), "rb") as b:
            check(a.read() == b.read(), "%s.npz differs between the two layouts" % name)
    if FAILURES:
        print("%d checks failed" % len(FAILURES))
        return 1
    shutil.rmtree(work, ignore_errors=True)
    print("check_gr00t_pack: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
