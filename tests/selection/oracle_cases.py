#!/usr/bin/env python3
"""Runs python_re_oracle.py on many selections: every preset and custom flag sets on the fixture
(suite 'fixture'), every OpenPI preset on an 18-layer synth checkpoint at factor 16 made with the
binary (suite 'synth'), and the GR00T preset plus variants on a small GR00T-named checkpoint
written here (suite 'gr00t').

Usage: oracle_cases.py --binary DUQUANT --fixture PI05_TINY --workdir DIR --suite fixture|synth|gr00t
Exit code 0 when every case agrees, 1 otherwise, 77 (skipped) on a Python too old to run them.
Standard library only (no numpy).
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ORACLE = os.path.join(HERE, "python_re_oracle.py")
EXPERT = "paligemma_with_expert.gemma_expert.model."

FIXTURE_CASES = [
    ([], 40),
    (["--include-action-head"], 41),
    (["--preset", "openpi-dit-qkvo"], 8),
    (["--preset", "openpi-dit"], 14),
    (["--preset", "openpi-llm"], 14),
    (["--preset", "openpi-full"], 28),
    (["--preset", "openpi-llm-dit-mlp"], 20),
    (["--scope", "paligemma_with_expert.paligemma.model.vision_tower.", "--include", r"fc\d"], 4),
    (["--include", r"(?P<kind>q|k)_proj", "--exclude", r"layers\.1\."], None),
    (["--include", r"(?<!action_)out_proj|(?:^|\.)dense$", "--exclude", "^$"], None),
    (["--include", r"layers\.\d{,1}\.mlp\.(?=up|down)"], None),
    (["--include", r"^(?!.*vision).*_proj$", "--include-action-head"], None),
    (["--include", "", "--exclude", r"(?:^|\.)(norm|ln|layernorm|emb)(?:\.|$)|time_mlp"], None),
    (["--scope", EXPERT, "--layers", EXPERT + "layers.1.mlp.up_proj," + EXPERT + "layers.0.input_layernorm.dense,"
      "action_in_proj", "--include", "nothing"], 2),
    (["--layers", "action_out_proj,time_mlp_in", "--include-action-head"], 2),
    (["--preset", "openpi-dit", "--wbits-default", "8", "--wbits", EXPERT + "layers.0.mlp.up_proj:3"], 14),
]
SYNTH_CASES = [
    (["--preset", "openpi-dit-qkvo"], 72),
    (["--preset", "openpi-dit"], 126),
    (["--preset", "openpi-llm"], 126),
    (["--preset", "openpi-full"], 252),
    (["--preset", "openpi-llm-dit-mlp"], 180),
    ([], None),
    (["--include", r"(?:^|\.)layers\.1\d\.(self_attn|mlp)\.[a-z]+_proj$"], 8 * 7 * 2 + 10 * 4),  # LLM+expert layers 10-17, vision 10-19 q/k/v/out
]
GR00T_EXCLUDE_NO_HEAD_ATTN = r"(?:^|\.)(vision|radio|norm|ln|layernorm|embed|lm_head)(?:\.|$)"
GR00T_CASES = [
    # 4 LLM layers x 7 + vision_model q_proj (its component is not 'vision') + 2 action-head MLPs x 3
    (["--preset", "gr00t-llm-dit-mlp"], 35),
    (["--preset", "gr00t-llm-dit-mlp", "--exclude", GR00T_EXCLUDE_NO_HEAD_ATTN], 37),  # + self_attn.mlp.up_proj
    (["--preset", "gr00t-llm-dit-mlp", "--exclude", "^$"], 38),  # + vision.q_proj
    ([], 48),
    (["--preset", "gr00t-llm-dit-mlp", "--scope", "action_head."], 6),
]


def gr00t_names():
    """(name, shape) in storage order; layers stored 0, 1, 10, 2 to exercise numeric order."""
    names = []
    lm = "backbone.eagle_model.language_model.model."
    names.append((lm + "embed_tokens.weight", [64, 32]))
    for i in (0, 1, 10, 2):
        p = lm + "layers.%d." % i
        for proj, shape in (("q_proj", [32, 32]), ("k_proj", [16, 32]), ("v_proj", [16, 32]), ("o_proj", [32, 32])):
            names.append((p + "self_attn." + proj + ".weight", shape))
        for proj, shape in (("gate_proj", [64, 32]), ("up_proj", [64, 32]), ("down_proj", [32, 64])):
            names.append((p + "mlp." + proj + ".weight", shape))
        names.append((p + "input_layernorm.weight", [32]))
    names.append((lm + "norm.weight", [32]))
    names.append(("backbone.eagle_model.language_model.lm_head.weight", [64, 32]))
    # Include matches both vision towers; the exclude's 'vision' component removes only the first.
    for tower in ("vision", "vision_model"):
        p = "backbone.eagle_model.%s.encoder.layers.0." % tower
        names.append((p + "self_attn.q_proj.weight", [16, 16]))
        names.append((p + "self_attn.q_proj.bias", [16]))
        names.append((p + "mlp.fc1.weight", [32, 16]))
    names.append(("backbone.eagle_model.mlp1.1.weight", [32, 16]))
    for i in (0, 1):
        p = "action_head.model.layers.%d." % i
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names.append((p + "self_attn." + proj + ".weight", [24, 24]))
        # Matched by the include's action_head MLP branch, removed by the action_head self_attn exclude.
        names.append((p + "self_attn.mlp.up_proj.weight", [24, 24]))
        for proj, shape in (("gate_proj", [48, 24]), ("up_proj", [48, 24]), ("down_proj", [24, 48])):
            names.append((p + "mlp." + proj + ".weight", shape))
        names.append((p + "norm1.weight", [24]))
    names.append(("action_head.action_out_proj.weight", [8, 24]))
    names.append(("action_head.action_out_proj.bias", [8]))
    return names


def write_safetensors(path, tensors):
    """F32 zeros, header and data in the order given."""
    header, offset = {}, 0
    for name, shape in tensors:
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + 4 * n]}
        offset += 4 * n
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.write(b"\0" * offset)


def run_case(binary, ckpt, args, count, workdir, index):
    out = os.path.join(workdir, "case%02d.json" % index)
    r = subprocess.run([binary, "list-linears", ckpt, "--json"] + args, capture_output=True, text=True)
    if r.returncode != 0:
        print("FAIL %s %s: duquant exit %d\n%s" % (ckpt, args, r.returncode, r.stderr))
        return False
    with open(out, "w") as f:
        f.write(r.stdout)
    cmd = [sys.executable, ORACLE, "--json", out, "--checkpoint", ckpt] + args
    if count is not None:
        cmd += ["--expect-count", str(count)]
    o = subprocess.run(cmd, capture_output=True, text=True)
    print(("ok  " if o.returncode == 0 else "FAIL") + " %s: %s" % (args, o.stdout.strip() + o.stderr.strip()))
    return o.returncode == 0


def main():
    if sys.version_info < (3, 7):  # older re lacks what the cases use: report skipped, not passed
        print("Python %s is too old for these cases: skipped" % sys.version.split()[0])
        return 77
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--suite", required=True, choices=["fixture", "synth", "gr00t"])
    a = ap.parse_args()
    workdir = os.path.join(a.workdir, a.suite)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    if a.suite == "fixture":
        ckpt, cases = a.fixture, FIXTURE_CASES
    elif a.suite == "synth":
        ckpt, cases = os.path.join(workdir, "synth16.safetensors"), SYNTH_CASES
        subprocess.run([a.binary, "synth", "-o", ckpt, "--factor", "16"], check=True, capture_output=True)
    else:
        ckpt, cases = os.path.join(workdir, "gr00t_small.safetensors"), GR00T_CASES
        write_safetensors(ckpt, gr00t_names())
    results = [run_case(a.binary, ckpt, args, count, workdir, i) for i, (args, count) in enumerate(cases)]
    print("%d of %d cases agree with Python's re" % (sum(results), len(results)))
    if all(results):
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
