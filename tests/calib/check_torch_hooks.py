#!/usr/bin/env python3
"""ctest calib_torch_hooks: examples/dump_activations.py's torch hooks on a real torch.

    check_torch_hooks.py <duquant-binary> <fixtures-dir> <examples-dir> <work-dir>

0. Selection without torch: ``select_layers(..., runtime="gr00t")`` on the module names of GR00T N1.5
   (12 language-model layers x 7 projections, 27 vision layers, 16 DiT blocks, 4 VL
   self-attention blocks, the timestep encoder, proj_out_1/2, the mlp1 connector, lm_head) picks
   the 84 language-model and 96 DiT linears (180); the published QuantVLA regexes pick 116; the
   GR00T action-head rule; the OpenPI default is unchanged.
1. A small torch model whose ``named_modules()`` linears are exactly the action-expert linears of
   <fixtures>/pi05_tiny.safetensors (the gemma expert's projections and adaptive-norm ``dense``
   layers, ``action_in_proj``, ``action_out_proj``, ``time_mlp_in/out``), loaded with the fixture's
   weights, runs an adaptive-norm transformer forward on seeded random inputs; it records, itself,
   what every linear receives. On a torch whose pre-hooks take kwargs, one linear is called as
   ``v_proj(input=x)``.
2. ``main([...])`` of the example with ``--model-factory`` pointing here: once in bfloat16 into an
   HDF5 dump (uint16 + dtype="bfloat16"), once in float32 into a safetensors dump without a scope
   (action_out_proj and the norm ``dense`` layers must stay out). The dumps hold exactly the
   selected layers, ``--max-calls`` calls each (the run stops once they are complete), the rows
   the even subsampling keeps, and the values the layers really received, bit for bit.
3. ``duquant pack <fixture> --scope <expert> --calib <dump> --calib-steps 4`` on both dumps:
   every layer's act_scale equals the numpy recomputation from the recorded activations to 1e-5
   relative, the manifest records the calibration, ``duquant verify -c <fixture>`` exits 0.
4. ``install_hooks`` directly: ``name_prefix`` keys the dump by prefixed (checkpoint) names; a
   layer called only with a keyword input is recorded with kwargs-capable hooks and counted as
   missed without them; a GR00T-named model through ``main(["--runtime", "gr00t", ...])``
   records exactly the 180 layers.

Prints the torch version and the hook signature used. Exit 0 pass, 1 fail, 77 skip (no torch,
numpy or h5py).
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

# The factories below are looked up by dump_activations.load_factory("check_torch_hooks:...");
# make that import find this very module (with its state) instead of running the file again.
if __name__ == "__main__":
    sys.modules.setdefault("check_torch_hooks", sys.modules["__main__"])

SCOPE = "paligemma_with_expert.gemma_expert.model."
N_INPUTS, MAX_CALLS, STEPS, MAX_TOKENS = 8, 6, 4, 64
TOKENS = [7, 40, 3, 50, 24, 33, 11, 9]   # per input; batch 2: 14, 80, 6, 100, 48, 66, ... rows
BATCH = 2
REL_TOL = 1e-5

failures = []
CURRENT = {}   # what the factories hand to dump_activations.main


def fail(msg):
    failures.append(msg)
    print("FAIL:", msg)


def check(cond, msg):
    if not cond:
        fail(msg)
    return cond


def finish():
    if failures:
        print(f"calib_torch_hooks: {len(failures)} failure(s)")
        sys.exit(1)
    print("calib_torch_hooks: PASS")
    sys.exit(0)


def fresh(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)
    return path


def safetensors_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), 8 + n


def safetensors_tensor(path, header, start, key):
    e = header[key]
    begin, end = e["data_offsets"]
    dt = {"BF16": np.uint16, "F32": np.float32, "F16": np.float16}[e["dtype"]]
    with open(path, "rb") as f:
        f.seek(start + begin)
        raw = f.read(end - begin)
    return np.frombuffer(raw, dtype=dt).reshape(e["shape"]).copy(), e["dtype"]


def bf16_bits_to_float32(bits):
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


# ------------------------------------------------------------------------------------------------
# 0. GR00T selection (no torch)
# ------------------------------------------------------------------------------------------------
def gr00t_n15_linear_names():
    """The nn.Linear module names of GR00T N1.5, in module order."""
    names = []
    lm = "backbone.eagle_model.language_model.model.layers"
    for i in range(12):
        names += [f"{lm}.{i}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
        names += [f"{lm}.{i}.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")]
    names.append("backbone.eagle_model.language_model.lm_head")
    vit = "backbone.eagle_model.vision_model.vision_model.encoder.layers"
    for i in range(27):
        names += [f"{vit}.{i}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
        names += [f"{vit}.{i}.mlp.{p}" for p in ("fc1", "fc2")]
    names += ["backbone.eagle_model.mlp1.1", "backbone.eagle_model.mlp1.3"]
    block = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ff.net.0.proj", "ff.net.2", "norm1.linear")
    names += [f"action_head.model.transformer_blocks.{i}.{m}" for i in range(16) for m in block]
    names += ["action_head.model.timestep_encoder.timestep_embedder.linear_1",
              "action_head.model.timestep_encoder.timestep_embedder.linear_2",
              "action_head.model.proj_out_1", "action_head.model.proj_out_2"]
    names += [f"action_head.vl_self_attention.transformer_blocks.{i}.{m}" for i in range(4) for m in block]
    return names


def check_selection(da):
    names = gr00t_n15_linear_names()
    picked = da.select_layers(names, runtime="gr00t")
    lm = [n for n in picked if n.startswith("backbone.eagle_model.language_model.")]
    dit = [n for n in picked if n.startswith("action_head.model.transformer_blocks.")]
    check(len(picked) == 180 and len(lm) == 84 and len(dit) == 96,
          f"gr00t defaults: {len(picked)} layers ({len(lm)} LM, {len(dit)} DiT), expected 180 (84 + 96)")
    check(not any(re.search(r"vision|lm_head|norm1|timestep|proj_out|mlp1|vl_self_attention", n) for n in picked),
          "gr00t defaults selected a layer the runtime leaves alone: "
          + str([n for n in picked if re.search(r"vision|lm_head|norm1|timestep|proj_out|mlp1|vl_self", n)][:3]))
    check(picked == [n for n in names if n in set(picked)], "select_layers must keep the input order")
    check(da.select_layers(names, include=None, exclude=None, runtime="gr00t") == picked,
          "include/exclude None must mean the runtime's defaults")
    check(da.select_layers(names, include=da.GR00T_INCLUDE, exclude=da.GR00T_EXCLUDE, runtime="gr00t") == picked,
          "GR00T_INCLUDE/GR00T_EXCLUDE are the gr00t defaults")
    # The published QuantVLA run: the 7 LM projections + the DiT feed-forward, attn1 excluded.
    quantvla_inc = (r".*(?:backbone\.eagle_model\.language_model\..*\.(?:q_proj|k_proj|v_proj|o_proj|gate_proj|"
                    r"up_proj|down_proj)|action_head\.model\.transformer_blocks\.\d+\.ff\.net\.(?:0\.proj|2)).*")
    quantvla_exc = r"(?:^|\.)(vision|radio|norm|ln|layernorm|embed|lm_head|attn1)(?:\.|$)"
    n116 = da.select_layers(names, include=quantvla_inc, exclude=quantvla_exc, runtime="gr00t")
    check(len(n116) == 116, f"QuantVLA's regexes select {len(n116)} GR00T layers, expected 116")
    # Scope (startswith) and an exact --layers list.
    check(len(da.select_layers(names, scope="action_head.model.", runtime="gr00t")) == 96, "gr00t scope")
    two = ["action_head.model.transformer_blocks.0.norm1.linear", "backbone.eagle_model.mlp1.1"]
    check(da.select_layers(names, layers=two, runtime="gr00t") == ["backbone.eagle_model.mlp1.1",
                                                                   "action_head.model.transformer_blocks.0.norm1.linear"],
          "gr00t --layers: exactly those names, include/exclude ignored")
    # The action-head rule: outside action_head.model., or ending in action_out_proj (plain suffix).
    odd = ["action_head.vl_self_attention.transformer_blocks.0.attn1.to_q", "action_head.model.x",
           "x.action_head.model.y", "action_head.model.action_out_proj", "model.xaction_out_proj", "plain"]
    check(da.select_layers(odd, include=".*", exclude="$^", runtime="gr00t") == ["action_head.model.x", "plain"],
          f"gr00t action-head rule: {da.select_layers(odd, include='.*', exclude='$^', runtime='gr00t')}")
    check(da.select_layers(odd, include=".*", exclude="$^", runtime="gr00t", include_action_head=True) == odd,
          "gr00t include_action_head keeps them all")
    check(da.select_layers(odd, include=".*", exclude="$^") == [n for n in odd if n != "action_head.model.action_out_proj"],
          "openpi action-head rule: action_out_proj as the last dotted component only")
    # OpenPI: the default runtime, unchanged.
    check(da.select_layers(names) == da.select_layers(names, runtime="openpi",
                                                      include=da.DEFAULT_INCLUDE, exclude=da.DEFAULT_EXCLUDE),
          "runtime='openpi' is the default")
    try:
        da.select_layers(names, runtime="pi0")
        fail("an unknown runtime must be refused")
    except ValueError:
        pass
    print(f"part 0: gr00t selection {len(picked)} of {len(names)} GR00T N1.5 linears "
          f"({len(lm)} LM + {len(dit)} DiT); QuantVLA regexes {len(n116)}")


# ------------------------------------------------------------------------------------------------
# Models (torch); factories for --model-factory
# ------------------------------------------------------------------------------------------------
def make_model():
    """--model-factory check_torch_hooks:make_model"""
    return CURRENT["model"], iter(CURRENT["inputs"])


def build_tree(torch, root, specs):
    """Adds nn.Linear(in, out, bias) under ``root`` at each dotted name of ``specs``."""
    for name, (fin, fout, bias) in specs.items():
        parent = root
        parts = name.split(".")
        for part in parts[:-1]:
            child = parent._modules.get(part)
            if child is None:
                child = torch.nn.Module()
                parent.add_module(part, child)
            parent = child
        parent.add_module(parts[-1], torch.nn.Linear(fin, fout, bias=bias))
    return root


def tensor_to_numpy(torch, x):
    """bf16 -> uint16 bits; anything else -> float32 (as the layer saw it)."""
    x = x.detach().contiguous().cpu()
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy().view(np.uint16).copy(), "bfloat16"
    return x.numpy().copy(), str(x.dtype).replace("torch.", "")


def make_expert_class(torch):
    F = torch.nn.functional

    class ExpertModel(torch.nn.Module):
        """The action expert of a tiny pi0.5 with the fixture's module names. ``seen[name]`` lists
        what each linear received, ``(numpy array [.., I], dtype name)`` per call."""

        def __init__(self, specs, n_layers, use_kwargs):
            super().__init__()
            build_tree(torch, self, specs)
            self.n_layers = n_layers
            self.use_kwargs = use_kwargs
            self.seen = {}
            self.forwards = 0
            self.keyword_layer = f"{SCOPE}layers.0.self_attn.v_proj"

        def lin(self, name, x):
            self.seen.setdefault(name, []).append(tensor_to_numpy(torch, x))
            layer = self.get_submodule(name)
            if self.use_kwargs and name == self.keyword_layer:
                return layer(input=x)
            return layer(x)

        @staticmethod
        def rms(x):
            xf = x.float()
            return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)

        def forward(self, actions, t):
            B, T, _ = actions.shape
            h = self.lin("action_in_proj", actions)
            freqs = torch.exp(-torch.arange(32, dtype=torch.float32) * (9.2 / 32))
            temb = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], -1).to(h.dtype)
            cond = self.lin("time_mlp_out", F.silu(self.lin("time_mlp_in", temb)))
            for i in range(self.n_layers):
                p = f"{SCOPE}layers.{i}."
                scale, shift, gate = self.lin(p + "input_layernorm.dense", cond)[:, None].chunk(3, -1)
                x = self.rms(h) * (1 + scale) + shift
                q = self.lin(p + "self_attn.q_proj", x).view(B, T, 8, 16).transpose(1, 2)
                k = self.lin(p + "self_attn.k_proj", x).view(B, T, 1, 16).transpose(1, 2)
                v = self.lin(p + "self_attn.v_proj", x).view(B, T, 1, 16).transpose(1, 2)
                w = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * 0.25, -1)
                att = (w @ v.float()).to(h.dtype).transpose(1, 2).reshape(B, T, 128)
                h = h + gate * self.lin(p + "self_attn.o_proj", att)
                scale, shift, gate = self.lin(p + "post_attention_layernorm.dense", cond)[:, None].chunk(3, -1)
                x = self.rms(h) * (1 + scale) + shift
                m = F.gelu(self.lin(p + "mlp.gate_proj", x)) * self.lin(p + "mlp.up_proj", x)
                h = h + gate * self.lin(p + "mlp.down_proj", m)
            self.forwards += 1
            return self.lin("action_out_proj", self.rms(h))

    return ExpertModel


def make_grid_class(torch):
    class GridModel(torch.nn.Module):
        """Every linear (width 8) applied once to the same input, in module order."""

        def __init__(self, names):
            super().__init__()
            build_tree(torch, self, {n: (8, 8, False) for n in names})
            self.names = names

        def forward(self, x):
            for name in self.names:
                self.get_submodule(name)(x)
            return x

    return GridModel


# ------------------------------------------------------------------------------------------------
# Checks on the dumps
# ------------------------------------------------------------------------------------------------
def even_rows(n, k):
    return None if n <= k else (np.arange(k, dtype=np.int64) * n) // k


def expected_calls(model, name):
    """The first MAX_CALLS inputs of ``name`` as the layer received them, flattened and subsampled."""
    out = []
    for values, dtype in model.seen.get(name, [])[:MAX_CALLS]:
        x = values.reshape(-1, values.shape[-1])
        rows = even_rows(x.shape[0], MAX_TOKENS)
        out.append((dtype, x if rows is None else x[rows]))
    return out


def check_hdf5_dump(path, model, layers, label):
    with h5py.File(path, "r") as f:
        check(sorted(f.keys()) == sorted(layers), f"{label}: layers {sorted(f.keys())}, expected {sorted(layers)}")
        for name in layers:
            want = expected_calls(model, name)
            if not check(name in f and len(want) == MAX_CALLS,
                         f"{label}: {name}: in dump {name in f}, the model saw {len(model.seen.get(name, []))} calls"):
                continue
            g = f[name]
            check(sorted(g.keys()) == ["x_%04d" % c for c in range(MAX_CALLS)], f"{label}: {name}: {sorted(g.keys())}")
            for c, (dtype, values) in enumerate(want):
                ds = g.get("x_%04d" % c)
                if ds is None:
                    continue
                where = f"{label}: {name}/x_%04d" % c
                attr = ds.attrs.get("dtype")
                attr = attr.decode() if isinstance(attr, bytes) else attr
                if dtype == "bfloat16":
                    check(ds.dtype == np.uint16 and attr == "bfloat16", f"{where}: {ds.dtype}, dtype attribute {attr!r}")
                else:
                    check(ds.dtype == np.dtype(dtype) and attr is None, f"{where}: {ds.dtype}, attribute {attr!r}")
                check(ds.shape == values.shape, f"{where}: shape {ds.shape}, the layer saw {values.shape}")
                check(ds.shape == values.shape and np.array_equal(ds[()], values),
                      f"{where}: values differ from what the layer received")
    return {name: expected_calls(model, name) for name in layers}


def check_safetensors_dump(path, model, layers, label):
    header, start = safetensors_header(path)
    keys = sorted(k for k in header if k != "__metadata__")
    want_keys = sorted(f"{n}.x_%04d" % c for n in layers for c in range(MAX_CALLS))
    check(keys == want_keys, f"{label}: keys {keys[:3]}..., expected {want_keys[:3]}... ({len(keys)} vs {len(want_keys)})")
    for name in layers:
        for c, (dtype, values) in enumerate(expected_calls(model, name)):
            key = f"{name}.x_%04d" % c
            if key not in header:
                continue
            got, st = safetensors_tensor(path, header, start, key)
            want_st = {"bfloat16": "BF16", "float32": "F32", "float16": "F16"}[dtype]
            check(st == want_st and got.shape == values.shape and np.array_equal(got, values),
                  f"{label}: {key}: {st} {got.shape}, the layer saw {dtype} {values.shape} (or other values)")
    return {name: expected_calls(model, name) for name in layers}


def as_float64(dtype, values):
    return (bf16_bits_to_float32(values) if dtype == "bfloat16" else values).astype(np.float64)


def expected_act_scale(npz, calls, q=0.999, qmax=127):
    """act_scale as docs/calibration.md defines it (the same recomputation as check_example_dump.py)."""
    meta = json.loads(str(npz["meta"]))
    width = meta["in_features"]
    bs = meta["block_size"]
    perm = npz["perm"] if "perm" in npz.files else np.arange(width)
    running = None
    for dtype, values in calls[:STEPS]:
        xt = as_float64(dtype, values)[:, perm]
        for b in range(0, (width + bs - 1) // bs):
            r = npz[f"Rin_{b}"].astype(np.float64)
            cols = slice(b * bs, min(width, (b + 1) * bs))
            xt[:, cols] = xt[:, cols] @ r
        p = np.maximum(np.quantile(np.abs(xt), q, axis=0, method="linear"), 1e-6)
        running = p if running is None else np.maximum(running, p)
    return np.maximum(running / qmax, 1e-6)


def run_duquant(args, timeout=300):
    p = subprocess.run([DUQUANT] + args, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def check_pack(dump, container, recorded, label):
    pack = fresh(os.path.join(WORK, f"pack-{label}"))
    rc, out, err = run_duquant(["pack", CKPT, "-o", pack, "--scope", SCOPE, "--calib", dump,
                                "--calib-steps", str(STEPS)])
    if not check(rc == 0, f"{label}: duquant pack --calib exited {rc}:\n{out[-2000:]}\n{err[-2000:]}"):
        return
    worst = (0.0, "", -1)
    for name, calls in recorded.items():
        path = os.path.join(pack, name + ".npz")
        if not check(os.path.exists(path), f"{label}: {path} missing"):
            continue
        with np.load(path) as npz:
            if not check("act_scale" in npz.files, f"{label}: {name}.npz has no act_scale ({npz.files})"):
                continue
            got = npz["act_scale"].astype(np.float64)
            want = expected_act_scale(npz, calls)
        if not check(got.shape == want.shape, f"{label}: {name}: act_scale shape {got.shape}, expected {want.shape}"):
            continue
        rel = np.abs(got - want) / want
        i = int(np.argmax(rel))
        if rel[i] > worst[0]:
            worst = (float(rel[i]), name, i)
        check(rel[i] <= REL_TOL, f"{label}: {name}: act_scale[{i}] = {got[i]!r}, numpy {want[i]!r} "
                                 f"(relative difference {rel[i]:.3g})")
    with open(os.path.join(pack, "manifest.json")) as f:
        manifest = json.load(f)
    entries = {e["name"]: e for e in manifest["layers"]}
    check(sorted(entries) == sorted(recorded), f"{label}: manifest layers {sorted(entries)}")
    top = manifest.get("calibration")
    if check(isinstance(top, dict), f"{label}: manifest calibration {top!r}"):
        check(top.get("dump") == os.path.basename(dump) and top.get("container") == container and
              top.get("missing_layers") == [], f"{label}: manifest calibration {json.dumps(top)}")
    held_max = (top or {}).get("held_out_calls_max", 4)
    rows_max = (top or {}).get("held_out_rows_per_call_max", 16)
    for name, calls in recorded.items():
        cal = entries.get(name, {}).get("calibration")
        if not check(isinstance(cal, dict), f"{label}: manifest: {name} has no calibration"):
            continue
        held = calls[STEPS:STEPS + held_max]
        want = {"source": name, "steps": STEPS, "tokens": sum(v.shape[0] for _, v in calls[:STEPS]),
                "held_out_calls": len(held), "held_out_rows": sum(min(rows_max, v.shape[0]) for _, v in held)}
        got = {k: cal.get(k) for k in want}
        check(got == want, f"{label}: manifest: {name}: calibration {got}, expected {want}")
    rc, out, err = run_duquant(["verify", pack, "-c", CKPT])
    check(rc == 0, f"{label}: duquant verify -c <fixture> exited {rc}:\n{out[-2000:]}\n{err[-2000:]}")
    print(f"  {label}: pack --calib-steps {STEPS}: {len(recorded)} layers with act_scale, worst relative "
          f"difference {worst[0]:.3g} ({worst[1].rsplit('.', 3)[-3:] if worst[1] else '-'}); verify exit {rc}")


# ------------------------------------------------------------------------------------------------
def main_test():
    global DUQUANT, CKPT, WORK
    if len(sys.argv) != 5:
        print(__doc__)
        sys.exit(1)
    DUQUANT, fixtures, examples, WORK = sys.argv[1:5]
    CKPT = os.path.join(fixtures, "pi05_tiny.safetensors")
    os.makedirs(WORK, exist_ok=True)
    sys.path.insert(0, examples)
    import dump_activations as da

    check_selection(da)

    try:
        import torch
    except ImportError as e:
        if failures:
            finish()
        print(f"SKIP: parts 1-4 need torch: {e}")
        sys.exit(77)
    torch.manual_seed(0)
    kwargs = da.forward_pre_hook_takes_kwargs()
    print(f"torch {torch.__version__}: forward pre-hook {da.hook_signature()}")

    # -- 1. the model ---------------------------------------------------------------------------
    header, start = safetensors_header(CKPT)
    expert_prefixes = ("paligemma_with_expert.gemma_expert.", "action_in_proj", "action_out_proj", "time_mlp_")
    specs = {}
    for key, e in header.items():
        if key == "__metadata__" or not key.endswith(".weight") or len(e["shape"]) != 2:
            continue
        name = key[: -len(".weight")]
        if name.startswith(expert_prefixes):
            specs[name] = (e["shape"][1], e["shape"][0], name + ".bias" in header)
    n_layers = 1 + max(int(m.group(1)) for m in (re.search(r"\.layers\.(\d+)\.", n) for n in specs) if m)
    ExpertModel = make_expert_class(torch)

    def load(dtype):
        model = ExpertModel(specs, n_layers, use_kwargs=kwargs)
        linear_names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        check(sorted(linear_names) == sorted(specs), "the model's linears are not the fixture's")
        state = {}
        for key in model.state_dict():
            bits, st = safetensors_tensor(CKPT, header, start, key)
            check(st == "BF16", f"fixture tensor {key} is {st}")
            t = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)
            state[key] = t if dtype == torch.bfloat16 else torch.from_numpy(bf16_bits_to_float32(bits))
        model.load_state_dict(state, strict=True)
        return model.to(dtype).eval()

    def inputs(dtype, seed):
        g = torch.Generator().manual_seed(seed)
        return [(torch.randn(BATCH, T, 32, generator=g).to(dtype), torch.rand(BATCH, generator=g))
                for T in TOKENS[:N_INPUTS]]

    selected = da.select_layers(specs, scope=SCOPE)
    check(len(selected) == 14, f"{len(selected)} expert layers selected, expected 14")

    # -- 2./3. bfloat16 into HDF5 ----------------------------------------------------------------
    model = load(torch.bfloat16)
    CURRENT.update(model=model, inputs=inputs(torch.bfloat16, 1))
    dump = fresh(os.path.join(WORK, "bf16.h5"))
    rc = da.main(["--model-factory", "check_torch_hooks:make_model", "-o", dump, "--scope", SCOPE,
                  "--max-calls", str(MAX_CALLS), "--max-tokens", str(MAX_TOKENS)])
    check(rc == 0, f"main exited {rc}")
    check(model.forwards == MAX_CALLS, f"the run must stop once every layer has {MAX_CALLS} calls: "
                                       f"{model.forwards} forwards")
    check(not os.path.exists(dump + ".tmp"), "no .tmp left behind")
    check(any(v[1] == "bfloat16" for v in model.seen[selected[0]]), "the bf16 model ran in float32")
    recorded = check_hdf5_dump(dump, model, selected, "bf16 hdf5")
    rows = [v.shape[0] for _, v in recorded[selected[0]]]
    check(rows == [min(BATCH * T, MAX_TOKENS) for T in TOKENS[:MAX_CALLS]], f"rows per call {rows}")
    print(f"part 1-2: bf16 model, {model.forwards} forwards, HDF5 dump of {len(recorded)} layers x "
          f"{MAX_CALLS} calls, rows {rows}; {model.keyword_layer.rsplit('.', 3)[-3:]} called with "
          f"{'input=' if kwargs else 'a positional'} argument")
    check_pack(dump, "hdf5", recorded, "bf16-hdf5")

    # -- float32 into safetensors, no scope: action_out_proj and the norms' dense stay out --------
    model32 = load(torch.float32)
    CURRENT.update(model=model32, inputs=inputs(torch.float32, 2))
    dump32 = fresh(os.path.join(WORK, "f32.safetensors"))
    rc = da.main(["--model-factory", "check_torch_hooks:make_model", "-o", dump32, "--format", "safetensors",
                  "--max-calls", str(MAX_CALLS), "--max-tokens", str(MAX_TOKENS)])
    check(rc == 0, f"main exited {rc}")
    check(da.select_layers(specs) == selected, "without a scope the default selection differs from the expert's")
    recorded32 = check_safetensors_dump(dump32, model32, selected, "f32 safetensors")
    print(f"part 2: f32 model, {model32.forwards} forwards, safetensors dump of {len(recorded32)} layers")
    check_pack(dump32, "safetensors", recorded32, "f32-safetensors")

    # -- 4. install_hooks: name_prefix, keyword calls, GR00T names -------------------------------
    CURRENT.update(model=load(torch.float32), inputs=inputs(torch.float32, 3))
    pref = fresh(os.path.join(WORK, "prefixed.h5"))
    with da.DumpWriter(pref, max_calls=2) as w:
        handles, names = da.install_hooks(CURRENT["model"], w, scope="model." + SCOPE, name_prefix="model.")
        da.run_inputs(CURRENT["model"], CURRENT["inputs"], "", w, names)
        for h in handles:
            h.remove()
    with h5py.File(pref, "r") as f:
        check(sorted(f.keys()) == sorted("model." + n for n in selected), f"prefixed dump: {sorted(f.keys())[:2]}")
        check(all(len(f[k]) == 2 for k in f), "prefixed dump: 2 calls per layer")

    class KeywordCall(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.q_proj(input=x)

    kw = KeywordCall()
    kwdump = fresh(os.path.join(WORK, "keyword.h5"))
    with da.DumpWriter(kwdump) as w:
        handles, names = da.install_hooks(kw, w)
        with torch.inference_mode():
            for _ in range(3):
                kw(torch.randn(2, 4))
        for h in handles:
            h.remove()
        calls, missed = w.calls("q_proj"), w.missed()
    if kwargs:
        check(calls == 3 and not missed, f"keyword input with kwargs hooks: {calls} calls recorded, missed {missed}")
    else:
        check(calls == 0 and missed == {"q_proj": 3}, f"keyword input without kwargs hooks: {calls} calls, missed {missed}")
    print(f"part 4: keyword-only input: {calls} calls recorded, {sum(missed.values())} counted as missed")

    gr00t_names = gr00t_n15_linear_names()
    CURRENT.update(model=make_grid_class(torch)(gr00t_names).eval(),
                   inputs=[torch.randn(2, 3, 8) for _ in range(3)])
    gdump = fresh(os.path.join(WORK, "gr00t.h5"))
    rc = da.main(["--model-factory", "check_torch_hooks:make_model", "-o", gdump, "--runtime", "gr00t",
                  "--max-calls", "2"])
    check(rc == 0, f"main --runtime gr00t exited {rc}")
    with h5py.File(gdump, "r") as f:
        got = sorted(f.keys())
        want = sorted(da.select_layers(gr00t_names, runtime="gr00t"))
        check(got == want and len(got) == 180, f"--runtime gr00t recorded {len(got)} layers, expected 180")
        check(all(sorted(f[k]) == ["x_0000", "x_0001"] for k in got), "--runtime gr00t: 2 calls per layer")
    odump = fresh(os.path.join(WORK, "gr00t-as-openpi.h5"))
    CURRENT["inputs"] = [torch.randn(2, 3, 8)]
    check(da.main(["--model-factory", "check_torch_hooks:make_model", "-o", odump, "--max-calls", "1"]) == 0,
          "main (openpi) on GR00T names")
    with h5py.File(odump, "r") as f:
        check(sorted(f.keys()) == sorted(da.select_layers(gr00t_names)),
              "the default runtime must keep OpenPI's selection")
        n_openpi = len(f.keys())
    print(f"part 4: GR00T-named model: --runtime gr00t recorded {len(got)} layers; the openpi default {n_openpi}")
    finish()


if __name__ == "__main__":
    main_test()
