#!/usr/bin/env python3
"""Record the inputs of a policy's linear layers into a calibration dump for `duquant pack --calib`.

A forward pre-hook on every selected ``nn.Linear`` receives the layer's input ``x`` of shape
``[..., I]``; the leading dims are flattened to ``[tokens, I]``, at most ``--max-tokens`` rows are
kept (evenly spaced rows by default, see ``row_indices``), and the first ``--max-calls`` calls of
each layer are written, one dataset per call, as they happen. The file layout is the one
docs/calibration-dumps.md specifies:

    HDF5 (default)   /<module name>/x_0000, x_0001, ...   [tokens, I] float32 | float16 |
                     uint16 holding bfloat16 bits, with the string attribute dtype = "bfloat16"
    safetensors      keys "<module name>.x_0000", ...      F32 | F16 | BF16

Layers are selected exactly as duquant selects them (docs/selection.md), with the rules of the
runtime given by ``--runtime``: the name starts with ``--scope``; with ``--layers`` it must be one
of them, otherwise it matches ``--include`` and does not match ``--exclude`` (Python
``re.search``: anywhere in the name; both default to the runtime's regexes); then, unless
``--include-action-head``, the action head is skipped: for ``openpi`` (the default)
``action_out_proj`` at top level or as the last dotted component; for ``gr00t`` every name that
contains ``action_head`` without starting with ``action_head.model.``, and every name ending in
``action_out_proj``. Use the same selection flags as for ``duquant pack``.

Names: a layer is recorded as ``--name-prefix`` + its ``named_modules()`` name, and selected by
that name. A dump may be keyed by the runtime's module names
(``paligemma_with_expert.gemma_expert.model.layers.0.mlp.down_proj``) or by the checkpoint's where
the checkpoint prefixes them (LeRobot's pi0.5: ``model.paligemma_with_expert...``; give a
``--scope`` with the prefix then): duquant accepts either.

Hooks: torch 2.x registers them with ``with_kwargs=True``, so a layer called as
``linear(input=x)`` is recorded too; torch 1.13 (no ``with_kwargs``) passes hooks the positional
arguments only: a keyword-only call is not recorded, and the run ends with a warning counting
such calls. Which one is used is decided by what ``register_forward_pre_hook`` accepts.

The writer (``DumpWriter``) and the selection (``select_layers``) need only numpy (and h5py for
HDF5); torch is imported only by ``install_hooks`` and ``main``, so the writer can be reused from
any framework. See examples/README.md for a walk-through.

    python3 dump_activations.py --model-factory my_policy.calib:make -o calib.h5 \\
        --scope paligemma_with_expert.gemma_expert.model. --max-calls 64 --max-tokens 1024
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import re
import struct
import sys
from typing import Callable, Iterable, List, Optional, Sequence

import numpy as np

# The selection defaults of the runtimes duquant packs for (docs/selection.md).
# OpenPI's DuQuant runtime (OPENPI_DUQUANT_*), duquant's own defaults (docs/cli.md):
DEFAULT_INCLUDE = r".*(q_proj|k_proj|v_proj|o_proj|out_proj|fc1|fc2|gate_proj|up_proj|down_proj).*"
DEFAULT_EXCLUDE = r"(?:^|\.)(norm|ln|layernorm|emb)(?:\.|$)"
# The GR00T DuQuant port (GR00T_DUQUANT_*): the backbone language model's 7 projections and the
# action-head DiT's attention and feed-forward linears; vision, norms, embeddings, lm_head, the
# timestep/state/action encoders and decoders and the VL self-attention stay unquantized.
GR00T_INCLUDE = (r".*(?:backbone\.eagle_model\.language_model\..*\.(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|"
                 r"down_proj)|action_head\.model\..*(?:attn1\.to_(?:q|k|v)|attn1\.to_out\.0|ff\.net\.(?:0\.proj|2))).*")
GR00T_EXCLUDE = (r"(?:^|\.)(?:vision_model|vision|radio|norm|ln|layernorm|embed|lm_head|timestep_encoder|state_encoder|"
                 r"action_encoder|action_decoder|future_tokens|vl_self_attention)(?:\.|$)")
ACTION_HEAD = "action_out_proj"
RUNTIMES = ("openpi", "gr00t")


# ----------------------------------------------------------------------------------------------
# Selection (no torch)
# ----------------------------------------------------------------------------------------------

def parse_layers(text: Optional[str]) -> List[str]:
    """``--layers A,B``: comma-separated exact names, blanks trimmed, empty items ignored."""
    if not text:
        return []
    return [item.strip() for item in text.split(",") if item.strip()]


def is_action_head(name: str, runtime: str = "openpi") -> bool:
    """Whether the runtime leaves ``name`` alone unless told to include the action head.

    openpi: ``action_out_proj`` at top level or as the last component of a dotted name.
    gr00t: any name containing ``action_head`` that does not start with ``action_head.model.``,
    and any name ending in ``action_out_proj`` (a plain suffix test, as the port does).
    """
    if runtime == "gr00t":
        return ("action_head" in name and not name.startswith("action_head.model.")) or name.endswith(ACTION_HEAD)
    if runtime == "openpi":
        return name == ACTION_HEAD or name.endswith("." + ACTION_HEAD)
    raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")


def runtime_defaults(runtime: str = "openpi"):
    """``(include, exclude)`` regexes the runtime uses when they are not given."""
    if runtime == "openpi":
        return DEFAULT_INCLUDE, DEFAULT_EXCLUDE
    if runtime == "gr00t":
        return GR00T_INCLUDE, GR00T_EXCLUDE
    raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")


def select_layers(names: Iterable[str], scope: str = "", include: Optional[str] = None,
                  exclude: Optional[str] = None, layers: Optional[Sequence[str]] = None,
                  include_action_head: bool = False, runtime: str = "openpi") -> List[str]:
    """The names duquant would select among ``names`` (linear-layer module names), in their order.

    Mirrors docs/selection.md: scope is a plain prefix; with ``layers`` only those exact names
    (include/exclude do not apply); otherwise ``re.search(include)`` and not ``re.search(exclude)``
    (``None``: the runtime's default, see ``runtime_defaults``); the action head (``is_action_head``)
    only with ``include_action_head``. ``runtime`` is ``"openpi"`` or ``"gr00t"``.
    """
    default_inc, default_exc = runtime_defaults(runtime)
    inc = re.compile(default_inc if include is None else include)
    exc = re.compile(default_exc if exclude is None else exclude)
    wanted = set(layers or [])
    out = []
    for name in names:
        if not name.startswith(scope):
            continue
        if wanted:
            if name not in wanted:
                continue
        elif not inc.search(name) or exc.search(name):
            continue
        if not include_action_head and is_action_head(name, runtime):
            continue
        out.append(name)
    return out


# ----------------------------------------------------------------------------------------------
# Writer (numpy + h5py, no torch)
# ----------------------------------------------------------------------------------------------

def row_indices(n: int, max_tokens: Optional[int], rng: Optional[np.random.Generator] = None) -> Optional[np.ndarray]:
    """Rows to keep of a call with ``n`` rows, or None to keep all.

    Default (``rng`` None): ``k = max_tokens`` evenly spaced rows, ``floor(i * n / k)`` for
    ``i = 0 .. k-1`` (distinct, ascending, first row always kept): the same rows for the same
    ``n`` on every run. With ``rng`` (``--subsample random --seed S``): ``k`` distinct rows drawn
    without replacement from the generator, sorted; one generator per writer, so the draw depends
    on the order of calls, which is deterministic for a deterministic model and input order.
    """
    if max_tokens is None or max_tokens <= 0 or n <= max_tokens:
        return None
    if rng is None:
        return (np.arange(max_tokens, dtype=np.int64) * n) // max_tokens
    return np.sort(rng.choice(n, size=max_tokens, replace=False)).astype(np.int64)


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns -> float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> uint16 bfloat16 bit patterns, round to nearest even (as torch's .bfloat16())."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    out = rounded.astype(np.uint16)
    out[nan] = 0x7FC0
    return out


class DumpWriter:
    """Writes a calibration dump incrementally, one dataset per recorded call.

    ``add(layer, x)`` takes a numpy array of shape ``[..., I]`` (rank >= 1; leading dims are
    flattened into tokens) of float32, float16 or float64 (stored as float32), or bfloat16 given
    as its uint16 bit patterns with ``dtype="bfloat16"`` (an ``ml_dtypes`` bfloat16 array also
    works). ``dtype`` of the writer: ``keep`` stores each call as it arrives; ``float32`` or
    ``float16`` convert (a float16 overflow is an error, since duquant rejects Inf). Returns the
    call's name (``x_0003``) or None when the layer already has ``max_calls`` calls.

    HDF5: the data goes to ``<path>.tmp``, flushed after every call, and is renamed to ``path`` by
    ``close()``. When the run stops early (an exception inside ``with DumpWriter(...)``), the file
    is closed and left as ``<path>.tmp``: a valid dump of the calls recorded so far (rename it to
    use it). A process killed in the middle of a write can leave that call's metadata incomplete.

    safetensors: the data goes to ``<path>.tmp`` and the header, which comes first in the format,
    is written by ``close()`` (an early stop leaves no usable file). Needs no extra package.
    """

    FORMATS = ("hdf5", "safetensors")
    DTYPES = ("keep", "float32", "float16")

    def __init__(self, path: str, dtype: str = "keep", max_calls: Optional[int] = None,
                 max_tokens: Optional[int] = None, subsample: str = "even", seed: int = 0,
                 format: str = "hdf5", overwrite: bool = False):
        if format not in self.FORMATS:
            raise ValueError(f"format must be one of {self.FORMATS}, not {format!r}")
        if dtype not in self.DTYPES:
            raise ValueError(f"dtype must be one of {self.DTYPES}, not {dtype!r}")
        if subsample not in ("even", "random"):
            raise ValueError(f"subsample must be 'even' or 'random', not {subsample!r}")
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{path} exists (pass overwrite=True / --force to replace it)")
        self.path = path
        self.tmp_path = path + ".tmp"
        self.dtype = dtype
        self.max_calls = max_calls
        self.max_tokens = max_tokens
        self.format = format
        self._rng = np.random.default_rng(seed) if subsample == "random" else None
        self._counts = {}   # layer -> calls written
        self._widths = {}   # layer -> I
        self._missed = {}   # layer -> calls whose input a hook could not see (see note_missed)
        self._closed = False
        self.bytes_written = 0
        if format == "hdf5":
            import h5py  # required for the primary format
            self._h5 = h5py.File(self.tmp_path, "w")
        else:
            self._h5 = None
            self._data = open(self.tmp_path, "wb")
            self._entries = []  # (key, dtype, shape, begin, end)

    # -- bookkeeping --------------------------------------------------------------------------
    def calls(self, layer: str) -> int:
        return self._counts.get(layer, 0)

    def wants(self, layer: str) -> bool:
        """Whether another call of ``layer`` would be recorded (check before copying data)."""
        return not self._closed and (self.max_calls is None or self.calls(layer) < self.max_calls)

    def note_missed(self, layer: str) -> None:
        """Counts a call of ``layer`` whose input the caller could not see (nothing is written)."""
        self._missed[layer] = self._missed.get(layer, 0) + 1

    def missed(self) -> dict:
        """``{layer: calls}`` noted with ``note_missed``."""
        return dict(self._missed)

    def row_indices(self, n: int) -> Optional[np.ndarray]:
        """The rows ``add`` would keep of an ``n``-row call (lets a hook subsample on the device)."""
        return row_indices(n, self.max_tokens, self._rng)

    # -- writing ------------------------------------------------------------------------------
    def add(self, layer: str, x, dtype: Optional[str] = None, subsampled: bool = False) -> Optional[str]:
        """Records one call. ``dtype="bfloat16"`` marks ``x`` as uint16 bf16 bit patterns.
        ``subsampled=True``: the rows were already chosen with ``row_indices`` (not drawn again)."""
        if self._closed:
            raise ValueError("DumpWriter is closed")
        if not layer or "/" in layer:
            raise ValueError(f"layer name {layer!r}: must be non-empty and contain no '/'")
        x = np.asarray(x)
        if x.dtype.name == "bfloat16":  # ml_dtypes / jax arrays
            x, dtype = x.view(np.uint16), "bfloat16"
        if x.ndim < 1 or x.shape[-1] == 0:
            raise ValueError(f"{layer}: input of shape {x.shape} has no feature dimension")
        width = int(x.shape[-1])
        if self._widths.setdefault(layer, width) != width:
            raise ValueError(f"{layer}: call {self.calls(layer)} has {width} features, earlier calls had "
                             f"{self._widths[layer]}")
        if not self.wants(layer):
            return None
        x = x.reshape(-1, width)
        if x.shape[0] == 0:
            return None  # nothing to record
        if not subsampled:
            rows = self.row_indices(x.shape[0])
            if rows is not None:
                x = x[rows]
        data, stored = self._convert(layer, x, dtype)
        name = "x_%04d" % self.calls(layer)
        if self._h5 is not None:
            group = self._h5.require_group(layer)
            ds = group.create_dataset(name, data=data)  # contiguous, no filters
            if stored == "bfloat16":
                ds.attrs["dtype"] = "bfloat16"
            self._h5.flush()
        else:
            begin = self.bytes_written
            self._data.write(data.tobytes(order="C"))
            self._data.flush()
            st_dtype = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[stored]
            self._entries.append((f"{layer}.{name}", st_dtype, list(data.shape), begin, begin + data.nbytes))
        self.bytes_written += data.nbytes
        self._counts[layer] = self.calls(layer) + 1
        return name

    def _convert(self, layer: str, x: np.ndarray, dtype: Optional[str]):
        """-> (C-contiguous array to store, stored dtype name)."""
        if dtype == "bfloat16":
            if x.dtype != np.uint16:
                raise ValueError(f"{layer}: dtype='bfloat16' needs uint16 bit patterns, got {x.dtype}")
            source = "bfloat16"
        elif dtype is not None:
            raise ValueError(f"{layer}: unknown dtype tag {dtype!r} (only 'bfloat16')")
        elif x.dtype in (np.float32, np.float16):
            source = x.dtype.name
        elif x.dtype == np.float64:
            source = "float64"
        else:
            raise ValueError(f"{layer}: cannot record activations of dtype {x.dtype}")
        target = self.dtype
        if target == "keep":
            target = "float32" if source == "float64" else source
        if target == source:
            return np.ascontiguousarray(x), target
        f32 = bf16_bits_to_float32(x) if source == "bfloat16" else x.astype(np.float32)
        if target == "float32":
            return np.ascontiguousarray(f32), "float32"
        if target == "float16":
            with np.errstate(over="ignore"):
                f16 = f32.astype(np.float16)
            bad = np.isinf(f16) & np.isfinite(f32)
            if bad.any():
                r, c = np.argwhere(bad)[0]
                raise ValueError(f"{layer}: value {f32[r, c]} at [{r}, {c}] overflows float16; "
                                 "use dtype 'keep' or 'float32'")
            return np.ascontiguousarray(f16), "float16"
        raise AssertionError(target)

    # -- closing ------------------------------------------------------------------------------
    def close(self, complete: bool = True) -> str:
        """Finishes the file and renames it to ``path`` (``complete=False``: HDF5 stays at
        ``<path>.tmp``). Returns the final file's path."""
        if self._closed:
            return self.path
        self._closed = True
        if self._h5 is not None:
            self._h5.close()
            if not complete:
                return self.tmp_path
            os.replace(self.tmp_path, self.path)
            return self.path
        self._data.close()
        if not complete:
            os.remove(self.tmp_path)
            return self.tmp_path
        self._write_safetensors()
        return self.path

    def _write_safetensors(self) -> None:
        header = {"__metadata__": {"format": "duquant-calib"}}
        for key, dt, shape, begin, end in self._entries:
            header[key] = {"dtype": dt, "shape": shape, "data_offsets": [begin, end]}
        text = json.dumps(header, separators=(",", ":")).encode("utf-8")
        text += b" " * (-len(text) % 8)  # data starts 8-byte aligned
        final_tmp = self.path + ".tmp2"
        with open(final_tmp, "wb") as out, open(self.tmp_path, "rb") as data:
            out.write(struct.pack("<Q", len(text)))
            out.write(text)
            while True:
                chunk = data.read(1 << 24)
                if not chunk:
                    break
                out.write(chunk)
        os.remove(self.tmp_path)
        os.replace(final_tmp, self.path)

    def __enter__(self) -> "DumpWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        where = self.close(complete=exc_type is None)
        if exc_type is not None and self.format == "hdf5":
            total = sum(self._counts.values())
            print(f"dump_activations: stopped early; {total} calls of {len(self._counts)} layers are in "
                  f"{where} (a valid dump: rename it to use it)", file=sys.stderr)

    def summary(self) -> str:
        total = sum(self._counts.values())
        return (f"{len(self._counts)} layers, {total} calls, {self.bytes_written / 1e6:.1f} MB of activations"
                f" -> {self.path}")


# ----------------------------------------------------------------------------------------------
# Hooks (torch)
# ----------------------------------------------------------------------------------------------

def forward_pre_hook_takes_kwargs() -> bool:
    """Whether this torch's ``register_forward_pre_hook`` accepts ``with_kwargs=True`` (torch 2.0 on),
    found by looking at the method, not at the version string."""
    import torch

    try:
        return "with_kwargs" in inspect.signature(torch.nn.Module.register_forward_pre_hook).parameters
    except (TypeError, ValueError):  # no signature available: try it
        pass
    probe = torch.nn.Module()
    try:
        handle = probe.register_forward_pre_hook(lambda module, args, kwargs: None, with_kwargs=True)
    except TypeError:
        return False
    handle.remove()
    return True


def hook_signature() -> str:
    """The forward pre-hook signature ``install_hooks`` uses with this torch."""
    if forward_pre_hook_takes_kwargs():
        return "hook(module, args, kwargs), with_kwargs=True"
    return "hook(module, args)"


def install_hooks(model, writer: DumpWriter, scope: str = "", include: Optional[str] = None,
                  exclude: Optional[str] = None, layers: Optional[Sequence[str]] = None,
                  include_action_head: bool = False, name_prefix: str = "", runtime: str = "openpi"):
    """Puts a forward pre-hook on every selected ``nn.Linear`` of ``model``; returns the handles
    (call ``h.remove()`` on each when done) and the selected names.

    Names are ``name_prefix + <name in model.named_modules()>``; the selection (``select_layers``
    with ``runtime``'s rules) runs on these names and the dump is keyed by them. Key the dump by the
    runtime's module names (``paligemma_with_expert.gemma_expert.model.layers.0.self_attn.q_proj``
    for OpenPI's pi0.5, ``action_head.model.transformer_blocks.0.attn1.to_q`` for GR00T) or by the
    checkpoint's where it prefixes them (LeRobot's pi0.5: ``model.paligemma_with_expert...``, then
    with a ``scope`` that includes the prefix); duquant accepts either. ``name_prefix`` completes
    the names of a submodule (pass ``policy.paligemma_with_expert`` with
    ``name_prefix="paligemma_with_expert."``) or adds a checkpoint's prefix.

    torch >= 2.0: the hook also sees a layer called with its input as a keyword
    (``linear(input=x)``). Older torch (1.13) passes hooks the positional arguments only; such a
    call is then not recorded and is counted in ``writer.missed()``. Rows are subsampled on the
    input's device before the copy to the CPU; nothing is kept in memory between calls.
    """
    import torch

    linears = {name_prefix + n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    names = select_layers(linears.keys(), scope, include, exclude, layers, include_action_head, runtime)
    with_kwargs = forward_pre_hook_takes_kwargs()
    handles = []

    def record(name, x):
        if not isinstance(x, torch.Tensor):
            writer.note_missed(name)
            return
        if not writer.wants(name):
            return
        with torch.no_grad():
            x = x.detach().reshape(-1, x.shape[-1])
            rows = writer.row_indices(x.shape[0])
            if rows is not None:
                x = x[torch.as_tensor(rows, dtype=torch.long, device=x.device)]
            if x.dtype == torch.bfloat16:
                # bfloat16 has no numpy dtype: reinterpret its bits (a same-size dtype view).
                bits = x.contiguous().view(torch.int16).cpu().numpy().view(np.uint16)
                writer.add(name, bits, dtype="bfloat16", subsampled=True)
            elif x.dtype in (torch.float32, torch.float16):
                writer.add(name, x.cpu().numpy(), subsampled=True)
            else:
                writer.add(name, x.float().cpu().numpy(), subsampled=True)

    def make_hook(name):
        if with_kwargs:
            def hook(module, args, kwargs):
                record(name, args[0] if args else kwargs.get("input"))
                return None
        else:
            def hook(module, args):
                record(name, args[0] if args else None)
                return None
        return hook

    for name in names:
        if with_kwargs:
            handles.append(linears[name].register_forward_pre_hook(make_hook(name), with_kwargs=True))
        else:
            handles.append(linears[name].register_forward_pre_hook(make_hook(name)))
    return handles, names


def load_factory(spec: str) -> Callable:
    module, sep, func = spec.partition(":")
    if not sep or not module or not func:
        raise SystemExit(f"--model-factory {spec!r}: expected package.module:function")
    obj = importlib.import_module(module)
    for part in func.split("."):
        obj = getattr(obj, part)
    return obj


def run_inputs(model, inputs: Iterable, method: str, writer: DumpWriter, names: Sequence[str]) -> int:
    """Runs the model on each input until every hooked layer has its ``max_calls``."""
    import torch

    fn = getattr(model, method) if method else model
    n = 0
    with torch.inference_mode():
        for item in inputs:
            if isinstance(item, dict):
                fn(**item)
            elif isinstance(item, (tuple, list)):
                fn(*item)
            else:
                fn(item)
            n += 1
            if writer.max_calls is not None and all(not writer.wants(name) for name in names):
                break
    return n


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-factory", required=True, metavar="PKG.MOD:FUNC",
                   help="a function (no arguments) returning (model, inputs): an nn.Module whose "
                        "named_modules() names are the checkpoint's, and an iterable of example inputs "
                        "(each a tuple of positional args, a dict of keyword args, or one argument)")
    p.add_argument("--method", default="",
                   help="call model.METHOD(...) instead of model(...) (e.g. sample_actions)")
    p.add_argument("-o", "--output", required=True, help="the dump file (e.g. calib.h5)")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--format", choices=DumpWriter.FORMATS, default="hdf5")
    p.add_argument("--dtype", choices=DumpWriter.DTYPES, default="keep",
                   help="stored dtype; keep: as the layer saw it (bf16 as uint16 + attribute)")
    p.add_argument("--max-calls", type=int, default=64,
                   help="calls kept per layer (duquant uses the first --calib-steps; default 64)")
    p.add_argument("--max-tokens", type=int, default=1024, help="rows kept per call (0: all)")
    p.add_argument("--subsample", choices=("even", "random"), default="even",
                   help="even: evenly spaced rows floor(i*n/k); random: seeded draw without replacement")
    p.add_argument("--seed", type=int, default=0, help="seed of --subsample random")
    p.add_argument("--name-prefix", default="", help="prepended to the model's module names")
    sel = p.add_argument_group("selection (as duquant pack)")
    sel.add_argument("--runtime", choices=RUNTIMES, default="openpi",
                     help="whose selection rules and default --include/--exclude: openpi (OPENPI_DUQUANT_*) "
                          "or gr00t (GR00T_DUQUANT_*)")
    sel.add_argument("--scope", default="")
    sel.add_argument("--include", default=None, help="regex (re.search); default: the runtime's")
    sel.add_argument("--exclude", default=None, help="regex (re.search); default: the runtime's")
    sel.add_argument("--layers", default="", help="exact module names, comma-separated")
    sel.add_argument("--include-action-head", action="store_true")
    a = p.parse_args(argv)

    model, inputs = load_factory(a.model_factory)()
    writer = DumpWriter(a.output, dtype=a.dtype, max_calls=a.max_calls or None,
                        max_tokens=a.max_tokens or None, subsample=a.subsample, seed=a.seed,
                        format=a.format, overwrite=a.force)
    with writer:
        handles, names = install_hooks(model, writer, a.scope, a.include, a.exclude, parse_layers(a.layers),
                                       a.include_action_head, a.name_prefix, a.runtime)
        if not names:
            raise SystemExit("dump_activations: the selection matches no nn.Linear of the model")
        import torch
        print(f"dump_activations: hooked {len(names)} linear layers ({a.runtime} selection; torch "
              f"{torch.__version__}, pre-hook {hook_signature()})", file=sys.stderr)
        try:
            steps = run_inputs(model, inputs, a.method, writer, names)
        finally:
            for h in handles:
                h.remove()
    short = [n for n in names if writer.calls(n) < (a.max_calls or 1)]
    print(f"dump_activations: {steps} inputs, {writer.summary()}", file=sys.stderr)
    if short:
        print(f"dump_activations: warning: {len(short)} layers have fewer than {a.max_calls} calls "
              f"(e.g. {short[0]}: {writer.calls(short[0])})", file=sys.stderr)
    missed = writer.missed()
    if missed:
        first = sorted(missed)[0]
        why = ("this torch passes hooks the positional arguments only: a layer called as linear(input=x) "
               "is not seen (torch >= 2.0 sees it)" if not forward_pre_hook_takes_kwargs()
               else "the layer's input was not a tensor")
        print(f"dump_activations: warning: {sum(missed.values())} calls (of {len(missed)} layers) were not "
              f"recorded, e.g. {first}: {missed[first]} calls; {why}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
