#!/usr/bin/env python3
"""Runs python_re_oracle.py on many selections: every preset and custom flag sets on the fixture
(suite 'fixture'), every OpenPI preset on an 18-layer synth checkpoint at factor 16 made with the
binary (suite 'synth'), the same on a copy with every name under LeRobot's `model.` (suite
'pi05-lerobot': same layers, same names), and the GR00T port's rules through GR00T_DUQUANT_*
variables, presets and flags on a sharded checkpoint with GR00T N1.5's real module names written
here (suite 'gr00t'; 'gr00t-lerobot': the same under `_groot_model.`).

Usage: oracle_cases.py --binary DUQUANT --fixture PI05_TINY --workdir DIR --suite SUITE
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
    # Python's inline flags: (?u) is the default of str patterns, (?a) makes \w \d \s \b ASCII.
    (["--include", r"(?u)(q|k)_proj"], None),
    (["--include", r"(?a)\bfc\d$", "--exclude", r"(?u)\Wvision_tower\W.*\b1\b"], None),
    (["--include", r"(?a:\w+)\.mlp\.(?u:up|down)_proj", "--exclude", r"(?ai)LAYERS\.1\b"], None),
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
# GR00T N1.5 with its real module names (12 LM layers, 27 vision layers, 16 DiT blocks, 4 VL
# self-attention blocks; reference: gr00t-n15-and-checkpoint-layouts.md), sharded with an index.
SEED_INCLUDE = (r".*(backbone\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|"
                r"action_head\..*\.mlp\.(gate_proj|up_proj|down_proj)).*")
SEED_EXCLUDE = r"(?:^|\.)(vision|radio|norm|ln|layernorm|embed|lm_head)(?:\.|$)|action_head\..*\.self_attn\."
SCRIPT_INCLUDE = (r".*(backbone\.eagle_model\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|"
                  r"down_proj)|action_head\.model\.transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)).*")
SCRIPT_EXCLUDE = r"(?:^|\.)(vision|radio|norm|ln|layernorm|embed|lm_head|attn1)(?:\.|$)"
VL0 = "action_head.vl_self_attention.transformer_blocks.0.attn1.to_q"
DIT0 = "action_head.model.transformer_blocks.0."
G = "GR00T_DUQUANT_"
# (flags, environment, expected count)
GR00T_CASES = [
    (["--env-prefix", G], {}, 180),                                                  # the port's defaults
    (["--env-prefix", G], {G + "INCLUDE": SEED_INCLUDE, G + "EXCLUDE": SEED_EXCLUDE}, 165),  # the seed note's
    (["--env-prefix", G], {G + "INCLUDE": SCRIPT_INCLUDE, G + "EXCLUDE": SCRIPT_EXCLUDE}, 116),  # the run script's
    (["--preset", "gr00t-llm-dit"], {}, 180),
    (["--preset", "gr00t-llm-dit-mlp"], {}, 116),
    (["--runtime", "gr00t"], {}, 180),
    (["--env-prefix", G, "--block", "64", "--no-permute"], {G + "SCOPE": "action_head.model."}, 96),
    # The action-head rule: vl_self_attention and proj_out_* are outside action_head.model. or not
    (["--env-prefix", G], {G + "INCLUDE": r"(to_q|proj_out_\d|linear_2)$", G + "EXCLUDE": "^$"}, 16 + 2 + 1),
    (["--env-prefix", G], {G + "INCLUDE": r"(to_q|proj_out_\d|linear_2)$", G + "EXCLUDE": "^$",
                           G + "INCLUDE_ACTION_HEAD": "1"}, 16 + 4 + 2 + 1),
    (["--env-prefix", G], {G + "LAYERS": VL0 + "," + DIT0 + "attn1.to_q," + DIT0 + "ff.net.2"}, 2),
    (["--env-prefix", G, "--include-action-head"], {G + "LAYERS": VL0 + "," + DIT0 + "ff.net.2"}, 2),
    (["--env-prefix", G], {G + "WBITS": DIT0 + "ff.net.2:8", G + "WBITS_DEFAULT": "3"}, 180),
    # OpenPI's rules on GR00T names: its default include takes the vision tower too
    (["--env-prefix", "OPENPI_DUQUANT_"], {}, 84 + 27 * 6),
]


def gr00t_names(prefix=""):
    """(name, shape) of GR00T N1.5 in module order, widths divided by 64."""
    t = []

    def lin(name, out, inp, bias):
        t.append((name + ".weight", [out, inp]))
        if bias:
            t.append((name + ".bias", [out]))

    lm = "backbone.eagle_model.language_model.model."
    t.append((lm + "embed_tokens.weight", [64, 32]))
    for i in range(12):
        p = lm + "layers.%d." % i
        for proj, o in (("q_proj", 32), ("k_proj", 16), ("v_proj", 16), ("o_proj", 32)):
            lin(p + "self_attn." + proj, o, 32, False)
        t.append((p + "self_attn.q_norm.weight", [2]))
        t.append((p + "self_attn.k_norm.weight", [2]))
        lin(p + "mlp.gate_proj", 96, 32, False)
        lin(p + "mlp.up_proj", 96, 32, False)
        lin(p + "mlp.down_proj", 32, 96, False)
        t.append((p + "input_layernorm.weight", [32]))
        t.append((p + "post_attention_layernorm.weight", [32]))
    t.append((lm + "norm.weight", [32]))
    lin("backbone.eagle_model.language_model.lm_head", 64, 32, False)
    v = "backbone.eagle_model.vision_model.vision_model."
    t.append((v + "embeddings.patch_embedding.weight", [18, 3, 2, 2]))
    t.append((v + "embeddings.position_embedding.weight", [16, 18]))
    for i in range(27):
        p = v + "encoder.layers.%d." % i
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            lin(p + "self_attn." + proj, 18, 18, True)
        lin(p + "mlp.fc1", 67, 18, True)
        lin(p + "mlp.fc2", 18, 67, True)
        t.append((p + "layer_norm1.weight", [18]))
    lin("backbone.eagle_model.mlp1.1", 32, 72, True)
    lin("backbone.eagle_model.mlp1.3", 32, 32, True)
    h = "action_head.model."
    lin(h + "timestep_encoder.timestep_embedder.linear_1", 24, 4, True)
    lin(h + "timestep_encoder.timestep_embedder.linear_2", 24, 24, True)
    for i in range(16):
        p = h + "transformer_blocks.%d." % i
        lin(p + "norm1.linear", 48, 24, True)
        kv_in = 32 if i % 2 == 0 else 24
        lin(p + "attn1.to_q", 24, 24, True)
        lin(p + "attn1.to_k", 24, kv_in, True)
        lin(p + "attn1.to_v", 24, kv_in, True)
        lin(p + "attn1.to_out.0", 24, 24, True)
        lin(p + "ff.net.0.proj", 96, 24, True)
        lin(p + "ff.net.2", 24, 96, True)
    lin(h + "proj_out_1", 48, 24, True)
    lin(h + "proj_out_2", 16, 24, True)
    for i in range(4):
        p = "action_head.vl_self_attention.transformer_blocks.%d." % i
        lin(p + "norm1.linear", 64, 32, True)
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            lin(p + "attn1." + proj, 32, 32, True)
        lin(p + "ff.net.0.proj", 128, 32, True)
        lin(p + "ff.net.2", 32, 128, True)
    for enc, layers in (("state_encoder", ("layer1", "layer2")), ("action_encoder", ("W1", "W2", "W3")),
                        ("action_decoder", ("layer1", "layer2"))):
        for layer in layers:
            t.append(("action_head.%s.%s.W" % (enc, layer), [2, 24, 24]))  # category-specific: 3-D
            t.append(("action_head.%s.%s.b" % (enc, layer), [2, 24]))
    t.append(("action_head.position_embedding.weight", [16, 24]))
    t.append(("action_head.future_tokens.weight", [4, 24]))  # an nn.Embedding without "embed" in its name
    return [(prefix + n, shape) for n, shape in t]


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


def write_sharded(folder, tensors, shards=2):
    """F32 zeros in `shards` files named as Hugging Face names them, and model.safetensors.index.json."""
    os.makedirs(folder, exist_ok=True)
    per = (len(tensors) + shards - 1) // shards
    weight_map = {}
    for k in range(shards):
        name = "model-%05d-of-%05d.safetensors" % (k + 1, shards)
        part = tensors[k * per:(k + 1) * per]
        write_safetensors(os.path.join(folder, name), part)
        weight_map.update({n: name for n, _ in part})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)


def prefixed_copy(src, dst, prefix):
    """The same safetensors file with every tensor name under `prefix` (LeRobot's layout)."""
    with open(src, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        out[k if k == "__metadata__" else prefix + k] = v
    text = json.dumps(out).encode()
    text += b" " * (-len(text) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.write(data)


def run_case(binary, ckpt, args, count, workdir, index, env=None, layout_prefix=""):
    out = os.path.join(workdir, "case%02d.json" % index)
    full_env = dict(os.environ)
    for k in list(full_env):
        if k.startswith("OPENPI_DUQUANT_") or k.startswith("GR00T_DUQUANT_"):
            del full_env[k]
    full_env.update(env or {})
    r = subprocess.run([binary, "list-linears", ckpt, "--json"] + args, capture_output=True, text=True, env=full_env)
    if r.returncode != 0:
        print("FAIL %s %s %s: duquant exit %d\n%s" % (ckpt, args, env, r.returncode, r.stderr))
        return False
    with open(out, "w") as f:
        f.write(r.stdout)
    cmd = [sys.executable, ORACLE, "--json", out, "--checkpoint", ckpt, "--layout-prefix", layout_prefix] + args
    if count is not None:
        cmd += ["--expect-count", str(count)]
    o = subprocess.run(cmd, capture_output=True, text=True, env=full_env)
    print(("ok  " if o.returncode == 0 else "FAIL") + " %s %s: %s" % (args, env or "", o.stdout.strip() + o.stderr.strip()))
    return o.returncode == 0


def same_names(binary, plain, prefixed, args):
    """The prefixed checkpoint selects the same layers, named the same, as the plain one."""
    got = []
    for ckpt in (plain, prefixed):
        r = subprocess.run([binary, "list-linears", ckpt, "--json"] + args, capture_output=True, text=True)
        if r.returncode != 0:
            print("FAIL %s %s: exit %d\n%s" % (ckpt, args, r.returncode, r.stderr))
            return False
        got.append([(l["name"], l["shape"], l["bias"]) for l in json.loads(r.stdout)["layers"]])
    ok = got[0] == got[1] and len(got[0]) > 0
    print(("ok  " if ok else "FAIL") + " %s: %d layers on both layouts" % (args, len(got[0])))
    return ok


def main():
    if sys.version_info < (3, 7):  # older re lacks what the cases use: report skipped, not passed
        print("Python %s is too old for these cases: skipped" % sys.version.split()[0])
        return 77
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--suite", required=True, choices=["fixture", "synth", "gr00t", "gr00t-lerobot", "pi05-lerobot"])
    a = ap.parse_args()
    workdir = os.path.join(a.workdir, a.suite)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    results = []
    if a.suite in ("fixture", "synth"):
        if a.suite == "fixture":
            ckpt, cases = a.fixture, FIXTURE_CASES
        else:
            ckpt, cases = os.path.join(workdir, "synth16.safetensors"), SYNTH_CASES
            subprocess.run([a.binary, "synth", "-o", ckpt, "--factor", "16"], check=True, capture_output=True)
        results = [run_case(a.binary, ckpt, args, count, workdir, i) for i, (args, count) in enumerate(cases)]
    elif a.suite in ("gr00t", "gr00t-lerobot"):
        prefix = "_groot_model." if a.suite == "gr00t-lerobot" else ""
        ckpt = os.path.join(workdir, "gr00t")
        write_sharded(ckpt, gr00t_names(prefix))
        results = [run_case(a.binary, ckpt, args, count, workdir, i, env, prefix)
                   for i, (args, env, count) in enumerate(GR00T_CASES)]
        if prefix:
            plain = os.path.join(workdir, "gr00t-plain")
            write_sharded(plain, gr00t_names())
            for preset in ("gr00t-llm-dit", "gr00t-llm-dit-mlp"):
                results.append(same_names(a.binary, plain, ckpt, ["--preset", preset]))
    else:  # pi05-lerobot: every OpenPI preset on a model.-prefixed full-depth synth
        plain = os.path.join(workdir, "synth16.safetensors")
        ckpt = os.path.join(workdir, "lerobot16.safetensors")
        subprocess.run([a.binary, "synth", "-o", plain, "--factor", "16"], check=True, capture_output=True)
        prefixed_copy(plain, ckpt, "model.")
        for i, (args, count) in enumerate(SYNTH_CASES):
            results.append(run_case(a.binary, ckpt, args, count, workdir, i, None, "model."))
            results.append(same_names(a.binary, plain, ckpt, args))
    print("%d of %d cases agree with Python's re" % (sum(results), len(results)))
    if all(results):
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
