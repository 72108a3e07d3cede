#!/usr/bin/env python3
"""Guard against a quadratic regression (docs/benchmarks.md, "Cost against the number of linear
layers"): list-linears (text and --json) and inspect on a sharded checkpoint of N tiny linear
layers with an index of N entries and a --config naming every layer in "wbits"; pack, verify and
pack --calib (a dump of one call per layer) of P such layers. Not a timing assertion: CTest's
TIMEOUT is the guard (quadratic cost at these sizes runs for many minutes: verify scanned the
manifest per layer, 88 s at 10,000 layers; list-linears --json rescanned its wbits object, 47.7 s at
100,000).

scale_guard.py --binary DUQUANT --workdir DIR --layers N [--pack-layers P]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--pack-layers", type=int, default=0)
    a = ap.parse_args()

    def data(n):
        d = os.path.join(a.workdir, f"n{n}")
        if not os.path.exists(os.path.join(d, "calib.safetensors")):
            subprocess.run([sys.executable, os.path.join(HERE, "..", "..", "benchmarks", "scale_gen.py"), str(n), d],
                           check=True)
        return os.path.join(d, "ckpt"), os.path.join(d, "config.json"), os.path.join(d, "calib.safetensors"), d

    ckpt, cfg, _, _ = data(a.layers)
    text = subprocess.run([a.binary, "list-linears", ckpt, "--config", cfg], check=True, capture_output=True, text=True)
    assert f"[DUQUANT] Dry-run total layers listed: {a.layers}" in text.stdout, text.stdout[-500:]
    listed = subprocess.run([a.binary, "list-linears", ckpt, "--config", cfg, "--json"], check=True,
                            capture_output=True, text=True)
    report = json.loads(listed.stdout)
    assert len(report["layers"]) == a.layers and len(report["config"]["wbits"]) == a.layers
    subprocess.run([a.binary, "inspect", ckpt], check=True, capture_output=True)
    print(f"OK: {a.layers} linear layers listed (text and --json) and inspected")
    if a.pack_layers <= 0:
        return
    ckpt, cfg, calib, d = data(a.pack_layers)
    for out, extra in (("pack", []), ("pack-calib", ["--calib", calib, "--calib-steps", "1"])):
        out = os.path.join(d, out)
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run([a.binary, "pack", ckpt, "-o", out, "--config", cfg] + extra, check=True, capture_output=True)
        subprocess.run([a.binary, "verify", out], check=True, capture_output=True)
        shutil.rmtree(out, ignore_errors=True)
    print(f"OK: {a.pack_layers} linear layers packed, packed with --calib and verified")


if __name__ == "__main__":
    main()
