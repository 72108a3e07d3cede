#!/usr/bin/env python3
"""ctest calib_example_dump: examples/dump_activations.py against `duquant pack --calib`.

    check_example_dump.py <duquant-binary> <fixtures-dir> <examples-dir> <work-dir>

1. DumpWriter writes synthetic activations (outlier channels; float32, float16, bfloat16 bits,
   float64, a 3-D call, a call longer than max_tokens) for the 14 action-expert linears of
   <fixtures>/pi05_tiny.safetensors; early stop and the safetensors container are exercised too.
2. The file is read back with h5py: exactly the documented structure, shapes, dtypes, attribute,
   contiguous layout, and the values.
3. `duquant pack --calib <dump> --calib-steps 3`: every layer's act_scale is recomputed in numpy
   (x[:, perm], blocks times Rin_b in float64, 99.9 % quantile with linear interpolation, running
   max over the calls, / 127) and must agree to 1e-5 relative; the manifest records the
   calibration (source, steps, tokens, held-out calls and rows, output error); `duquant verify
   --checkpoint` accepts the pack; a safetensors dump of the same data gives the same act_scale.
4. Hostile dumps: a layer of the wrong width (exit 3 before any work, the message names the layer
   and both widths); a layer missing from the dump (a warning naming it, no act_scale, listed in
   the manifest; exit 3 with --strict); a missing layer whose input siblings are dumped (k_proj
   next to q/v_proj) uses a sibling's calls without a warning.

Exit 0 pass, 1 fail, 77 skip (no numpy/h5py, or a duquant without --calib).
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
    import h5py
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e}")
    sys.exit(77)

if len(sys.argv) != 5:
    print(__doc__)
    sys.exit(1)
DUQUANT, FIXTURES, EXAMPLES, WORK = sys.argv[1:5]
sys.path.insert(0, EXAMPLES)
from dump_activations import DumpWriter, select_layers, bf16_bits_to_float32, float32_to_bf16_bits  # noqa: E402

CKPT = os.path.join(FIXTURES, "pi05_tiny.safetensors")
SCOPE = "paligemma_with_expert.gemma_expert.model."
N_CALLS, STEPS, MAX_TOKENS = 5, 3, 100
REL_TOL = 1e-5

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL:", msg)


def check(cond, msg):
    if not cond:
        fail(msg)
    return cond


def finish():
    if failures:
        print(f"calib_example_dump: {len(failures)} failure(s)")
        sys.exit(1)
    print("calib_example_dump: PASS")
    sys.exit(0)


def safetensors_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), 8 + n


def fresh(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)
    return path


def run(args, timeout=300):
    p = subprocess.run([DUQUANT] + args, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


os.makedirs(WORK, exist_ok=True)

# ------------------------------------------------------------------------------------------------
# 1. Synthetic activations through DumpWriter
# ------------------------------------------------------------------------------------------------
header, _ = safetensors_header(CKPT)
linears = [k[: -len(".weight")] for k, v in header.items()
           if k != "__metadata__" and k.endswith(".weight") and len(v["shape"]) == 2]
layers = select_layers(linears, scope=SCOPE)
widths = {name: header[name + ".weight"]["shape"][1] for name in layers}
expected_names = [f"{SCOPE}layers.{i}.{m}" for i in (0, 1)
                  for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
if not check(sorted(layers) == sorted(expected_names),
             f"select_layers picked {len(layers)} layers, expected the 14 action-expert linears: {layers}"):
    finish()
want_widths = {"q_proj": 64, "k_proj": 64, "v_proj": 64, "o_proj": 128, "gate_proj": 64, "up_proj": 64,
               "down_proj": 256}
for name, width in widths.items():
    check(want_widths[name.rsplit(".", 1)[1]] == width, f"{name}: width {width} in the checkpoint header")

# Selection semantics (re.search, scope prefix, exclude, layers list, action head).
check(select_layers(["a.q_proj.x", "q_projx", "b.norm.q_proj", "b.norm_q_proj"]) == ["a.q_proj.x", "q_projx", "b.norm_q_proj"],
      "select_layers: include/exclude must use re.search")
check(select_layers(["action_out_proj", "m.action_out_proj", "m.action_out_proj2"], include=".*") ==
      ["m.action_out_proj2"], "select_layers: action head")
check(select_layers(["action_out_proj"], include=".*", include_action_head=True) == ["action_out_proj"],
      "select_layers: --include-action-head")
check(select_layers(["s.a.norm", "s.b", "t.a"], scope="s.", layers=["s.a.norm", "t.a"]) == ["s.a.norm"],
      "select_layers: --layers bypasses include/exclude, not the scope")

rng = np.random.default_rng(20261122)
# Per call: how it is handed to the writer. The rotation by layer index puts every kind in the
# first STEPS calls of some layer.
KINDS = ["float32", "float16", "bfloat16", "3d", "float64"]
expected = {}  # layer -> list of (stored dtype, float32 values as stored)
calls_log = []
dump = fresh(os.path.join(WORK, "calib.h5"))
writer = DumpWriter(dump, max_calls=N_CALLS, max_tokens=MAX_TOKENS)
for li, name in enumerate(layers):
    width = widths[name]
    outliers = rng.choice(width, size=2, replace=False)
    base_scale = rng.uniform(0.5, 2.0, size=width)
    base_scale[outliers] *= rng.uniform(15, 40, size=2)
    expected[name] = []
    for c in range(N_CALLS):
        kind = KINDS[(c + li) % len(KINDS)]
        tokens = 60 if kind == "3d" else int(rng.integers(40, 121))
        x = rng.standard_normal((tokens, width)) * base_scale
        if kind == "3d":
            arr = x.reshape(2, 30, width).astype(np.float32)
            got = writer.add(name, arr)
            stored, values = "float32", arr.reshape(-1, width)
        elif kind == "float32":
            arr = x.astype(np.float32)
            got = writer.add(name, arr)
            stored, values = "float32", arr
        elif kind == "float16":
            arr = x.astype(np.float16)
            got = writer.add(name, arr)
            stored, values = "float16", arr
        elif kind == "bfloat16":
            bits = float32_to_bf16_bits(x.astype(np.float32))
            got = writer.add(name, bits, dtype="bfloat16")
            stored, values = "bfloat16", bits
        else:
            got = writer.add(name, x)  # float64 -> float32
            stored, values = "float32", x.astype(np.float32)
        if values.shape[0] > MAX_TOKENS:  # evenly spaced rows floor(i * n / k)
            n = values.shape[0]
            values = values[[i * n // MAX_TOKENS for i in range(MAX_TOKENS)]]
        check(got == "x_%04d" % c, f"{name}: add returned {got!r} for call {c}")
        expected[name].append((stored, values))
    check(writer.add(name, np.zeros((3, width), np.float32)) is None, f"{name}: a call past max_calls was recorded")
check(os.path.exists(dump + ".tmp") and not os.path.exists(dump), "the writer must write <out>.tmp until close")
try:
    writer.add(layers[0], np.zeros((3, widths[layers[0]] + 1), np.float32))
    fail("DumpWriter accepted a call of a different width")
except ValueError:
    pass
writer.close()
check(os.path.exists(dump) and not os.path.exists(dump + ".tmp"), "close() must rename <out>.tmp to <out>")

# bf16 helpers: round to nearest even, exact back-conversion.
v = np.array([1.0, 1.00390625, 1.01171875, -3.5, 65504.0], np.float32)
check(bf16_bits_to_float32(float32_to_bf16_bits(v)).tolist() == [1.0, 1.0, 1.015625, -3.5, 65536.0],
      "bfloat16 round trip")

# Early stop: the .tmp file is a valid dump of what was recorded.
early = fresh(os.path.join(WORK, "early.h5"))
try:
    with DumpWriter(early) as w:
        w.add(layers[0], np.ones((4, widths[layers[0]]), np.float32))
        w.add(layers[0], np.ones((5, widths[layers[0]]), np.float16))
        raise KeyboardInterrupt
except KeyboardInterrupt:
    pass
if check(os.path.exists(early + ".tmp") and not os.path.exists(early), "early stop must leave <out>.tmp"):
    with h5py.File(early + ".tmp", "r") as f:
        check(list(f) == [layers[0]] and list(f[layers[0]]) == ["x_0000", "x_0001"],
              "early-stop dump: wrong structure")
        check(f[layers[0]]["x_0001"].shape == (5, widths[layers[0]]), "early-stop dump: wrong shape")

# Conversion options: float16 refuses an overflow, float32 converts bf16 exactly.
try:
    with DumpWriter(fresh(os.path.join(WORK, "f16.h5")), dtype="float16") as w:
        w.add("a", np.array([[1.0, 70000.0]], np.float32))
    fail("float16 conversion of 70000 must be refused")
except ValueError:
    pass
with DumpWriter(fresh(os.path.join(WORK, "f32.h5")), dtype="float32") as w:
    w.add("a", float32_to_bf16_bits(np.array([[1.5, -2.25]], np.float32)), dtype="bfloat16")
with h5py.File(os.path.join(WORK, "f32.h5"), "r") as f:
    ds = f["a"]["x_0000"]
    check(ds.dtype == np.float32 and "dtype" not in ds.attrs and ds[()].tolist() == [[1.5, -2.25]],
          "dtype=float32 must convert bfloat16 bits to float32 values")

# The same data as a safetensors dump.
st_dump = fresh(os.path.join(WORK, "calib.safetensors"))
with DumpWriter(st_dump, format="safetensors") as w:
    for name in layers:
        for stored, values in expected[name]:
            w.add(name, values, dtype="bfloat16" if stored == "bfloat16" else None)
st_header, st_data_start = safetensors_header(st_dump)
st_keys = sorted(k for k in st_header if k != "__metadata__")
check(st_keys == sorted(f"{n}.x_%04d" % c for n in layers for c in range(N_CALLS)), "safetensors dump: keys")
ends = sorted((st_header[k]["data_offsets"] for k in st_keys))
check(ends[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ends, ends[1:])) and
      ends[-1][1] == os.path.getsize(st_dump) - st_data_start and st_data_start % 8 == 0,
      "safetensors dump: data offsets must be contiguous, aligned and cover the file")
for name in layers:
    for c, (stored, values) in enumerate(expected[name]):
        e = st_header[f"{name}.x_%04d" % c]
        check(e["dtype"] == {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[stored] and
              e["shape"] == list(values.shape), f"safetensors dump: {name}.x_%04d is {e}" % c)

# ------------------------------------------------------------------------------------------------
# 2. The HDF5 file has exactly the documented structure
# ------------------------------------------------------------------------------------------------
np_dtype = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
with h5py.File(dump, "r") as f:
    check(sorted(f.keys()) == sorted(layers), f"root members {sorted(f.keys())}")
    check(len(f.attrs) == 0, f"root attributes {list(f.attrs)}")
    for name in layers:
        link = f.get(name, getlink=True)
        if not check(isinstance(link, h5py.HardLink) and isinstance(f[name], h5py.Group), f"{name}: not a group"):
            continue
        g = f[name]
        check(len(g.attrs) == 0, f"{name}: group attributes {list(g.attrs)}")
        check(sorted(g.keys()) == ["x_%04d" % c for c in range(N_CALLS)], f"{name}: members {sorted(g.keys())}")
        for c, (stored, values) in enumerate(expected[name]):
            ds = g.get("x_%04d" % c)
            if not check(isinstance(ds, h5py.Dataset), f"{name}/x_%04d: not a dataset" % c):
                continue
            where = f"{name}/{ds.name.rsplit('/', 1)[1]}"
            check(ds.ndim == 2 and ds.shape == values.shape, f"{where}: shape {ds.shape}, expected {values.shape}")
            check(ds.dtype == np_dtype[stored], f"{where}: dtype {ds.dtype}, expected {stored}")
            check(ds.chunks is None and ds.compression is None and ds.external is None,
                  f"{where}: must be a plain contiguous dataset")
            attrs = dict(ds.attrs)
            if stored == "bfloat16":
                a = attrs.get("dtype")
                a = a.decode() if isinstance(a, bytes) else a
                check(list(attrs) == ["dtype"] and a == "bfloat16", f"{where}: attributes {attrs}")
            else:
                check(not attrs, f"{where}: unexpected attributes {attrs}")
            check(np.array_equal(ds[()], values), f"{where}: stored values differ from the input")
print(f"parts 1-2: {len(layers)} layers x {N_CALLS} calls written and read back "
      f"({os.path.getsize(dump)} bytes)")

# ------------------------------------------------------------------------------------------------
# 3. duquant pack --calib, act_scale recomputed independently
# ------------------------------------------------------------------------------------------------
rc, help_out, help_err = run(["pack", "--help"], timeout=60)
def lists_option(text, option):
    return re.search(re.escape(option) + r"(?![\w-])", text) is not None


if not lists_option(help_out + help_err, "--calib"):
    if failures:
        finish()
    print("SKIP: parts 3-4 not run: `duquant pack --help` does not list --calib")
    sys.exit(77)


def as_float64(stored, values):
    return (bf16_bits_to_float32(values) if stored == "bfloat16" else values).astype(np.float64)


def expected_act_scale(npz, calls, q=0.999, qmax=127):
    meta = json.loads(str(npz["meta"]))
    width = meta["in_features"]
    bs = meta["block_size"]
    perm = npz["perm"] if "perm" in npz.files else np.arange(width)
    running = None
    for stored, values in calls[:STEPS]:
        xt = as_float64(stored, values)[:, perm]
        for b in range(0, (width + bs - 1) // bs):
            r = npz[f"Rin_{b}"].astype(np.float64)
            cols = slice(b * bs, min(width, (b + 1) * bs))
            xt[:, cols] = xt[:, cols] @ r
        p = np.maximum(np.quantile(np.abs(xt), q, axis=0, method="linear"), 1e-6)
        running = p if running is None else np.maximum(running, p)
    return np.maximum(running / qmax, 1e-6)


def check_pack(pack_dir, label):
    worst = (0.0, "", -1)
    for name in layers:
        path = os.path.join(pack_dir, name + ".npz")
        if not check(os.path.exists(path), f"{label}: {path} missing"):
            continue
        with np.load(path) as npz:
            if not check("act_scale" in npz.files, f"{label}: {name}.npz has no act_scale ({npz.files})"):
                continue
            got = npz["act_scale"]
            check(got.dtype == np.float32 and got.shape == (widths[name],),
                  f"{label}: {name}: act_scale {got.dtype} {got.shape}")
            want = expected_act_scale(npz, expected[name])
            extra = set(npz.files) - {"weight_scale", "meta", "perm", "R_in_blocks", "R_out_blocks", "act_scale"} \
                - {f for f in npz.files if f.startswith(("Rin_", "Rout_"))}
            check(not extra, f"{label}: {name}.npz has members this test does not account for: {sorted(extra)}")
        rel = np.abs(got.astype(np.float64) - want) / want
        i = int(np.argmax(rel))
        if rel[i] > worst[0]:
            worst = (float(rel[i]), name, i)
        check(rel[i] <= REL_TOL, f"{label}: {name}: act_scale[{i}] = {got[i]!r}, numpy {want[i]!r} "
                                 f"(relative difference {rel[i]:.3g})")
    return worst


pack = fresh(os.path.join(WORK, "pack"))
rc, out, err = run(["pack", CKPT, "-o", pack, "--scope", SCOPE, "--calib", dump, "--calib-steps", str(STEPS)])
if not check(rc == 0, f"duquant pack --calib exited {rc}:\n{out}\n{err}"):
    finish()
worst = check_pack(pack, "hdf5 dump")
print(f"act_scale: worst relative difference {worst[0]:.3g} ({worst[1]}, channel {worst[2]}); tolerance {REL_TOL}")

with open(os.path.join(pack, "manifest.json")) as f:
    manifest = json.load(f)
entries = {e["name"]: e for e in manifest["layers"]}
check(sorted(entries) == sorted(layers), f"manifest layers {sorted(entries)}")
if layers[0] in entries:
    print("manifest calibration entry:", json.dumps(entries[layers[0]].get("calibration")))
top = manifest.get("calibration")
if check(isinstance(top, dict), f"manifest: top-level calibration is {top!r}"):
    check(top.get("dump") == os.path.basename(dump) and top.get("container") == "hdf5" and
          top.get("missing_layers") == [], f"manifest: top-level calibration {json.dumps(top)}")
held_max = (top or {}).get("held_out_calls_max", 4)
rows_max = (top or {}).get("held_out_rows_per_call_max", 16)
for name in layers:
    cal = entries.get(name, {}).get("calibration")
    if not check(isinstance(cal, dict), f"manifest: {name} has no calibration object"):
        continue
    calls = expected[name]
    held = calls[STEPS:STEPS + held_max]
    want = {"source": name, "steps": STEPS, "tokens": sum(v.shape[0] for _, v in calls[:STEPS]),
            "held_out_calls": len(held), "held_out_rows": sum(min(rows_max, v.shape[0]) for _, v in held)}
    got = {k: cal.get(k) for k in want}
    check(got == want, f"manifest: {name}: calibration {got}, expected {want}")
    err_q = cal.get("output_rel_error")
    check(isinstance(err_q, float) and 0 < err_q < 1,
          f"manifest: {name}: output_rel_error {err_q!r} (held-out calls exist, so it must be measured)")

rc, out, err = run(["verify", pack, "--checkpoint", CKPT])
check(rc == 0, f"duquant verify of the calibrated pack exited {rc}:\n{out[-2000:]}\n{err[-2000:]}")

# The same activations as safetensors give the same act_scale.
pack_st = fresh(os.path.join(WORK, "pack-st"))
rc, out, err = run(["pack", CKPT, "-o", pack_st, "--scope", SCOPE, "--calib", st_dump, "--calib-steps", str(STEPS)])
if check(rc == 0, f"duquant pack --calib <safetensors dump> exited {rc}:\n{err}"):
    for name in layers:
        with np.load(os.path.join(pack, name + ".npz")) as a, np.load(os.path.join(pack_st, name + ".npz")) as b:
            check(np.array_equal(a["act_scale"], b["act_scale"]),
                  f"{name}: act_scale differs between the HDF5 and the safetensors dump")

# ------------------------------------------------------------------------------------------------
# 4. Hostile dumps
# ------------------------------------------------------------------------------------------------
def write_plain(path, skip=(), wide=None, calls=3):
    """Plain h5py dump, 3 float32 calls of 20 rows per layer; returns layer -> calls as stored."""
    data = {}
    with h5py.File(fresh(path), "w") as f:
        for name in layers:
            if name in skip:
                continue
            width = widths[name] + (1 if name == wide else 0)
            data[name] = []
            for c in range(calls):
                x = (rng.standard_normal((20, width)) * rng.uniform(0.5, 3.0, size=width)).astype(np.float32)
                f.create_dataset(f"{name}/x_%04d" % c, data=x)
                data[name].append(("float32", x))
    return path, data


wide = f"{SCOPE}layers.1.mlp.up_proj"
bad, _ = write_plain(os.path.join(WORK, "wide.h5"), wide=wide)
pack_wide = fresh(os.path.join(WORK, "pack-wide"))
rc, out, err = run(["pack", CKPT, "-o", pack_wide, "--scope", SCOPE, "--calib", bad, "--calib-steps", "3"])
msg = [line for line in err.splitlines() if "error" in line]
print("wrong width:", rc, msg[:1])
check(rc == 3, f"a dump with a wrong width must exit 3, got {rc}: {err.strip()}")
check(any(wide in line and str(widths[wide]) in line and str(widths[wide] + 1) in line for line in msg),
      f"the error must name {wide}, {widths[wide]} and {widths[wide] + 1}: {err.strip()}")
check(not os.path.exists(pack_wide) or not any(f.endswith(".npz") for f in os.listdir(pack_wide)),
      "a width error must stop the run before any layer is written")

# o_proj reads its own input: missing from the dump, it gets no act_scale (a warning; --strict:
# exit 3). k_proj shares its input with q_proj and v_proj: it uses a sibling's calls, silently.
missing = f"{SCOPE}layers.0.self_attn.o_proj"
shared = f"{SCOPE}layers.1.self_attn.k_proj"
partial, plain = write_plain(os.path.join(WORK, "missing.h5"), skip=(missing, shared))
pack_missing = fresh(os.path.join(WORK, "pack-missing"))
rc, out, err = run(["pack", CKPT, "-o", pack_missing, "--scope", SCOPE, "--calib", partial, "--calib-steps", "3"])
warn = [line for line in err.splitlines() if "warning" in line and missing in line]
print("missing layer:", rc, warn[:1])
check(rc == 0, f"a dump lacking a layer must still pack (with a warning), got {rc}: {err.strip()}")
check(bool(warn), f"no warning naming {missing}: {err.strip()}")
check(not any(shared in line for line in err.splitlines() if "warning" in line),
      f"{shared} has dumped siblings and must not be reported missing: {err.strip()}")
if rc == 0:
    with np.load(os.path.join(pack_missing, missing + ".npz")) as npz:
        check("act_scale" not in npz.files, f"{missing}: act_scale without calls ({npz.files})")
    with open(os.path.join(pack_missing, "manifest.json")) as f:
        m = json.load(f)
    check((m.get("calibration") or {}).get("missing_layers") == [missing],
          f"manifest missing_layers {(m.get('calibration') or {}).get('missing_layers')!r}, expected [{missing}]")
    ents = {e["name"]: e for e in m["layers"]}
    check(ents[missing].get("calibration") is None, f"{missing}: calibration {ents[missing].get('calibration')!r}")
    source = (ents[shared].get("calibration") or {}).get("source")
    siblings = [shared.replace("k_proj", "q_proj"), shared.replace("k_proj", "v_proj")]
    if check(source in siblings, f"{shared}: calibration.source {source!r}, expected one of {siblings}"):
        with np.load(os.path.join(pack_missing, shared + ".npz")) as npz:
            want = expected_act_scale(npz, plain[source])
            got = npz["act_scale"].astype(np.float64)
        rel = float(np.max(np.abs(got - want) / want))
        print(f"  {shared}: act_scale from {source.rsplit('.', 2)[-2:]} calls, worst relative difference {rel:.3g}")
        check(rel <= REL_TOL, f"{shared}: act_scale from its sibling's calls differs by {rel:.3g}")
rc, out, err = run(["pack", CKPT, "-o", fresh(os.path.join(WORK, "pack-missing-strict")), "--scope", SCOPE,
                    "--calib", partial, "--calib-steps", "3", "--strict"])
print("missing layer, --strict:", rc, [line for line in err.splitlines() if "error" in line][:1])
check(rc == 3 and missing in err, f"--strict with a layer missing from the dump must exit 3 naming it: {rc} {err.strip()}")

finish()
