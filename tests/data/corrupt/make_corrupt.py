#!/usr/bin/env python3
"""Regenerates the hand-made corrupt safetensors files (one per failure kind) in this folder.

Each case is a single .safetensors file, or a folder holding a model.safetensors.index.json and
its shards. expected.json maps every name to the ErrorKind Checkpoint::open must raise ("format" or
"io") and a substring its message must contain (tests/formats/test_corrupt_files.cpp checks both,
and that the message names the file). Standard library only; run: python3 make_corrupt.py
"""
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = {}  # name -> (kind, message substring)


def header_bytes(header, pad_to=8):
    """8-byte little-endian length + header text (a dict is dumped) padded with spaces."""
    text = header if isinstance(header, bytes) else (
        header.encode() if isinstance(header, str) else json.dumps(header, separators=(",", ":")).encode())
    if pad_to:
        text += b" " * ((pad_to - len(text) % pad_to) % pad_to)
    return struct.pack("<Q", len(text)) + text


def f32(name, begin, count=2, shape=None):
    return name, {"dtype": "F32", "shape": shape if shape is not None else [count],
                  "data_offsets": [begin, begin + 4 * count]}


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def single(name, kind, message, data):
    write(os.path.join(HERE, name), data)
    CASES[name] = {"kind": kind, "message": message}


def st(name, kind, message, header, data=b"", pad_to=8):
    single(name, kind, message, header_bytes(header, pad_to) + data)


def valid_file(tensors):
    """A valid safetensors file of F32 tensors given as (name, element count)."""
    header, offset = {}, 0
    for tname, count in tensors:
        header[tname] = {"dtype": "F32", "shape": [count], "data_offsets": [offset, offset + 4 * count]}
        offset += 4 * count
    return header_bytes(header) + bytes(i % 251 for i in range(offset))


def sharded(name, kind, message, index, shards, extra=None):
    folder = os.path.join(HERE, name)
    index_text = index if isinstance(index, (bytes, str)) else json.dumps(index, indent=1)
    write(os.path.join(folder, "model.safetensors.index.json"),
          index_text.encode() if isinstance(index_text, str) else index_text)
    for shard, tensors in shards.items():
        write(os.path.join(folder, shard), valid_file(tensors))
    for fname, data in (extra or {}).items():
        write(os.path.join(folder, fname), data)
    CASES[name] = {"kind": kind, "message": message}


def clean():
    for entry in os.listdir(HERE):
        if entry in ("make_corrupt.py", "expected.json"):
            continue
        path = os.path.join(HERE, entry)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def single_files():
    w8 = dict([f32("w", 0)])  # one F32 tensor [2] at [0, 8]
    data8 = bytes(8)

    # The 8-byte length prefix and the header bounds.
    single("empty.safetensors", "format", "0 bytes is too short for a safetensors file", b"")
    single("too_short.safetensors", "format", "5 bytes is too short for a safetensors file", b"\x02\0\0\0\0")
    single("header_len_huge.safetensors", "format", "header length 200000000 exceeds the 100000000-byte limit",
           struct.pack("<Q", 200_000_000) + b"{}")
    single("header_len_max_u64.safetensors", "format",
           "header length 18446744073709551615 exceeds the 100000000-byte limit", b"\xff" * 8 + b"{}      ")
    single("header_len_past_eof.safetensors", "format", "header length 64 runs past the end of the 18-byte file",
           struct.pack("<Q", 64) + b'{"w":{}}  ')
    single("header_empty.safetensors", "format", "header does not start with '{' (first byte none: empty header)",
           struct.pack("<Q", 0))

    # The header text: '{' first, then strict JSON (UTF-8, no duplicate keys, bounded nesting).
    st("header_not_brace.safetensors", "format", "header does not start with '{' (first byte 0x5b)", "[]")
    st("header_leading_space.safetensors", "format", "header does not start with '{' (first byte 0x20)", " {}")
    st("header_not_json.safetensors", "format", "header: not valid JSON (byte 7)", '{"w": }')
    st("header_trailing_garbage.safetensors", "format", "header: not valid JSON (byte 4)", "{} []")
    st("header_nul_padding.safetensors", "format", "header: NUL byte at byte 2", b"{}\0\0\0\0\0\0", pad_to=0)
    st("header_invalid_utf8.safetensors", "format", "ill-formed UTF-8 byte",
       b'{"w\xff":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', data8)
    st("header_truncated_utf8.safetensors", "format", "ill-formed UTF-8 byte", b'{"w\xc3":{}}')
    st("header_nesting_too_deep.safetensors", "format", "JSON nested deeper than 3 levels",
       '{"w":{"dtype":"F32","shape":[[[2]]],"data_offsets":[0,8]}}', data8)
    st("header_number_overflow.safetensors", "format", "number overflow parsing '1e500'",
       '{"w":{"dtype":"F32","shape":[1e500],"data_offsets":[0,8]}}', data8)
    # Found by tests/fuzz/fuzz_safetensors_header against the first reader (an uncaught
    # nlohmann out_of_range exception, exit code 70): kept byte for byte as a regression.
    single("fuzz_number_overflow.safetensors", "format", "number overflow parsing '211e3474836'",
           bytes.fromhex("50000000000000007b2277223a7b226474797065223a22463333222c227368617065223a5b323134373438333634382c32313165333437343833363c34385d2c22646174615f6f666673657473223a5b302c385d7d7d2020202000200020000000000000"))
    st("duplicate_tensor.safetensors", "format", "duplicate key 'w'",
       '{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
       data8)
    st("duplicate_field.safetensors", "format", "duplicate key 'dtype' in 'w'",
       '{"w":{"dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8]}}', data8)

    # One tensor entry.
    st("entry_not_object.safetensors", "format", "tensor 'w': entry must be an object, found an array",
       {"w": [0, 8]}, data8)
    for field in ("dtype", "shape", "data_offsets"):
        entry = dict(w8["w"])
        del entry[field]
        st(f"missing_{field}.safetensors", "format", f"tensor 'w': missing \"{field}\"", {"w": entry}, data8)
    st("dtype_not_string.safetensors", "format", "tensor 'w': dtype must be a string, found an integer",
       {"w": {"dtype": 32, "shape": [2], "data_offsets": [0, 8]}}, data8)
    st("unknown_dtype.safetensors", "format", "tensor 'w': unknown dtype 'F128'",
       {"w": {"dtype": "F128", "shape": [2], "data_offsets": [0, 8]}}, data8)
    st("dtype_lowercase.safetensors", "format", "tensor 'w': unknown dtype 'f32'",
       {"w": {"dtype": "f32", "shape": [2], "data_offsets": [0, 8]}}, data8)
    st("shape_not_array.safetensors", "format", "tensor 'w': shape must be an array, found an integer",
       {"w": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}}, data8)
    st("negative_dim.safetensors", "format",
       "tensor 'w': shape must hold non-negative integers, found a negative integer (-2)",
       {"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, data8)
    st("float_dim.safetensors", "format",
       "tensor 'w': shape must hold non-negative integers, found a non-integer number (2.5)",
       {"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}}, data8)
    st("float_dim_exponent.safetensors", "format",
       "tensor 'w': shape must hold non-negative integers, found a non-integer number (1000.0)",
       '{"w":{"dtype":"F32","shape":[1e3],"data_offsets":[0,4000]}}', bytes(4000))
    st("dim_too_big.safetensors", "format",
       "tensor 'w': shape must hold non-negative integers, found a non-integer number (1.8446744073709552e+19)",
       '{"w":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,8]}}', data8)
    st("dim_string.safetensors", "format",
       "tensor 'w': shape must hold non-negative integers, found a string (\"2\")",
       {"w": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}}, data8)
    st("shape_overflow.safetensors", "format",
       "tensor 'w': shape [4294967296, 4294967296] has 2^64 or more elements",
       {"w": {"dtype": "U8", "shape": [2**32, 2**32], "data_offsets": [0, 8]}}, data8)
    st("bytes_overflow.safetensors", "format",
       "tensor 'w': 4611686018427387904 elements of F32 (32 bits each) overflow a 64-bit bit count",
       {"w": {"dtype": "F32", "shape": [2**31, 2**31], "data_offsets": [0, 8]}}, data8)
    st("offsets_one.safetensors", "format",
       "tensor 'w': data_offsets must be an array of two integers, found [0]",
       {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, data8)
    st("offsets_three.safetensors", "format",
       "tensor 'w': data_offsets must be an array of two integers, found [0,4,8]",
       {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4, 8]}}, data8)
    st("offsets_negative.safetensors", "format",
       "tensor 'w': data_offsets must hold non-negative integers, found a negative integer (-8)",
       {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, -8]}}, data8)
    st("offsets_end_before_begin.safetensors", "format", "tensor 'w': data_offsets [8, 0] end before they begin",
       {"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, data8)
    st("size_mismatch.safetensors", "format",
       "tensor 'w': shape [3] of F32 needs 12 bytes but data_offsets [0, 8] span 8 bytes",
       {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, data8)
    st("f4_odd_count.safetensors", "format",
       "tensor 'w': 3 elements of F4 (4 bits each) are not a whole number of bytes",
       {"w": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}, bytes(2))
    st("f6_odd_count.safetensors", "format",
       "tensor 'w': 5 elements of F6_E2M3 (6 bits each) are not a whole number of bytes",
       {"w": {"dtype": "F6_E2M3", "shape": [5], "data_offsets": [0, 4]}}, bytes(4))

    # The data region: back to back from 0, in offset order, filling it exactly.
    st("overlap.safetensors", "format", "tensor 'b' at data_offsets [4, 12] overlaps tensor 'a' which ends at 8",
       dict([f32("a", 0), f32("b", 4)]), bytes(12))
    st("overlap_same_offsets.safetensors", "format",
       "tensor 'b' at data_offsets [0, 8] overlaps tensor 'a' which ends at 8",
       dict([f32("a", 0), f32("b", 0)]), bytes(8))
    st("gap.safetensors", "format",
       "gap of 4 bytes before tensor 'b' (data_offsets [12, 20], previous data ends at 8)",
       dict([f32("a", 0), f32("b", 12)]), bytes(20))
    st("first_not_at_zero.safetensors", "format",
       "gap of 4 bytes before tensor 'w' (data_offsets [4, 12], previous data ends at 0)",
       dict([f32("w", 4)]), bytes(12))
    st("trailing_bytes.safetensors", "format",
       "3 trailing bytes after the last tensor (tensors cover 8 of the 11-byte data region)", w8, bytes(11))
    st("no_tensors_trailing.safetensors", "format",
       "5 trailing bytes after the last tensor (tensors cover 0 of the 5-byte data region)", {}, bytes(5))
    st("data_one_byte_short.safetensors", "format",
       "tensors need 8 bytes of data but the file holds only 7 (1 byte short)", w8, bytes(7))

    # __metadata__.
    st("metadata_not_object.safetensors", "format", "__metadata__ must be an object of strings, found an array",
       {"__metadata__": ["pt"]})
    st("metadata_non_string.safetensors", "format", "__metadata__['format'] must be a string, found an integer",
       {"__metadata__": {"format": 1}})
    st("metadata_nested_object.safetensors", "format", "__metadata__['a'] must be a string, found an object",
       {"__metadata__": {"a": {"b": "c"}}})


def sharded_cases():
    one = "model-00001-of-00002.safetensors"
    two = "model-00002-of-00002.safetensors"
    sharded("shard_dotdot", "format",
            "tensor 'a': shard '../model-00001-of-00001.safetensors' escapes the checkpoint's folder through '..'",
            {"weight_map": {"a": "../model-00001-of-00001.safetensors"}}, {})
    sharded("shard_dotdot_inner", "format", "tensor 'a': shard 'sub/../../x.safetensors' escapes the checkpoint's",
            {"weight_map": {"a": "sub/../../x.safetensors"}}, {})
    sharded("shard_absolute", "format", "tensor 'a': shard '/tmp/model.safetensors' is an absolute path",
            {"weight_map": {"a": "/tmp/model.safetensors"}}, {})
    sharded("shard_empty_name", "format", "tensor 'a' maps to an empty shard name", {"weight_map": {"a": ""}}, {})
    sharded("shard_not_safetensors", "format", "tensor 'a': shard 'model.bin' is not a .safetensors file",
            {"weight_map": {"a": "model.bin"}}, {}, extra={"model.bin": bytes(8)})
    sharded("shard_missing", "io", f"shard '{two}' (listed in the index) is missing",
            {"weight_map": {"a": one, "b": two}}, {one: [("a", 2)]})
    sharded("shard_extra_tensor", "format", f"tensor 'b' is in shard '{one}' but not in the index",
            {"weight_map": {"a": one}}, {one: [("a", 2), ("b", 2)]})
    sharded("shard_lacks_tensor", "format", f"tensor 'b' is listed in the index but shard '{one}' lacks it",
            {"weight_map": {"a": one, "b": one}}, {one: [("a", 2)]})
    sharded("shard_wrong_place", "format", f"tensor 'b' is in shard '{one}' but the index places it in '{two}'",
            {"weight_map": {"a": one, "b": two}}, {one: [("a", 2), ("b", 2)], two: [("c", 2)]})
    sharded("shard_duplicate_tensor", "format", f"{two}: tensor 'a' is also stored in",
            {"weight_map": {"a": one, "b": two}}, {one: [("a", 2)], two: [("a", 2), ("b", 2)]})
    sharded("shard_corrupt", "format", "tensors need 8 bytes of data but the file holds only 0",
            {"weight_map": {"a": one}}, {},
            extra={one: header_bytes({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})})
    sharded("index_not_object", "format", "an index must be a JSON object, found an array", '["weight_map"]', {})
    sharded("index_not_json", "format", "not valid JSON (byte 16)", '{"weight_map": }', {})
    sharded("index_number_overflow", "format", "not valid JSON: number overflow parsing '-1e400'",
            '{"metadata": {"total_size": -1e400}, "weight_map": {"a": "model.safetensors"}}', {})
    sharded("index_nul_byte", "format", "NUL byte at byte 2", b'{}\0{"weight_map": {"a": "m.safetensors"}}', {})
    sharded("index_no_weight_map", "format", 'missing "weight_map"', {"metadata": {"total_size": 8}}, {})
    sharded("index_weight_map_not_object", "format", '"weight_map" must be an object, found an array',
            {"weight_map": ["a"]}, {})
    sharded("index_weight_map_empty", "format", '"weight_map" lists no tensors', {"weight_map": {}}, {})
    sharded("index_value_not_string", "format", "weight_map['a'] must be a shard file name, found an integer",
            {"weight_map": {"a": 1}}, {})
    sharded("index_duplicate_key", "format", "duplicate key 'a' in 'weight_map'",
            f'{{"weight_map": {{"a": "{one}", "a": "{one}"}}}}', {one: [("a", 2)]})
    sharded("index_nesting_too_deep", "format", "JSON nested deeper than 4 levels",
            {"metadata": {"x": [[[1]]]}, "weight_map": {"a": one}}, {one: [("a", 2)]})

    # A folder with no checkpoint in it, and one with two candidates and no index.
    folder = os.path.join(HERE, "folder_without_checkpoint")
    write(os.path.join(folder, "README.txt"), b"no safetensors file here\n")
    CASES["folder_without_checkpoint"] = {
        "kind": "io", "message": "cannot tell which checkpoint to open (0 *.safetensors.index.json and 0 *.safetensors"}
    folder = os.path.join(HERE, "folder_two_files")
    write(os.path.join(folder, "a.safetensors"), valid_file([("a", 2)]))
    write(os.path.join(folder, "b.safetensors"), valid_file([("b", 2)]))
    CASES["folder_two_files"] = {
        "kind": "io", "message": "cannot tell which checkpoint to open (0 *.safetensors.index.json and 2 *.safetensors"}


def main():
    clean()
    single_files()
    sharded_cases()
    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump(dict(sorted(CASES.items())), f, indent=1)
        f.write("\n")
    print(f"{len(CASES)} cases written to {HERE}")


if __name__ == "__main__":
    main()
