#!/usr/bin/env python3
"""Cross-check of duquant's layer selection against Python's own `re`.

Given the JSON of `duquant list-linears CKPT --json [selection flags]` and the checkpoint, this
reimplements the runtimes' selection (OpenPI: reference section 5; the GR00T port: its
duquant_layers.py rules) with Python's `re.search` and asserts that duquant lists the same layers,
in the same order, with the same shapes, dtypes and bits.

Usage:
  python_re_oracle.py --json OUT.json --checkpoint CKPT [--layout-prefix P] [selection flags]

Selection flags understood: --preset P, --runtime openpi|gr00t, --env-prefix X (reads X* from the
environment as the runtime does), --scope S, --include RE, --exclude RE, --layers A,B,
--include-action-head, --wbits-default N, --wbits name:bits,... (as given to duquant; the preset
table below is written from the runtimes' run scripts, independently of duquant's).
--layout-prefix P: the checkpoint stores the model under P (LeRobot's `model.`, `_groot_model.`);
the runtime's modules are named without it, and tensors outside it are no part of the model.
CKPT may be a .safetensors file, a sharded index or a folder holding one.
Only the standard library is used (json + struct read the safetensors headers).
Exit code 0: same selection; 1: a difference (printed).
"""
import argparse
import json
import os
import re
import struct
import sys

DEFAULT_INCLUDE = r".*(q_proj|k_proj|v_proj|o_proj|out_proj|fc1|fc2|gate_proj|up_proj|down_proj).*"
DEFAULT_EXCLUDE = r"(?:^|\.)(norm|ln|layernorm|emb)(?:\.|$)"
EXPERT = "paligemma_with_expert.gemma_expert.model."
LLM = "paligemma_with_expert.paligemma.model.language_model."
PROJ = "(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
MLP = "(gate_proj|up_proj|down_proj)"

GR00T_INCLUDE = (r".*(?:backbone\.eagle_model\.language_model\..*\.(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|"
                 r"down_proj)|action_head\.model\..*(?:attn1\.to_(?:q|k|v)|attn1\.to_out\.0|ff\.net\.(?:0\.proj|2))).*")
GR00T_EXCLUDE = (r"(?:^|\.)(?:vision_model|vision|radio|norm|ln|layernorm|embed|lm_head|timestep_encoder|state_encoder|"
                 r"action_encoder|action_decoder|future_tokens|vl_self_attention)(?:\.|$)")

PRESETS = {
    "openpi-dit-qkvo": {"runtime": "openpi", "scope": EXPERT, "include": r".*(q_proj|k_proj|v_proj|o_proj).*"},
    "openpi-dit": {"runtime": "openpi", "scope": EXPERT},
    "openpi-llm": {"runtime": "openpi", "scope": LLM},
    "openpi-full": {"runtime": "openpi", "scope": "paligemma_with_expert.",
                    "include": r".*(language_model|gemma_expert)\..*" + PROJ + ".*"},
    "openpi-llm-dit-mlp": {"runtime": "openpi", "scope": "paligemma_with_expert.",
                           "include": r".*(language_model\..*\." + PROJ + r"|gemma_expert\..*\.mlp\." + MLP + ").*"},
    # The GR00T port's defaults.
    "gr00t-llm-dit": {"runtime": "gr00t", "scope": "", "include": GR00T_INCLUDE, "exclude": GR00T_EXCLUDE},
    # The published QuantVLA run script: language model (all) + DiT feed-forward, attention excluded.
    "gr00t-llm-dit-mlp": {
        "runtime": "gr00t", "scope": "",
        "include": r".*(backbone\.eagle_model\.language_model\..*\." + PROJ +
                   r"|action_head\.model\.transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)).*",
        "exclude": r"(?:^|\.)(vision|radio|norm|ln|layernorm|embed|lm_head|attn1)(?:\.|$)",
    },
}
DEFAULTS = {"openpi": (DEFAULT_INCLUDE, DEFAULT_EXCLUDE), "gr00t": (GR00T_INCLUDE, GR00T_EXCLUDE)}


def read_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def read_checkpoint(path):
    """[(name, info)] in storage order: shards by file name, then data offset."""
    index = None
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "model.safetensors.index.json")):
            index = os.path.join(path, "model.safetensors.index.json")
        else:
            path = os.path.join(path, "model.safetensors")
    elif path.endswith(".json"):
        index = path
    if index is None:
        files = [path]
    else:
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(os.path.dirname(index), s) for s in shards]
    out = []
    for file in files:
        items = sorted(read_header(file).items(), key=lambda kv: kv[1]["data_offsets"][0])
        out.extend(items)
    return out


def module_order(names):
    """Module-tree order: siblings by first appearance, purely numeric siblings numerically."""
    root = {}  # component -> (children dict, list of indices ending here); dicts keep insertion order
    ends = {}
    for i, name in enumerate(names):
        node = root
        path = ()
        for part in name.split("."):
            path += (part,)
            node = node.setdefault(part, {})
        ends.setdefault(path, []).append(i)
    out = []

    def walk(node, path):
        out.extend(ends.get(path, []))
        keys = list(node)
        if keys and all(k.isdigit() and k.isascii() for k in keys):
            keys.sort(key=int)
        for k in keys:
            walk(node[k], path + (k,))

    walk(root, ())
    return [names[i] for i in out]


def is_embedding(module):
    """Embedding tables are nn.Embedding, not nn.Linear: embed_tokens, position_embedding, and
    GR00T's future_tokens (no 'embed' in its name)."""
    last = module.rsplit(".", 1)[-1]
    return "embed" in last or last == "future_tokens"


def linear_layers(tensors, layout_prefix):
    """The runtime's nn.Linear modules: 2-D '<module>.weight' tensors that are no embedding table,
    named as the runtime names them (without the layout prefix), in module order."""
    layers = {}
    for stored, t in tensors:
        if not stored.startswith(layout_prefix):
            continue
        name = stored[len(layout_prefix):]
        if name.endswith(".weight") and len(name) > len(".weight") and len(t["shape"]) == 2:
            module = name[: -len(".weight")]
            if not is_embedding(module):
                layers[module] = t
    return [(n, layers[n]) for n in module_order(list(layers))]


def is_action_head(name, runtime):
    if runtime == "gr00t":  # the GR00T port: anything of the action head outside its DiT, and action_out_proj
        return ("action_head" in name and not name.startswith("action_head.model.")) or name.endswith("action_out_proj")
    return name == "action_out_proj" or name.endswith(".action_out_proj")


def truthy(value):
    return value not in ("0", "false", "False")


def select(tensors, cfg, layout_prefix=""):
    include = re.compile(cfg["include"])
    exclude = re.compile(cfg["exclude"])
    wanted = [x.strip() for x in cfg["layers"].split(",") if x.strip()]
    wbits = {}
    for item in cfg["wbits"].split(","):
        if item.strip():
            name, bits = item.strip().rsplit(":", 1)
            wbits[name.strip()] = int(bits)
    names = {n[len(layout_prefix):]: t for n, t in tensors if n.startswith(layout_prefix)}
    chosen = []
    for name, t in linear_layers(tensors, layout_prefix):
        if not name.startswith(cfg["scope"]):
            continue
        if wanted:
            if name not in wanted:
                continue
        elif not include.search(name) or exclude.search(name):
            continue
        if is_action_head(name, cfg["runtime"]) and not cfg["include_action_head"]:
            continue
        bias = names.get(name + ".bias")
        has_bias = bias is not None and bias["shape"] == [t["shape"][0]]
        chosen.append({"name": name, "shape": t["shape"], "dtype": t["dtype"],
                       "wbits": wbits.get(name, cfg["wbits_default"]), "bias": has_bias})
    return chosen


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--expect-count", type=int)
    ap.add_argument("--preset")
    ap.add_argument("--runtime", choices=["openpi", "gr00t"])
    ap.add_argument("--env-prefix")
    ap.add_argument("--layout-prefix", default="")
    ap.add_argument("--scope")
    ap.add_argument("--include")
    ap.add_argument("--exclude")
    ap.add_argument("--layers")
    ap.add_argument("--include-action-head", action="store_true")
    ap.add_argument("--wbits-default", type=int)
    ap.add_argument("--wbits")
    ap.add_argument("--block")  # quantization flags: no effect on the selection
    ap.add_argument("--no-permute", action="store_true")
    a = ap.parse_args()

    # The runtime: --runtime, else the preset's, else the environment prefix's.
    runtime = "openpi"
    if a.env_prefix:
        runtime = "gr00t" if a.env_prefix == "GR00T_DUQUANT_" else "openpi"
    if a.preset:
        runtime = PRESETS[a.preset]["runtime"]
    if a.runtime:
        runtime = a.runtime
    cfg = {"runtime": runtime, "scope": "", "include": DEFAULTS[runtime][0], "exclude": DEFAULTS[runtime][1],
           "layers": "", "include_action_head": False, "wbits_default": 4, "wbits": ""}
    if a.preset:
        cfg.update({k: v for k, v in PRESETS[a.preset].items() if k != "runtime"})
    if a.env_prefix:  # the runtime's own variables, as it reads them
        env = {k[len(a.env_prefix):]: v for k, v in os.environ.items() if k.startswith(a.env_prefix)}
        for key in ("SCOPE", "INCLUDE", "EXCLUDE", "WBITS"):
            if key in env:
                cfg[key.lower()] = env[key]
        if env.get("LAYERS"):
            cfg["layers"] = env["LAYERS"]
        if "WBITS_DEFAULT" in env:
            cfg["wbits_default"] = int(env["WBITS_DEFAULT"])
        if "INCLUDE_ACTION_HEAD" in env:
            cfg["include_action_head"] = truthy(env["INCLUDE_ACTION_HEAD"])
    for key in ("scope", "include", "exclude", "layers", "wbits_default", "wbits"):
        if getattr(a, key) is not None:
            cfg[key] = getattr(a, key)
    if a.include_action_head:
        cfg["include_action_head"] = True

    with open(a.json) as f:
        got = json.load(f)
    expected = select(read_checkpoint(a.checkpoint), cfg, a.layout_prefix)
    problems = []
    got_names = [layer["name"] for layer in got["layers"]]
    want_names = [layer["name"] for layer in expected]
    if got_names != want_names:
        problems.append("layer lists differ:\n  only duquant: %s\n  only python: %s\n  duquant order: %s\n"
                        "  python order: %s" % ([n for n in got_names if n not in want_names],
                                                [n for n in want_names if n not in got_names], got_names, want_names))
    else:
        for g, w in zip(got["layers"], expected):
            for key in ("shape", "dtype", "wbits", "bias"):
                if g[key] != w[key]:
                    problems.append("%s: %s is %r in duquant, %r in python" % (g["name"], key, g[key], w[key]))
    if got["totals"]["layers"] != len(expected):
        problems.append("totals.layers %d != %d" % (got["totals"]["layers"], len(expected)))
    for key in ("runtime", "scope", "include", "exclude"):
        if got["config"][key] != cfg[key]:
            problems.append("config.%s: duquant %r, python %r" % (key, got["config"][key], cfg[key]))
    if a.expect_count is not None and len(expected) != a.expect_count:
        problems.append("python selects %d layers, expected %d" % (len(expected), a.expect_count))
    if problems:
        print("MISMATCH for %s:\n%s" % (a.checkpoint, "\n".join(problems)))
        return 1
    print("ok: %d layers (%s)" % (len(expected), a.preset or "custom"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
