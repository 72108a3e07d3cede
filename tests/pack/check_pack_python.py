#!/usr/bin/env python3
"""Python interop check of `duquant pack`: reads a pack the way the OpenPI runtime (numpy) would.

Usage: check_pack_python.py DUQUANT_BINARY FIXTURES_DIR WORK_DIR

Runs the binary on FIXTURES_DIR/pi05_tiny.safetensors (preset openpi-dit, the runtime's defaults,
4-bit; and block 32 / block_out 16 / 8-bit), then checks every file of each pack with numpy only:
  * every npz with numpy.load(allow_pickle=False): member names and order, dtypes, shapes, meta
    (reference section 2); perm a permutation; rotations orthogonal within 1e-5; member set, meta
    and perm equal to the runtime's reference pack (openpi-pack-b16 / openpi-pack-b32-out16);
  * quantized.safetensors parsed by hand (8-byte length, JSON header, offsets) and, when the
    `safetensors` package is importable, with it; nibbles unpacked; codes*scales reconstruct
    W_t = Rout.(W[:,perm].Rin) (computed here from the checkpoint's BF16 weight and the npz
    rotations) within half a step per element (clamped elements: code at the bound);
  * manifest sizes against the files, and its quality figures recomputed here within 1e-3 relative;
  * the conformance vectors of every layer (also of two vision-tower packs with BF16 biases, row_rot
    propagate and 0): test_y_fp == test_x @ W.T + b from the checkpoint, test_y_q from the unpacked
    codes, scales, perm and rotations of quantized.safetensors, in float64 within 1e-5 relative;
    test_x's first values pinned; the manifest's conformance figure recomputed.
Exit 0: all checks passed; 1: a check failed; 77: python or numpy unusable here (CTest: skipped).
"""
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import zipfile

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
    return cond


def read_safetensors(path):
    """Returns (header dict without __metadata__, metadata, {name: array}) parsed by hand."""
    with open(path, "rb") as f:
        raw = f.read()
    check(len(raw) >= 8, f"{path}: shorter than 8 bytes")
    (n,) = struct.unpack("<Q", raw[:8])
    check(8 + n <= len(raw), f"{path}: header length {n} beyond the file")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    dtypes = {"U8": np.uint8, "I8": np.int8, "F32": "<f4", "I64": "<i8", "BF16": "<u2", "F16": "<f2"}
    data = raw[8 + n:]
    arrays = {}
    spans = []
    for name, info in header.items():
        begin, end = info["data_offsets"]
        spans.append((begin, end, name))
        dt = np.dtype(dtypes[info["dtype"]])
        count = int(np.prod(info["shape"])) if info["shape"] else 1
        check(end - begin == count * dt.itemsize, f"{path}: {name}: {end - begin} bytes for shape {info['shape']}")
        arrays[name] = np.frombuffer(data[begin:end], dtype=dt).reshape(info["shape"])
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        check(begin == pos, f"{path}: {name} starts at {begin}, expected {pos} (gap or overlap)")
        pos = end
    check(pos == len(data), f"{path}: tensors end at {pos}, data holds {len(data)} bytes")
    return header, meta, arrays, raw


def bf16_to_f32(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


def load_checkpoint(path):
    header, _, arrays, _ = read_safetensors(path)
    out = {}
    for name, info in header.items():
        a = arrays[name]
        if info["dtype"] == "BF16":
            a = bf16_to_f32(a)
        out[name] = (info["dtype"], a)
    return out


def expected_member_order(nb, nbo, permute):
    names = ["weight_scale", "meta"] + (["perm"] if permute else [])
    names += [f"Rin_{b}" for b in range(nb)] + ["R_in_blocks"]
    names += [f"Rout_{b}" for b in range(nbo)] + ["R_out_blocks"]
    return names


def stacked(blocks, width):
    out = np.tile(np.eye(width, dtype=np.float32), (len(blocks), 1, 1))
    for k, r in enumerate(blocks):
        out[k, :r.shape[0], :r.shape[1]] = r
    return out


def xxh128_file(path):
    """xxh128 hex of a file when the xxhash package is importable, else None (sizes are still checked)."""
    try:
        import xxhash
    except ImportError:
        return None
    with open(path, "rb") as f:
        return xxhash.xxh3_128_hexdigest(f.read())


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def check_pack(binary, fixtures, work, label, extra_args, block, block_out, wbits, reference):
    out = os.path.join(work, label)
    shutil.rmtree(out, ignore_errors=True)
    ckpt_path = os.path.join(fixtures, "pi05_tiny.safetensors")
    cmd = [binary, "pack", ckpt_path, "-o", out, "--preset", "openpi-dit"] + extra_args
    run = subprocess.run(cmd, capture_output=True, text=True)
    if not check(run.returncode == 0, f"{label}: {' '.join(cmd)} exited {run.returncode}: {run.stderr}"):
        return
    ckpt = load_checkpoint(ckpt_path)
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    layers = manifest["layers"]
    check(len(layers) == 14, f"{label}: {len(layers)} layers in the manifest, expected 14")
    qmax = 2 ** (wbits - 1) - 1

    # quantized.safetensors (one shard at this size), by hand and with the safetensors package.
    qpath = os.path.join(out, "quantized.safetensors")
    qheader, qmeta, q, qraw = read_safetensors(qpath)
    check(qmeta.get("duquant.format") == "duquant-pack" and qmeta.get("duquant.format_version") == "1",
          f"{label}: quantized.safetensors metadata {qmeta}")
    try:
        from safetensors.numpy import load_file  # optional
        st = load_file(qpath)
        check(sorted(st) == sorted(q), f"{label}: safetensors package sees other tensors")
        for k in q:
            check(st[k].dtype == q[k].dtype and np.array_equal(st[k], q[k]), f"{label}: {k} differs via safetensors")
        print(f"{label}: safetensors package read {len(st)} tensors, equal to the hand parser")
    except ImportError:
        print(f"{label}: safetensors package not importable; hand parser only")
    expected_tensors = 0

    files = {f["name"]: f for f in manifest["files"]}
    check(set(files) == {"quantized.safetensors"}, f"{label}: manifest files {sorted(files)}")
    check(files["quantized.safetensors"]["size"] == os.path.getsize(qpath), f"{label}: quantized size in manifest")
    digest = xxh128_file(qpath)
    check(digest in (None, files["quantized.safetensors"]["xxh128"]), f"{label}: quantized xxh128 in manifest")
    print(f"{label}: xxh128 " + ("checked with the xxhash package" if digest else "not checked (no xxhash package); sizes only"))

    worst_step = 0.0      # max over unclamped elements of |q*s - W_t| / s (must be <= 0.5 + tol)
    worst_abs = 0.0       # max |q*s - W_t| over unclamped elements
    clamped = 0
    code_mismatch = 0
    total_codes = 0
    worst_orth = 0.0
    worst_ws = 0.0
    worst_quality = 0.0
    dq_sqnr, rtn_sqnr = [], []
    for entry in layers:
        name = entry["name"]
        O, I = entry["shape"]
        check(entry["wbits"] == wbits, f"{name}: wbits {entry['wbits']}")
        npz_name = entry["npz"]["name"]
        npz_path = os.path.join(out, npz_name)
        check(entry["npz"]["size"] == os.path.getsize(npz_path), f"{name}: npz size in manifest")
        digest = xxh128_file(npz_path)
        check(digest in (None, entry["npz"]["xxh128"]), f"{name}: npz xxh128 in manifest")
        nb, nbo = -(-I // block), -(-O // block_out)
        z = np.load(npz_path, allow_pickle=False)
        with zipfile.ZipFile(npz_path) as zf:
            order = [n[:-4] for n in zf.namelist()]
            check(all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist()), f"{name}: compressed member")
        check(order == expected_member_order(nb, nbo, True), f"{name}: member order {order}")
        check(list(z.files) == order, f"{name}: numpy sees members {z.files}")
        ws = z["weight_scale"]
        check(ws.dtype.str == "<f4" and ws.shape == (O,), f"{name}: weight_scale {ws.dtype.str} {ws.shape}")
        meta = z["meta"]
        check(meta.dtype.kind == "U" and meta.dtype.byteorder in "<=" and meta.shape == (),
              f"{name}: meta {meta.dtype.str} {meta.shape}")
        m = json.loads(str(meta))
        check(list(m) == ["in_features", "out_features", "block_size", "block_out_size", "enable_permute", "lambda_smooth"],
              f"{name}: meta keys {list(m)}")
        check(m == {"in_features": I, "out_features": O, "block_size": block, "block_out_size": block_out,
                    "enable_permute": True, "lambda_smooth": 0.15}, f"{name}: meta {m}")
        check(type(m["enable_permute"]) is bool and type(m["lambda_smooth"]) is float, f"{name}: meta types")
        perm = z["perm"]
        check(perm.dtype.str == "<i8" and perm.shape == (I,), f"{name}: perm {perm.dtype.str} {perm.shape}")
        check(np.array_equal(np.sort(perm), np.arange(I)), f"{name}: perm is not a permutation")
        for key, n in (("R_in_blocks", nb), ("R_out_blocks", nbo)):
            a = z[key]
            check(a.dtype.str == "<i8" and np.array_equal(a, np.arange(n)), f"{name}: {key} = {a}")
        rin, rout = [], []
        for b in range(nb):
            r = z[f"Rin_{b}"]
            s = min(block, I - b * block)
            check(r.dtype.str == "<f4" and r.shape == (s, s), f"{name}: Rin_{b} {r.dtype.str} {r.shape}")
            rin.append(r)
        for b in range(nbo):
            r = z[f"Rout_{b}"]
            s = min(block_out, O - b * block_out)
            check(r.dtype.str == "<f4" and r.shape == (s, s), f"{name}: Rout_{b} {r.dtype.str} {r.shape}")
            rout.append(r)
        for r in rin + rout:
            e = float(np.abs(r.astype(np.float64).T @ r.astype(np.float64) - np.eye(r.shape[0])).max())
            worst_orth = max(worst_orth, e)
            check(e <= 1e-5, f"{name}: rotation not orthogonal ({e:.3g})")

        # The runtime's own pack of this layer.
        ref = np.load(os.path.join(fixtures, reference, npz_name), allow_pickle=False)
        check(set(ref.files) == set(z.files), f"{name}: member set differs from {reference}")
        check(str(ref["meta"]) == str(meta), f"{name}: meta text {str(meta)!r} != reference {str(ref['meta'])!r}")
        check(np.array_equal(ref["perm"], perm), f"{name}: perm differs from {reference}")

        # W_t from the checkpoint's BF16 weight and the npz rotations, in float64.
        dtype, W = ckpt[name + ".weight"]
        check(dtype == "BF16" and W.shape == (O, I), f"{name}: checkpoint weight {dtype} {W.shape}")
        W = W.astype(np.float64)
        Wp = W[:, perm]
        Wt = np.empty_like(Wp)
        for b, r in enumerate(rin):
            Wt[:, b * block:b * block + r.shape[0]] = Wp[:, b * block:b * block + r.shape[0]] @ r.astype(np.float64)
        ref_ws = np.maximum(np.abs(Wt).max(axis=1), 1e-8) / 7.0
        worst_ws = max(worst_ws, float(np.max(np.abs(ws - ref_ws) / ref_ws)))
        check(np.allclose(ws, ref_ws, rtol=1e-5, atol=0), f"{name}: weight_scale != max|W_t row|/7")
        for b, r in enumerate(rout):
            rows = slice(b * block_out, b * block_out + r.shape[0])
            Wt[rows] = r.astype(np.float64) @ Wt[rows]

        # This layer's tensors in quantized.safetensors.
        qw, sc = q[name + ".qweight"], q[name + ".scales"].astype(np.float64)
        if wbits <= 4:
            check(qheader[name + ".qweight"]["dtype"] == "U8" and qw.shape == (O, (I + 1) // 2), f"{name}: qweight {qw.shape}")
            codes = np.empty((O, qw.shape[1] * 2), dtype=np.int64)
            codes[:, 0::2] = (qw & 0x0F).astype(np.int64) - 8
            codes[:, 1::2] = (qw >> 4).astype(np.int64) - 8
            codes = codes[:, :I]
        else:
            check(qheader[name + ".qweight"]["dtype"] == "I8" and qw.shape == (O, I), f"{name}: qweight {qw.shape}")
            codes = qw.astype(np.int64)
        check(codes.min() >= -qmax - 1 and codes.max() <= qmax, f"{name}: codes outside [{-qmax - 1}, {qmax}]")
        check(sc.shape == (O,) and np.all(sc > 0), f"{name}: scales {sc.shape}")
        check(np.array_equal(q[name + ".perm"], perm), f"{name}: safetensors perm != npz perm")
        check(np.array_equal(q[name + ".R_in"], stacked(rin, block)), f"{name}: R_in != npz Rin_* (identity padded)")
        check(np.array_equal(q[name + ".R_out"], stacked(rout, block_out)), f"{name}: R_out != npz Rout_*")
        expected_tensors += 5 + 3  # qweight, scales, perm, R_in, R_out; test_x, test_y_fp, test_y_q
        if entry["bias"]:
            bdtype, bias = ckpt[name + ".bias"]
            check(np.array_equal(q[name + ".bias"].view(np.uint8), bias.view(np.uint8)), f"{name}: bias bytes")
            expected_tensors += 1

        deq = codes * sc[:, None]
        err = np.abs(deq - Wt)
        ratio = Wt / sc[:, None]
        inside = (ratio >= -qmax - 1 - 0.5) & (ratio <= qmax + 0.5)
        # Float tolerance: our W_t (float64 from float32 rotations) vs the packer's float32 W_t.
        tol = 1e-5 * np.abs(Wt).max(axis=1, keepdims=True) + 1e-12
        over = err - (0.5 * sc[:, None] + tol)
        check(np.all(over[inside] <= 0), f"{name}: |q*s - W_t| beyond half a step + tol ({over[inside].max():.3g})")
        clamped_here = ~inside
        check(np.all(codes[clamped_here & (ratio > 0)] == qmax) and np.all(codes[clamped_here & (ratio < 0)] == -qmax - 1),
              f"{name}: a clamped element is not at the bound")
        clamped += int(clamped_here.sum())
        worst_step = max(worst_step, float((err / sc[:, None])[inside].max()))
        worst_abs = max(worst_abs, float(err[inside].max()))
        rounded = np.clip(np.rint(ratio), -qmax - 1, qmax)
        mism = rounded != codes
        code_mismatch += int(mism.sum())
        total_codes += codes.size
        # A code may differ from our rounding only next to a rounding boundary (float differences).
        near = np.abs(np.abs(ratio - np.floor(ratio)) - 0.5) < 1e-3
        check(np.all(near[mism]) and np.all(np.abs(rounded - codes)[mism] <= 1), f"{name}: codes differ from round(W_t/s)")

        # Quality figures, recomputed.
        norm2 = float(np.sum(W * W))
        dq_err2 = float(np.sum((deq - Wt) ** 2))
        base = np.maximum(np.abs(W).max(axis=1, keepdims=True) / qmax, 1e-8)
        rtn_err2 = float(np.sum((np.clip(np.rint(W / base), -qmax - 1, qmax) * base - W) ** 2))
        qual = entry["quality"]
        for kind, e2 in (("duquant", dq_err2), ("rtn", rtn_err2)):
            rf = math.sqrt(e2 / norm2)
            sq = 10 * math.log10(norm2 / e2)
            got_rf, got_sq = qual[kind]["rel_fro_error"], qual[kind]["sqnr_db"]
            worst_quality = max(worst_quality, rel(got_rf, rf), rel(got_sq, sq))
            check(rel(got_rf, rf) <= 1e-3, f"{name}: {kind} rel_fro_error {got_rf} vs numpy {rf}")
            check(rel(got_sq, sq) <= 1e-3, f"{name}: {kind} sqnr_db {got_sq} vs numpy {sq}")
        dq_sqnr.append(10 * math.log10(norm2 / dq_err2))
        rtn_sqnr.append(10 * math.log10(norm2 / rtn_err2))

    check_conformance(label, manifest, ckpt, q, qheader, "restore", wbits)
    check(len(q) == expected_tensors, f"{label}: {len(q)} tensors in quantized.safetensors, expected {expected_tensors}")
    check(worst_step <= 0.5 + 1e-3, f"{label}: worst error {worst_step} steps")
    print(f"{label}: {len(layers)} layers, {len(q)} tensors; orthogonality worst {worst_orth:.3g}; "
          f"weight_scale worst rel {worst_ws:.3g}")
    print(f"{label}: reconstruction worst |q*s-W_t| = {worst_step:.6f} step ({worst_abs:.3g} abs) over unclamped elements; "
          f"{clamped} clamped of {total_codes}; {code_mismatch} codes differ from numpy's rounding")
    print(f"{label}: quality figures agree with numpy within {worst_quality:.3g} relative; "
          f"mean SQNR duquant {np.mean(dq_sqnr):.3f} dB, rtn {np.mean(rtn_sqnr):.3f} dB")


def unpack_codes(qheader, q, name, O, I):
    qw = q[name + ".qweight"]
    if qheader[name + ".qweight"]["dtype"] == "U8":
        codes = np.empty((O, qw.shape[1] * 2), dtype=np.int64)
        codes[:, 0::2] = (qw & 0x0F).astype(np.int64) - 8
        codes[:, 1::2] = (qw >> 4).astype(np.int64) - 8
        return codes[:, :I]
    return qw.astype(np.int64)


def block_diag(stacked_blocks, n):
    """[nb, B, B] identity-padded blocks -> the n x n block-diagonal matrix of their true corners."""
    out = np.zeros((n, n))
    width = stacked_blocks.shape[1]
    for b in range(stacked_blocks.shape[0]):
        s = min(width, n - b * width)
        out[b * width:b * width + s, b * width:b * width + s] = stacked_blocks[b, :s, :s]
    return out


# The first values of test_x, pinned (docs/pack-format.md, "Conformance vectors").
GOLDEN_X = [-1.2457231, 1.3806328, 0.37807155, -0.44397888, -0.044396773, 0.7181927, -0.5002807, -1.023665]


def check_conformance(label, manifest, ckpt, q, qheader, row_rot, wbits):
    """test_x / test_y_fp / test_y_q of every layer, recomputed in float64 with numpy."""
    worst_fp = worst_q = 0.0
    biased = 0
    for entry in manifest["layers"]:
        name = entry["name"]
        O, I = entry["shape"]
        x, y_fp, y_q = (q[name + t] for t in (".test_x", ".test_y_fp", ".test_y_q"))
        for t, a, shape in ((".test_x", x, (4, I)), (".test_y_fp", y_fp, (4, O)), (".test_y_q", y_q, (4, O))):
            check(qheader[name + t]["dtype"] == "F32" and a.shape == shape, f"{name}{t}: {qheader[name + t]['dtype']} {a.shape}")
        check(np.allclose(x.reshape(-1)[:min(8, x.size)], GOLDEN_X[:min(8, x.size)], rtol=1e-7, atol=0),
              f"{name}: test_x starts {x.reshape(-1)[:8]}")
        x = x.astype(np.float64)
        _, W = ckpt[name + ".weight"]
        b = np.zeros(O)
        if name + ".bias" in ckpt:
            bdtype, braw = ckpt[name + ".bias"]
            check(bdtype == "BF16", f"{name}: bias dtype {bdtype}")
            b = braw.astype(np.float64)
            biased += 1
        ref_fp = x @ W.astype(np.float64).T + b
        e_fp = float(np.abs(y_fp - ref_fp).max() / max(np.abs(ref_fp).max(), 1e-30))
        worst_fp = max(worst_fp, e_fp)
        check(e_fp <= 1e-6, f"{name}: test_y_fp differs from x @ W.T + b by {e_fp:.3g} relative")

        codes = unpack_codes(qheader, q, name, O, I)
        QS = codes * q[name + ".scales"].astype(np.float64)[:, None]
        perm = q[name + ".perm"] if name + ".perm" in q else np.arange(I)
        xt = x[:, perm] @ block_diag(q[name + ".R_in"].astype(np.float64), I)
        yt = xt @ QS.T
        has_rout = name + ".R_out" in q
        check(has_rout == (row_rot != "0"), f"{name}: R_out present {has_rout} with row_rot {row_rot}")
        if row_rot == "restore":
            yt = yt @ block_diag(q[name + ".R_out"].astype(np.float64), O)
        elif row_rot == "propagate":
            b = b @ block_diag(q[name + ".R_out"].astype(np.float64), O).T
        ref_q = yt + b
        e_q = float(np.abs(y_q - ref_q).max() / max(np.abs(ref_q).max(), 1e-30))
        worst_q = max(worst_q, e_q)
        check(e_q <= 1e-5, f"{name}: test_y_q differs from numpy's pack output by {e_q:.3g} relative")

        conf = entry["conformance"]
        yq64, yfp64 = y_q.astype(np.float64), y_fp.astype(np.float64)
        rel_err = float(np.linalg.norm(yq64 - yfp64) / np.linalg.norm(yfp64))
        check(conf["rows"] == 4 and rel(conf["rel_error_q_vs_fp"], rel_err) <= 1e-9,
              f"{name}: manifest conformance {conf} vs numpy {rel_err}")
        if row_rot != "propagate":
            check(rel_err < (0.5 if wbits <= 4 else 0.05), f"{name}: test_y_q far from test_y_fp ({rel_err:.3g})")
    print(f"{label}: conformance vectors of {len(manifest['layers'])} layers ({biased} with bias, row_rot {row_rot}): "
          f"test_y_fp within {worst_fp:.3g}, test_y_q within {worst_q:.3g} of numpy (relative to max |y|)")
    return biased


def check_vision(binary, fixtures, work, label, extra_args, row_rot, wbits):
    """A vision-tower pack (layers with BF16 biases): its conformance vectors only."""
    out = os.path.join(work, label)
    shutil.rmtree(out, ignore_errors=True)
    ckpt_path = os.path.join(fixtures, "pi05_tiny.safetensors")
    cmd = [binary, "pack", ckpt_path, "-o", out, "--scope", "paligemma_with_expert.paligemma.model.vision_tower."] + extra_args
    run = subprocess.run(cmd, capture_output=True, text=True)
    if not check(run.returncode == 0, f"{label}: {' '.join(cmd)} exited {run.returncode}: {run.stderr}"):
        return
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    qheader, _, q, _ = read_safetensors(os.path.join(out, "quantized.safetensors"))
    biased = check_conformance(label, manifest, load_checkpoint(ckpt_path), q, qheader, row_rot, wbits)
    check(biased > 0, f"{label}: no layer with a bias")


def main():
    if len(sys.argv) != 4:
        print(__doc__)
        return 2
    binary, fixtures, work = sys.argv[1:]
    os.makedirs(work, exist_ok=True)
    check_pack(binary, fixtures, work, "b16-w4", [], 16, 16, 4, "openpi-pack-b16")
    check_pack(binary, fixtures, work, "b32-out16-w8", ["--block", "32", "--block-out", "16", "--wbits-default", "8"],
               32, 16, 8, "openpi-pack-b32-out16")
    check_vision(binary, fixtures, work, "vision-propagate-b8", ["--row-rot", "propagate", "--block", "8"], "propagate", 4)
    check_vision(binary, fixtures, work, "vision-rowrot0-noperm-w8",
                 ["--row-rot", "0", "--no-permute", "--wbits-default", "8", "--block", "32"], "0", 8)
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
