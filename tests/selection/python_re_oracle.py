#!/usr/bin/env python3
"""Cross-check of duquant's layer selection against Python's own `re`.

Given the JSON of `duquant list-linears CKPT --json [selection flags]` and the checkpoint, this
reimplements the runtime's selection (reference section 5) with Python's `re.search` and asserts
that duquant lists the same layers, in the same order, with the same shapes, dtypes and bits.

Usage:
  python_re_oracle.py --json OUT.json --checkpoint CKPT [selection flags as given to duquant]

Selection flags understood: --preset P, --scope S, --include RE, --exclude RE, --layers A,B,
--include-action-head, --wbits-default N, --wbits name:bits,... (as given to duquant; the preset
table below is written from the runtime's run scripts, independently of duquant's).
Only the standard library is used (json + struct read the safetensors header).
Exit code 0: same selection; 1: a difference (printed).
"""
import argparse
import json
import re
import struct
import sys

DEFAULT_INCLUDE = r".*(q_proj|k_proj|v_proj|o_proj|out_proj|fc1|fc2|gate_proj|up_proj|down_proj).*"
DEFAULT_EXCLUDE = r"(?:^|\.)(norm|ln|layernorm|emb)(?:\.|$)"
EXPERT = "paligemma_with_expert.gemma_expert.model."
LLM = "paligemma_with_expert.paligemma.model.language_model."
PROJ = "(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
MLP = "(gate_proj|up_proj|down_proj)"

PRESETS = {
    "openpi-dit-qkvo": {"scope": EXPERT, "include": r".*(q_proj|k_proj|v_proj|o_proj).*"},
    "openpi-dit": {"scope": EXPERT},
    "openpi-llm": {"scope": LLM},
    "openpi-full": {"scope": "paligemma_with_expert.",
                    "include": r".*(language_model|gemma_expert)\..*" + PROJ + ".*"},
    "openpi-llm-dit-mlp": {"scope": "paligemma_with_expert.",
                           "include": r".*(language_model\..*\." + PROJ + r"|gemma_expert\..*\.mlp\." + MLP + ").*"},
    # The GR00T runtime's own expressions (its README's export lines).
    "gr00t-llm-dit-mlp": {
        "scope": "",
        "include": r".*(backbone\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|"
                   r"action_head\..*\.mlp\.(gate_proj|up_proj|down_proj)).*",
        "exclude": r"(?:^|\.)(vision|radio|norm|ln|layernorm|embed|lm_head)(?:\.|$)|action_head\..*\.self_attn\.",
    },
}


def read_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


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


def linear_layers(header):
    """2-D '<module>.weight' tensors in storage order (data offset), then module order."""
    items = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    layers = {}
    for name, t in items:
        if name.endswith(".weight") and len(name) > len(".weight") and len(t["shape"]) == 2:
            layers[name[: -len(".weight")]] = t
    return [(n, layers[n]) for n in module_order(list(layers))]


def select(header, cfg):
    include = re.compile(cfg["include"])
    exclude = re.compile(cfg["exclude"])
    wanted = [x.strip() for x in cfg["layers"].split(",") if x.strip()]
    wbits = {}
    for item in cfg["wbits"].split(","):
        if item.strip():
            name, bits = item.strip().rsplit(":", 1)
            wbits[name.strip()] = int(bits)
    chosen = []
    for name, t in linear_layers(header):
        if not name.startswith(cfg["scope"]):
            continue
        if wanted:
            if name not in wanted:
                continue
        elif not include.search(name) or exclude.search(name):
            continue
        if (name == "action_out_proj" or name.endswith(".action_out_proj")) and not cfg["include_action_head"]:
            continue
        bias = header.get(name + ".bias")
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
    ap.add_argument("--scope")
    ap.add_argument("--include")
    ap.add_argument("--exclude")
    ap.add_argument("--layers")
    ap.add_argument("--include-action-head", action="store_true")
    ap.add_argument("--wbits-default", type=int)
    ap.add_argument("--wbits")
    a = ap.parse_args()

    cfg = {"scope": "", "include": DEFAULT_INCLUDE, "exclude": DEFAULT_EXCLUDE, "layers": "",
           "include_action_head": False, "wbits_default": 4, "wbits": ""}
    if a.preset:
        cfg.update(PRESETS[a.preset])
    for key in ("scope", "include", "exclude", "layers", "wbits_default", "wbits"):
        if getattr(a, key) is not None:
            cfg[key] = getattr(a, key)
    cfg["include_action_head"] = a.include_action_head

    with open(a.json) as f:
        got = json.load(f)
    expected = select(read_header(a.checkpoint), cfg)
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
    for key in ("scope", "include", "exclude"):
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
