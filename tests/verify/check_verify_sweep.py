#!/usr/bin/env python3
"""verify never fails a correct pack, and fails every planted defect: a sweep over random checkpoints.

Usage: check_verify_sweep.py DUQUANT_BINARY WORK_DIR [COUNT]

For COUNT (default 60) seeded random checkpoints of two or three small layers (F32, weights k/16 with
|k| <= 15, so that channel energies are exact in float32 and equal multisets of a column's values give
exactly equal energies):
  * some layers have pairs of columns with tied energies (one column a row rotation of another),
    which the zigzag order puts inside one block or across a block boundary; some are
    near-degenerate (orthogonal columns of equal norm: every block's Gram eigenvalues nearly repeat);
  * `duquant pack` writes our pack; this script writes a second, independently correct pack with the
    reference's algorithm (reference/openpi-pack-format.md, section 3) and the ties broken the other
    way (higher channel index first), as the Python runtime's unstable argsort may;
  * clean cases: `verify OURS -c CKPT`, `verify REF -c CKPT`, `verify OURS -r REF -c CKPT` must not
    FAIL (exit 0), and `verify OURS -r REF` without the checkpoint must not FAIL either (what only the
    checkpoint could settle is a WARN);
  * planted defects, each of which must FAIL (exit 1): a duplicated perm entry (REF), a rotation
    perturbed by 0.05 across an eigenvalue gap of at least 10 % (REF), a changed block size in meta
    (REF), a stale checkpoint (OURS against another checkpoint), a code flipped in
    quantized.safetensors (OURS).
Exit 0 when every case behaves, 1 otherwise, 77 without numpy.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile

try:
    import numpy as np
except Exception as e:  # pragma: no cover
    print(f"SKIP: numpy is not importable ({e})")
    sys.exit(77)

BLOCK = 16
LAMBDA = 0.15
FAILURES = []


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, a in tensors:
        a = np.ascontiguousarray(a, dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        blobs.append(a.tobytes())
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def zigzag(order):
    n = len(order)
    out, lo, hi = [], 0, n - 1
    while lo <= hi:
        out.append(order[lo])
        lo += 1
        if lo <= hi:
            out.append(order[hi])
            hi -= 1
    return out


def energies(w):
    e = (w.astype(np.float64) ** 2).mean(axis=0)  # exact for k/16 values
    e = (1 - LAMBDA) * e + LAMBDA * e.mean()
    return e


def eig_desc(g):
    lam, v = np.linalg.eigh(g)
    return lam[::-1], v[:, ::-1]


def reference_pack(w, folder, name):
    """The reference's algorithm with ties broken the other way (higher index first)."""
    o, i = w.shape
    e = energies(w).astype(np.float32)
    order = sorted(range(i), key=lambda j: (-float(e[j]), -j))
    perm = np.array(zigzag(order), dtype="<i8")
    members = {}
    wt = w[:, perm].astype(np.float64)
    nb = (i + BLOCK - 1) // BLOCK
    for b in range(nb):
        s = slice(b * BLOCK, min((b + 1) * BLOCK, i))
        _, r = eig_desc(wt[:, s].T @ wt[:, s])
        members["Rin_%d" % b] = r.astype("<f4")
        wt[:, s] = wt[:, s] @ r
    scale = np.maximum(np.abs(wt).max(axis=1), 1e-8) / 7.0
    nbo = (o + BLOCK - 1) // BLOCK
    rout = {}
    for b in range(nbo):
        s = slice(b * BLOCK, min((b + 1) * BLOCK, o))
        wr = w[s, :].astype(np.float64)
        _, r = eig_desc(wr @ wr.T)
        rout["Rout_%d" % b] = r.astype("<f4")
    meta = json.dumps({"in_features": i, "out_features": o, "block_size": BLOCK, "block_out_size": BLOCK,
                       "enable_permute": True, "lambda_smooth": LAMBDA})
    arrays = {"weight_scale": scale.astype("<f4"), "meta": np.array(meta), "perm": perm}
    for b in range(nb):
        arrays["Rin_%d" % b] = members["Rin_%d" % b]
    arrays["R_in_blocks"] = np.arange(nb, dtype="<i8")
    arrays.update(rout)
    arrays["R_out_blocks"] = np.arange(nbo, dtype="<i8")
    np.savez(os.path.join(folder, name + ".npz"), **arrays)
    return arrays


def tie_blocks(w):
    """For each tied pair of channels, whether the zigzag order puts it in one block or across two."""
    e = energies(w).astype(np.float32)
    order = sorted(range(w.shape[1]), key=lambda j: (-float(e[j]), j))
    pos = {c: k for k, c in enumerate(zigzag(order))}
    kinds = set()
    for a in range(w.shape[1]):
        for b in range(a + 1, w.shape[1]):
            if e[a] == e[b]:
                kinds.add("inside" if pos[a] // BLOCK == pos[b] // BLOCK else "across")
    return kinds


def make_layer(rng, o, i, ties):
    w = rng.integers(-15, 16, size=(o, i)).astype(np.float32) / 16.0
    for j in range(i):  # distinct energies by default: a varying number of zero rows per column
        w[: (j * 7) % (o // 2), j] = 0.0
    for _ in range(ties):
        a, b = rng.choice(i, size=2, replace=False)
        w[:, b] = np.roll(w[:, a], int(rng.integers(1, o)))  # same multiset: exactly the same energy
    return w


def near_degenerate_layer(rng, o=48, i=32):
    """Orthogonal columns of equal norm, rounded to k/16: every block's Gram matrix is nearly c·I, its
    eigenvalues repeated within a few tenths of a percent (sums stay exact in float32)."""
    q, _ = np.linalg.qr(rng.standard_normal((o, i)))
    return (np.round(q * 2048.0) / 16.0).astype(np.float32)


def verify(binary, pack, *extra):
    r = subprocess.run([binary, "verify", pack, *extra], capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr


def expect(code, out, want, what):
    if code != want:
        FAILURES.append(what)
        print("FAIL: %s: exit %d, expected %d\n%s" % (what, code, want, "\n".join(out.splitlines()[-12:])))
        return False
    return True


def flip_code(pack):
    """Flips one nibble in quantized.safetensors' first codes tensor (the data, not the header)."""
    path = os.path.join(pack, "quantized.safetensors")
    with open(path, "rb") as f:
        data = bytearray(f.read())
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    key = sorted(k for k in header if k.endswith(".qweight"))[0]
    start = 8 + n + header[key]["data_offsets"][0]
    data[start] ^= 0x11
    with open(path, "wb") as f:
        f.write(data)


def rewrite_npz(path, change):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    np.savez(path, **arrays)


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 1
    binary, work = sys.argv[1], sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 60
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    seen = {"inside": 0, "across": 0, "degenerate": 0}
    planted = {"perm": 0, "rotation": 0, "block": 0, "stale": 0, "code": 0}
    notes = {"equivalent-by-ties": 0, "aligned": 0}
    for case in range(count):
        rng = np.random.default_rng(1000 + case)
        d = os.path.join(work, "c%02d" % case)
        os.makedirs(d)
        layers = []
        for k in range(int(rng.integers(2, 4))):
            o = int(rng.choice([24, 32, 40]))
            i = int(rng.choice([32, 40, 48]))
            if rng.integers(0, 4) == 0:
                w = near_degenerate_layer(rng)
                seen["degenerate"] += 1
            else:
                w = make_layer(rng, o, i, ties=int(rng.integers(0, 4)))
            layers.append(("model.layers.%d.mlp.up_proj" % k, w))
            for kind in tie_blocks(w):
                seen[kind] += 1
        ckpt = os.path.join(d, "ckpt.safetensors")
        write_safetensors(ckpt, [(n + ".weight", w) for n, w in layers])
        ours, ref = os.path.join(d, "ours"), os.path.join(d, "ref")
        r = subprocess.run([binary, "pack", ckpt, "-o", ours, "--include", "up_proj"], capture_output=True, text=True)
        if not expect(r.returncode, r.stdout + r.stderr, 0, "c%02d: pack" % case):
            continue
        os.makedirs(ref)
        for n, w in layers:
            reference_pack(w, ref, n)
        expect(*verify(binary, ours, "-c", ckpt, "--strict"), 0, "c%02d: ours -c" % case)
        expect(*verify(binary, ref, "-c", ckpt), 0, "c%02d: ref -c" % case)
        code, out = verify(binary, ours, "-r", ref, "-c", ckpt, "--json")
        if expect(code, out, 0, "c%02d: ours -r ref -c" % case):
            for layer in json.loads(out)["layers"]:
                reasons = [f["reason"] for f in layer["findings"]]
                notes["equivalent-by-ties"] += "equivalent-by-ties" in reasons
                notes["aligned"] += layer["numbers"].get("reference_perm_positions_differing", 0) > 0
        expect(*verify(binary, ours, "-r", ref), 0, "c%02d: ours -r ref (no checkpoint)" % case)

        # Planted defects: each must FAIL.
        first = layers[0][0]
        npz = os.path.join(ref, first + ".npz")
        backup = npz + ".orig"
        shutil.copy(npz, backup)

        def dup(a):
            a["perm"] = a["perm"].copy()
            a["perm"][1] = a["perm"][0]
        rewrite_npz(npz, dup)
        expect(*verify(binary, ref, "-c", ckpt), 1, "c%02d: duplicated perm entry" % case)
        planted["perm"] += 1
        shutil.copy(backup, npz)

        w = layers[0][1]
        with np.load(npz) as z:
            perm = z["perm"]
        wt = w[:, perm].astype(np.float64)
        lam, _ = eig_desc(wt[:, :BLOCK].T @ wt[:, :BLOCK])
        gaps = [j for j in range(BLOCK - 1) if lam[j] - lam[j + 1] >= 0.1 * lam[j] and lam[j] >= 0.05 * lam[0] > 0]
        if gaps:
            j = gaps[0]

            def perturb(a):
                r = a["Rin_0"].astype(np.float64)
                c, s = np.cos(0.05), np.sin(0.05)
                cj, cj1 = r[:, j].copy(), r[:, j + 1].copy()
                r[:, j], r[:, j + 1] = c * cj + s * cj1, -s * cj + c * cj1
                a["Rin_0"] = r.astype("<f4")
            rewrite_npz(npz, perturb)
            expect(*verify(binary, ref, "-c", ckpt), 1, "c%02d: rotation perturbed across a gap" % case)
            expect(*verify(binary, ours, "-r", ref, "-c", ckpt), 1, "c%02d: -r a perturbed rotation" % case)
            planted["rotation"] += 1
            shutil.copy(backup, npz)

        def block(a):
            m = json.loads(str(a["meta"]))
            m["block_size"] = 8
            a["meta"] = np.array(json.dumps(m))
        rewrite_npz(npz, block)
        expect(*verify(binary, ref, "-c", ckpt), 1, "c%02d: changed block size" % case)
        planted["block"] += 1
        shutil.copy(backup, npz)
        os.remove(backup)

        stale = os.path.join(d, "stale.safetensors")
        changed = [(n, w.copy()) for n, w in layers]
        changed[0][1][0, 0] += 1.0 / 16
        write_safetensors(stale, [(n + ".weight", w) for n, w in changed])
        expect(*verify(binary, ours, "-c", stale), 1, "c%02d: stale checkpoint" % case)
        planted["stale"] += 1
        flip_code(ours)
        expect(*verify(binary, ours), 1, "c%02d: flipped code" % case)
        planted["code"] += 1
        if not FAILURES:
            shutil.rmtree(d, ignore_errors=True)
    print("sweep: %d checkpoints; tied pairs inside one block in %d layers, across blocks in %d; %d near-degenerate "
          "layers; layers whose perm differs from the reference's %d, with blocks equivalent by ties %d; planted "
          "defects %s" % (count, seen["inside"], seen["across"], seen["degenerate"], notes["aligned"],
                          notes["equivalent-by-ties"], planted))
    if seen["inside"] == 0 or seen["across"] == 0 or seen["degenerate"] == 0 or notes["equivalent-by-ties"] == 0:
        FAILURES.append("the sweep planted no tie of one kind")
    if min(planted.values()) == 0 or planted["rotation"] < count // 4:
        FAILURES.append("too few planted defects: %s" % planted)
    if FAILURES:
        print("%d cases misbehaved" % len(FAILURES))
        return 1
    shutil.rmtree(work, ignore_errors=True)
    print("check_verify_sweep: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
