#!/usr/bin/env python3
"""Regenerates the committed seed corpora of the fuzz targets (tests/fuzz/seeds/<target>/).

Each seed is small (a few KiB: libFuzzer mutates better from small inputs) and named for what the
reader must do with it: valid_* is accepted, bad_* refused (tests/fuzz/test_fuzz_corpus.cpp checks
both in every test build). scripts/run-fuzz.sh adds the hand-made corrupt files of
tests/data/corrupt/ and the runtime's pack files of the shared fixtures to these seeds.

    python3 tests/fuzz/make_seeds.py build/duquant

The duquant binary packs two layers of the shared tiny checkpoint for the manifest seeds (plain,
and calibrated from a small dump). Needs numpy and h5py.
"""

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import warnings
import zipfile

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")
FIXTURES = os.path.join(HERE, "..", "..", "..", "shared", "fixtures")
rng = np.random.default_rng(20261203)


def put(target, name, data):
    os.makedirs(os.path.join(SEEDS, target), exist_ok=True)
    with open(os.path.join(SEEDS, target, name), "wb") as f:
        f.write(data)


def st_bytes(header, data=b""):
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


# --- safetensors_header / safetensors_index ---------------------------------------------------

def safetensors_seeds():
    put("safetensors_header", "valid_empty", st_bytes({}))
    put("safetensors_header", "valid_metadata",
        st_bytes({"__metadata__": {"format": "pt"}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
                 bytes(8)))
    put("safetensors_header", "valid_mixed",
        st_bytes({"a": {"dtype": "BF16", "shape": [2, 1], "data_offsets": [0, 4]},
                  "b": {"dtype": "F4", "shape": [4], "data_offsets": [4, 6]},
                  "z": {"dtype": "I64", "shape": [0], "data_offsets": [6, 6]},
                  "s": {"dtype": "U8", "shape": [], "data_offsets": [6, 7]}}, bytes(7)))
    put("safetensors_header", "bad_overlap",
        st_bytes({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                  "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)))
    put("safetensors_header", "bad_header_len_past_eof", struct.pack("<Q", 1 << 20) + b"{}")
    for i, wm in enumerate([{"a": "model.safetensors"},
                            {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
                            {"x.y": "sub/dir/shard.safetensors"}]):
        put("safetensors_index", f"valid_{i}", json.dumps({"metadata": {"total_size": 16}, "weight_map": wm}).encode())
    put("safetensors_index", "bad_dotdot", json.dumps({"weight_map": {"a": "../x.safetensors"}}).encode())
    put("safetensors_index", "bad_not_object", b"[1, 2, 3]")


# --- npz ----------------------------------------------------------------------------------------

def npy(arr, version=None):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, version=version, allow_pickle=False)
    return buf.getvalue()


def savez(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def npy_raw_header(header_text, data=b""):
    h = header_text.encode("latin1")
    h += b" " * ((64 - (10 + len(h) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + data


def npz_seeds():
    w = rng.integers(0, 16, size=(4, 6), dtype=np.uint8)
    pack = dict(
        qweight=w, scales=rng.random((4, 1), dtype=np.float32), perm=np.arange(8, dtype=np.int64),
        R_in=np.eye(4, dtype=np.float32)[None], meta=np.array("layer.q_proj"), flag=np.array(True),
        bits=np.array(4, dtype=np.int32), d=np.array([0.5, 0.25]), small=np.array([-1, 2], dtype=np.int8))
    put("npz", "valid_pack_like", savez(**pack))
    put("npz", "valid_fortran", savez(a=np.asfortranarray(rng.random((3, 5), dtype=np.float32)),
                                      b=np.asfortranarray(np.arange(24, dtype=np.int64).reshape(2, 3, 4))))
    put("npz", "valid_empty_archive", savez())
    put("npz", "valid_zero_size", savez(e=np.zeros((0, 3), dtype=np.float32)))
    put("npz", "valid_v1.npy", npy(rng.random((2, 3), dtype=np.float32), (1, 0)))
    put("npz", "valid_v2.npy", npy(np.arange(5, dtype=np.int64), (2, 0)))
    put("npz", "valid_v3.npy", npy(np.array("unicode \u00e9\u4e2d"), (3, 0)))
    put("npz", "valid_scalar.npy", npy(np.array(1.5, dtype=np.float32)))
    buf = io.BytesIO()
    np.savez_compressed(buf, a=np.arange(10, dtype=np.float32))
    put("npz", "bad_compressed", buf.getvalue())
    good = savez(a=np.arange(6, dtype=np.float32).reshape(2, 3))
    put("npz", "bad_truncated", good[: len(good) // 2])
    crc = bytearray(good)
    crc[good.index(b"\x93NUMPY") + 130] ^= 0x40  # a data byte: the member's CRC-32 no longer holds
    put("npz", "bad_crc", bytes(crc))
    put("npz", "bad_big_endian.npy", npy(np.arange(3, dtype=">f4")))
    put("npz", "bad_object.npy", npy_raw_header("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", bytes(8)))
    put("npz", "bad_structured.npy", npy(np.zeros(2, dtype=[("x", "<f4"), ("y", "<i4")])))
    put("npz", "bad_short_data.npy", npy_raw_header("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", bytes(12)))
    put("npz", "bad_shape_overflow.npy",
        npy_raw_header("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", bytes(4)))
    # Two members of one name (zipfile warns but writes them).
    buf = io.BytesIO()
    member = zipfile.ZipInfo("a.npy", date_time=(1980, 1, 1, 0, 0, 0))
    with zipfile.ZipFile(buf, "w") as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name"
        z.writestr(member, npy(np.arange(2, dtype=np.float32)))
        z.writestr(member, npy(np.arange(3, dtype=np.float32)))
    put("npz", "bad_duplicate_member", buf.getvalue())


def stored_zip(members, order=None, extents=None):
    """A stored ZIP written by hand: `members` is [(name, data)], written in that order; the central
    directory lists them in `order` (indices; default: the same order). `extents`, when given,
    replaces the (offset) of a member's local header, for members placed inside another's data."""
    import zlib
    body, entries = b"", []
    for name, data in members:
        n = name.encode()
        crc = zlib.crc32(data) & 0xffffffff
        entries.append((n, crc, len(data), len(body)))
        body += struct.pack("<IHHHHHIIIHH", 0x04034b50, 20, 0, 0, 0, 33, crc, len(data), len(data), len(n), 0) + n + data
    if extents:
        entries = [(n, crc, size, extents.get(n.decode(), off)) for n, crc, size, off in entries]
    cd = b""
    for i in (order if order is not None else range(len(entries))):
        n, crc, size, off = entries[i]
        cd += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014b50, (3 << 8) | 20, 20, 0, 0, 0, 33, crc, size, size, len(n),
                          0, 0, 0, 0, 0o100644 << 16, off) + n
    count = len(order) if order is not None else len(entries)
    return body + cd + struct.pack("<IHHHHIIH", 0x06054b50, 0, 0, count, count, len(cd), len(body), 0)


def npz_order_seeds():
    """Members in any order (numpy reads them so), but never sharing a byte. Standard library only."""
    def u8(data):
        return npy_raw_header("{'descr': '|u1', 'fortran_order': False, 'shape': (%d,), }" % len(data), data)
    a, b, c = u8(b"\x01\x02\x03"), u8(b"\x04\x05"), u8(b"\x06")
    put("npz", "valid_reversed_directory", stored_zip([("a.npy", a), ("b.npy", b), ("c.npy", c)], order=[2, 1, 0]))
    put("npz", "valid_shuffled_directory", stored_zip([("a.npy", a), ("b.npy", b), ("c.npy", c)], order=[1, 2, 0]))
    # b's local header and data lie inside a's data: listed first, b is read before a, and only
    # the check of all members together finds that they overlap.
    inner_name = b"b.npy"
    inner = struct.pack("<IHHHHHIIIHH", 0x04034b50, 20, 0, 0, 0, 33, __import__("zlib").crc32(b) & 0xffffffff,
                        len(b), len(b), len(inner_name), 0) + inner_name + b
    outer = u8(inner)
    b_offset = 30 + len(b"a.npy") + (len(outer) - len(inner))
    put("npz", "bad_overlap_listed_first", stored_zip([("a.npy", outer), ("b.npy", b)], order=[1, 0],
                                                      extents={"b.npy": b_offset}))


# --- json_config --------------------------------------------------------------------------------

def json_seeds(duquant):
    ckpt = os.path.join(FIXTURES, "pi05_tiny.safetensors")
    layers = ["paligemma_with_expert.gemma_expert.model.layers.0.self_attn.k_proj",
              "paligemma_with_expert.gemma_expert.model.layers.0.mlp.down_proj"]
    with tempfile.TemporaryDirectory() as tmp:
        plain = os.path.join(tmp, "plain")
        subprocess.run([duquant, "pack", ckpt, "-o", plain, "--layers", ",".join(layers), "--block", "8",
                        "--wbits-rule", "k_proj=8"], check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(plain, "manifest.json"), "rb") as f:
            manifest = f.read()
        put("json_config", "valid_manifest", manifest)
        dump = os.path.join(tmp, "dump.h5")
        with h5py.File(dump, "w") as h:
            for name, width in zip(layers, [64, 256]):
                g = h.create_group(name)
                for call in range(3):
                    g.create_dataset(f"x_{call:04d}", data=rng.standard_normal((8, width)).astype(np.float32))
        calib = os.path.join(tmp, "calib")
        subprocess.run([duquant, "pack", ckpt, "-o", calib, "--layers", ",".join(layers), "--calib", dump,
                        "--calib-steps", "2", "--smooth-alpha", "0.5"], check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(calib, "manifest.json"), "rb") as f:
            put("json_config", "valid_manifest_calibrated", f.read())
    m = json.loads(manifest)
    put("json_config", "valid_config_object", json.dumps({"config": m["config"]}, indent=1).encode())
    put("json_config", "valid_config_flat", json.dumps({
        "scope": "model.", "include": ".*(q_proj|fc1).*", "exclude": "norm", "block": 32, "block_out": "16",
        "permute": False, "row_rot": "propagate", "lambda_smooth": 0.2, "act_pct": 99.5, "calib_steps": 8,
        "wbits_default": 4, "abits": 8, "include_action_head": True, "layers": ["a.q_proj", "b.fc1"],
        "wbits": {"a.q_proj": 8}, "wbits_rules": [{"pattern": "fc1$", "bits": 6}], "runtime": "gr00t",
        "preset": None}).encode())
    broken = json.loads(manifest)
    broken["format_version"] = 99
    broken["config"]["block"] = 0  # a --config file reads only "config"
    put("json_config", "bad_manifest_version_and_block", json.dumps(broken).encode())
    put("json_config", "bad_unknown_key", b'{"block": 16, "blocks": 32}')
    put("json_config", "bad_block_zero", b'{"block": 0}')
    put("json_config", "bad_duplicate_key", b'{"block": 16, "block": 32}')
    put("json_config", "bad_regex", b'{"include": "(unclosed"}')
    put("json_config", "bad_nesting", b"[" * 100 + b"]" * 100)
    put("json_config", "bad_invalid_utf8", b'{"scope": "\xff\xfe"}')


# --- calib_dump ---------------------------------------------------------------------------------

def h5_seed(name, build, **file_kw):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "d.h5")
        with h5py.File(path, "w", **file_kw) as h:
            build(h, tmp)
        with open(path, "rb") as f:
            put("calib_dump", name, f.read())


def x(rows, cols, dtype=np.float32):
    return rng.standard_normal((rows, cols)).astype(dtype)


def calib_seeds():
    def f32_contiguous(h, _):
        h.create_group("m.l0.q_proj").create_dataset("x_0000", data=x(3, 8))
        g = h.create_group("m.l0.o_proj")
        g.create_dataset("x_0000", data=x(2, 16))
        g.create_dataset("x_0001", data=rng.standard_normal((2, 2, 16)).astype(np.float32))
        h.create_group("m.l1.empty")
    h5_seed("valid_f32_contiguous", f32_contiguous)

    def f16_chunked(h, _):
        g = h.create_group("m.fc1")
        g.create_dataset("x_0000", data=x(16, 8, np.float16), chunks=(4, 8), compression="gzip", shuffle=True,
                         fletcher32=True)
        g.create_dataset("x_0002", data=x(5, 8, np.float16), chunks=(2, 8))
    h5_seed("valid_f16_chunked_filters", f16_chunked)

    def bf16(h, _):
        d = h.create_group("m.gate_proj").create_dataset("x_0000", data=rng.integers(0x3c00, 0x4000, (3, 4), np.uint16))
        d.attrs["dtype"] = "bfloat16"  # a variable-length string, as h5py writes a str
    h5_seed("valid_bf16_vlen_attribute", bf16)

    def bf16_fixed(h, _):
        d = h.create_group("m.up_proj").create_dataset("x_0000", data=rng.integers(0x3c00, 0x4000, (2, 4), np.uint16),
                                                       chunks=(1, 4), compression="gzip")
        d.attrs["dtype"] = np.bytes_("bfloat16")
    h5_seed("valid_bf16_fixed_attribute", bf16_fixed)

    def compact(h, _):
        g = h.create_group("m.down_proj")
        data = x(2, 4)
        space = h5py.h5s.create_simple(data.shape)
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        dcpl.set_obj_track_times(False)
        h5py.h5d.create(g.id, b"x_0000", h5py.h5t.IEEE_F32LE, space, dcpl=dcpl).write(
            h5py.h5s.ALL, h5py.h5s.ALL, data)
    h5_seed("valid_compact", compact)

    h5_seed("bad_float64", lambda h, _: h.create_group("m.q").create_dataset("x_0000", data=x(2, 4, np.float64)))
    h5_seed("bad_int32", lambda h, _: h.create_group("m.q").create_dataset("x_0000", data=np.zeros((2, 4), np.int32)))
    h5_seed("bad_rank1", lambda h, _: h.create_group("m.q").create_dataset("x_0000", data=np.zeros(4, np.float32)))
    h5_seed("bad_call_name", lambda h, _: h.create_group("m.q").create_dataset("y_0000", data=x(2, 4)))
    h5_seed("bad_dataset_at_root", lambda h, _: h.create_dataset("x_0000", data=x(2, 4)))
    h5_seed("bad_no_layers", lambda h, _: None)
    h5_seed("bad_uint16_without_attribute",
            lambda h, _: h.create_group("m.q").create_dataset("x_0000", data=np.zeros((2, 4), np.uint16)))

    def soft(h, _):
        g = h.create_group("m.q")
        g.create_dataset("x_0000", data=x(2, 4))
        g["x_0001"] = h5py.SoftLink("/m.q/x_0000")
    h5_seed("bad_soft_link", soft)

    def hard(h, _):
        g = h.create_group("m.q")
        g.create_dataset("x_0000", data=x(2, 4))
        g["x_0001"] = g["x_0000"]
    h5_seed("bad_hard_link_second_name", hard)

    def external_link(h, _):
        h.create_group("m.q")["x_0000"] = h5py.ExternalLink("other.h5", "/x")
    h5_seed("bad_external_link", external_link)

    def external_storage(h, _):
        h.create_group("m.q").create_dataset("x_0000", shape=(2, 4), dtype=np.float32, external=[("raw.bin", 0, 32)])
    h5_seed("bad_external_storage", external_storage)

    def virtual(h, tmp):
        src = os.path.join(tmp, "src.h5")
        with h5py.File(src, "w") as s:
            s.create_dataset("x", data=x(2, 4))
        layout = h5py.VirtualLayout(shape=(2, 4), dtype=np.float32)
        layout[:] = h5py.VirtualSource("src.h5", "x", shape=(2, 4))
        dcpl = layout._get_dcpl(h.filename)
        dcpl.set_obj_track_times(False)  # no creation time: the same bytes every time
        h5py.h5d.create(h.create_group("m.q").id, b"x_0000", h5py.h5t.IEEE_F32LE, h5py.h5s.create_simple((2, 4)),
                        dcpl=dcpl)
    h5_seed("bad_virtual_dataset", virtual)

    def scaleoffset(h, _):
        h.create_group("m.q").create_dataset("x_0000", data=x(4, 4), chunks=(2, 4), scaleoffset=3)
    h5_seed("bad_scaleoffset_filter", scaleoffset)

    with open(os.path.join(SEEDS, "calib_dump", "valid_f32_contiguous"), "rb") as f:
        whole = f.read()
    put("calib_dump", "bad_truncated", whole[: len(whole) * 2 // 3])

    def st_dump(tensors):
        header, data = {}, b""
        for key, arr, dtype in tensors:
            raw = arr.tobytes()
            header[key] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [len(data), len(data) + len(raw)]}
            data += raw
        return st_bytes(header, data)
    put("calib_dump", "valid_safetensors", st_dump([
        ("m.q_proj.x_0000", x(2, 4), "F32"), ("m.q_proj.x_0001", x(3, 4, np.float16), "F16"),
        ("m.fc1.x_0000", rng.integers(0x3c00, 0x4000, (2, 2, 4), np.uint16), "BF16")]))
    put("calib_dump", "bad_safetensors_key", st_dump([("m.q_proj.y_0000", x(2, 4), "F32")]))
    put("calib_dump", "bad_safetensors_rank1", st_dump([("m.q_proj.x_0000", np.zeros(4, np.float32), "F32")]))
    put("calib_dump", "bad_safetensors_nan", st_dump([("m.q_proj.x_0000", np.full((2, 4), np.nan, np.float32), "F32")]))


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    shutil.rmtree(SEEDS, ignore_errors=True)
    safetensors_seeds()
    npz_seeds()
    npz_order_seeds()
    json_seeds(os.path.abspath(sys.argv[1]))
    calib_seeds()
    for target in sorted(os.listdir(SEEDS)):
        files = os.listdir(os.path.join(SEEDS, target))
        size = sum(os.path.getsize(os.path.join(SEEDS, target, f)) for f in files)
        print(f"{target}: {len(files)} seeds, {size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
