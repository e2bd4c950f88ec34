#!/usr/bin/env python3
"""Creates the NF4 (bitsandbytes) and PEFT LoRA adapter fixtures that the Rust
tests compare against. Runs after make_golden.py (scripts/golden/make.sh) and
reads its outputs (tests/golden/checkpoints/f32, tests/golden/data,
tests/golden/values.json); it never writes anything make_golden.py wrote.

  tests/golden/nf4/nf4.safetensors, nf4.json      bitsandbytes NF4 blockwise quantisation
  tests/golden/adapters/peft-default/             PEFT LoRA r=8 (7 target names, vision q/k/v too)
  tests/golden/adapters/peft-rslora-projector/    rsLoRA r=4, vision excluded, projector in modules_to_save
  tests/golden/adapters/peft-legacy-keys/         peft-default under the <=4.51 module paths
  tests/golden/adapters/values.json               losses / logits with the adapters, configs, keys

Deterministic: the script re-executes itself with PYTHONHASHSEED=0 (PEFT
writes `target_modules` from a Python set, whose order depends on the string
hash seed). See tests/golden/README.md ("Adapter and NF4 fixtures").
"""

from __future__ import annotations

import os
import sys

if os.environ.get("PYTHONHASHSEED") != "0":
    # PEFT stores target_modules as a set and writes it as a list: the order
    # of adapter_config.json's "target_modules" follows the string hash seed.
    env = dict(os.environ, PYTHONHASHSEED="0")
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)

import importlib.metadata
import json
import logging
import math
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

# bitsandbytes' CPU backend logs a warning at import time when the optional
# `kernels` package is missing (only used by its CPU 4-bit gemm).
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_golden as G  # noqa: E402  (helpers and constants; its main() is not run)

ROOT = G.ROOT
GOLDEN = G.GOLDEN
NF4_DIR = GOLDEN / "nf4"
ADAPTERS = GOLDEN / "adapters"
BASE_REL = "tests/golden/checkpoints/f32"  # relative: PEFT writes it into adapter_config.json

PINNED_EXTRA = {"peft": "0.21.2", "bitsandbytes": "0.50.2", "accelerate": "1.15.0"}
SEED = G.SEED
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BLOCKSIZE = 64
NESTED_BLOCKSIZE = 256


def log(*args):
    print("adapters:", *args, flush=True)


def check_environment() -> dict:
    versions = G.check_environment()  # pins of make_golden.py, seeds, 1 thread, deterministic
    for name, want in PINNED_EXTRA.items():
        got = importlib.metadata.version(name)
        if got.split("+")[0] != want:
            sys.exit(f"adapters: {name} {got} is installed, {want} is pinned")
        versions[name] = got
    return versions


# ---------------------------------------------------------------------------
# 1. NF4
# ---------------------------------------------------------------------------

# bitsandbytes registers its reference torch kernels under the "default"
# device type (= CompositeExplicitAutograd) and native C++ kernels under "cpu".
# On CPU, quantize_4bit has no native kernel (the reference one runs), but
# quantize_blockwise (the 8-bit double-quant stage) and dequantize_4bit do.
# redispatch() with this key set calls the reference kernel explicitly.
REFERENCE_KERNEL = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)

# bitsandbytes csrc/kernels.cu dQuantizeNF4: the decision tree's thresholds
# (f32 literals), sorted. Index = number of thresholds t with x > t.
CUDA_NF4_THRESHOLDS = np.array([
    -0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
    -0.23460740596055984, -0.13791173323988914, -0.045525018125772476, 0.03979014977812767,
    0.1202552504837513, 0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
    0.5016634166240692, 0.6427869200706482, 0.8614784181118011], dtype=np.float32)


def np_blockwise_scale(x32: np.ndarray, blocksize: int):
    """bitsandbytes backends/default/ops.py: absmax per block of the flat
    row-major tensor (a trailing partial block gets its own); full blocks are
    scaled by x * (1/max(absmax, 1e-38)), the partial block by x / max(absmax, 1e-38)
    (division, as that kernel does); clamp to [-1, 1]. All f32. A full block's
    stored absmax is max|x| (0 for an all-zero block), a partial block's is
    max(max|x|, 1e-38)."""
    n = x32.size
    full = n - n % blocksize
    blocks = x32[:full].reshape(-1, blocksize)
    absmax = np.abs(blocks).max(axis=1) if full else np.zeros(0, np.float32)
    recip = (np.float32(1.0) / np.maximum(absmax, np.float32(1e-38))).astype(np.float32)
    scaled = np.clip(blocks * recip[:, None], -1, 1).reshape(-1)
    if n % blocksize:
        tail = x32[full:]
        am = np.maximum(np.abs(tail).max(), np.float32(1e-38)).astype(np.float32)
        # the partial block's absmax is stored CLAMPED to >= 1e-38 (full blocks: unclamped)
        absmax = np.concatenate([absmax, [am]]).astype(np.float32)
        scaled = np.concatenate([scaled, np.clip(tail / am, -1, 1)])
    return scaled.astype(np.float32), absmax.astype(np.float32)


def np_nearest(scaled: np.ndarray, code: np.ndarray) -> np.ndarray:
    """Index of the nearest code value (code sorted), decided by the f32
    midpoints (code[i] + code[i+1]) / 2; a value equal to a midpoint takes the
    lower index (torch.bucketize(right=False) == searchsorted side='left')."""
    bounds = ((code[:-1] + code[1:]) / np.float32(2)).astype(np.float32)
    return np.searchsorted(bounds, scaled, side="left").astype(np.uint8)


def np_quantize_nf4(x: torch.Tensor, code16: np.ndarray):
    x32 = x.float().reshape(-1).numpy()
    scaled, absmax = np_blockwise_scale(x32, BLOCKSIZE)
    q = np_nearest(scaled, code16)
    # odd numel: bnb pads the *scaled* values with 0.0 before quantising, so the
    # pad nibble is the code of 0.0 (7), not 0
    qp = np_nearest(np.concatenate([scaled, np.zeros(scaled.size % 2, np.float32)]), code16)
    packed = ((qp[0::2] << 4) | qp[1::2]).astype(np.uint8).reshape(-1, 1)
    return packed, absmax, q


def np_unpack(packed: np.ndarray, n: int) -> np.ndarray:
    p = packed.reshape(-1)
    q = np.empty(p.size * 2, np.uint8)
    q[0::2] = p >> 4
    q[1::2] = p & 0xF
    return q[:n]


def np_dequant(q: np.ndarray, absmax: np.ndarray, code: np.ndarray, blocksize: int) -> np.ndarray:
    vals = code[q.astype(np.int64)]
    scale = absmax[np.arange(q.size) // blocksize]
    return (vals * scale).astype(np.float32)


def cuda_dquantize8(code: np.ndarray, x: np.float32) -> int:
    """bitsandbytes csrc/kernels.cu dQuantize<0> (the 8-bit kernel of
    quantize_blockwise on CUDA), f32 arithmetic."""
    f = np.float32
    pivot, upper_pivot, lower_pivot = 127, 255, 0
    lower, upper = f(-1.0), f(1.0)
    val = code[pivot]
    i = 64
    while i > 0:
        if x > val:
            lower_pivot, lower = pivot, val
            pivot += i
        else:
            upper_pivot, upper = pivot, val
            pivot -= i
        val = code[pivot]
        i >>= 1
    if upper_pivot == 255:
        upper = code[upper_pivot]
    if lower_pivot == 0:
        lower = code[lower_pivot]
    if x > val:
        mid = f((upper + val) * f(0.5))
        return upper_pivot if x > mid else pivot
    mid = f((lower + val) * f(0.5))
    return lower_pivot if x < mid else pivot


def nf4_inputs() -> list[dict]:
    g = torch.Generator().manual_seed(SEED + 4)
    out = []

    w = torch.randn(64, 96, generator=g) / math.sqrt(96)
    out.append(dict(name="w64x96_f32", x=w, what="f32 [64,96], N(0, 1/96): rows of 96 are not a multiple of 64 "
                    "(blocks straddle rows); 96 blocks, 1 nested block"))

    w = (torch.randn(48, 64, generator=g) * 0.05).to(torch.bfloat16)
    out.append(dict(name="w48x64_bf16", x=w, what="bf16 [48,64], N(0, 0.05^2) cast to bf16; 48 blocks"))

    w = torch.randn(5, 39, generator=g) * 0.3
    out.append(dict(name="w5x39_f32", x=w, what="f32 [5,39]: numel 195 = 3 full blocks + a partial block of 3, "
                    "odd numel (the last byte's low nibble is padding: code 7, i.e. 0.0 quantised)"))

    w = torch.randn(160, 128, generator=g) / math.sqrt(128)
    w[3, 17] = 8.0     # outlier: its block's other values collapse to few codes
    w[100, 5] = -6.5   # negative outlier in another block
    w[40, 0:64] = 0.0  # an all-zero block (block 80): absmax 0
    out.append(dict(name="w160x128_outlier_f32", x=w, what="f32 [160,128], N(0, 1/128) with outliers 8.0 at "
                    "[3,17] (block 6) and -6.5 at [100,5] (block 200), and an all-zero block (block 80, absmax 0); "
                    "320 blocks, 2 nested blocks (256 + 64)"))

    # Tie cases: one block with absmax exactly 1 (so x * (1/absmax) == x), holding
    # the 15 f32 midpoints between NF4 codes and their f32 neighbours.
    code = np.array(NF4_CODE, dtype=np.float32)
    mids = ((code[:-1] + code[1:]) / np.float32(2)).astype(np.float32)
    vals = [1.0, -1.0]
    for m in mids:
        vals += [m, np.nextafter(m, np.float32(np.inf)), np.nextafter(m, np.float32(-np.inf))]
    vals += [0.0] * (64 - len(vals))
    out.append(dict(name="ties_f32", x=torch.tensor(np.array(vals, dtype=np.float32)),
                    what="f32 [64], one block, absmax exactly 1.0: 1, -1, then for each of the 15 NF4 midpoints m "
                    "(f32 (code[i]+code[i+1])/2): m, nextafter(m, +inf), nextafter(m, -inf); zeros. A value equal "
                    "to a midpoint gets the LOWER code"))
    return out


NF4_CODE = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]


def make_nf4(versions) -> dict:
    import bitsandbytes.functional as BF
    from bitsandbytes.functional import QuantState
    from bitsandbytes.utils import unpack_tensor_to_dict
    from safetensors.torch import save_file

    ops = torch.ops.bitsandbytes
    if NF4_DIR.exists():
        shutil.rmtree(NF4_DIR)
    NF4_DIR.mkdir(parents=True)

    code16_t = BF.get_4bit_type("nf4", device="cpu")
    code16 = code16_t.numpy().astype(np.float32)
    assert code16.tolist() == np.array(NF4_CODE, np.float32).tolist()
    assert code16[7] == 0.0
    dyn_t = BF.create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)
    dyn = dyn_t.numpy().astype(np.float32)
    assert dyn.shape == (256,) and np.all(np.diff(dyn) >= 0)

    mids = ((code16[:-1] + code16[1:]) / np.float32(2)).astype(np.float32)
    cuda_thr_equal = bool(np.array_equal(mids, CUDA_NF4_THRESHOLDS))
    log(f"nf4: CUDA dQuantizeNF4 thresholds == f32 midpoints: {cuda_thr_equal}")

    tensors: dict[str, torch.Tensor] = {"nf4_code": code16_t.clone(), "nested_quant_map": dyn_t.clone()}
    doc_tensors = []
    for spec in nf4_inputs():
        name, x = spec["name"], spec["x"]
        n = x.numel()
        shape = list(x.shape)
        blocks = -(-n // BLOCKSIZE)
        entry = {"name": name, "what": spec["what"], "dtype": str(x.dtype).replace("torch.", ""), "shape": shape,
                 "numel": n, "blocks": blocks, "nested_blocks": -(-blocks // NESTED_BLOCKSIZE)}
        tensors[f"{name}.x"] = x.clone().contiguous()
        checks = {}

        # ---- plain NF4 ---------------------------------------------------
        packed_pub, st = BF.quantize_4bit(x, blocksize=BLOCKSIZE, compress_statistics=False, quant_type="nf4")
        packed_ref, absmax_ref = ops.quantize_4bit.default.redispatch(REFERENCE_KERNEL, x, BLOCKSIZE, "nf4",
                                                                     torch.uint8)
        assert torch.equal(packed_pub, packed_ref) and torch.equal(st.absmax, absmax_ref), name
        assert packed_pub.dtype == torch.uint8 and list(packed_pub.shape) == [(n + 1) // 2, 1]
        assert st.absmax.dtype == torch.float32 and st.absmax.numel() == blocks
        np_packed, np_absmax, q = np_quantize_nf4(x, code16)
        assert np.array_equal(np_packed, packed_pub.numpy()), f"{name}: numpy replica packs differently"
        assert np.array_equal(np_absmax, st.absmax.numpy()), f"{name}: numpy replica absmax differs"
        # Emulation of CUDA's kQuantizeBlockwise + dQuantizeNF4 (read from csrc/kernels.cu, not run):
        # every block, the partial one too, is scaled by x * (1/absmax) with no clamp, so an
        # all-zero block gives 0 * inf = NaN, and NaN > t is false for every threshold: code 0.
        x32 = x.float().reshape(-1).numpy()
        blk = np.arange(n) // BLOCKSIZE
        am_raw = np.array([np.abs(x32[i:i + BLOCKSIZE]).max() for i in range(0, n, BLOCKSIZE)], np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled_cuda = (x32 * (np.float32(1) / am_raw)[blk]).astype(np.float32)
            q_cuda = (scaled_cuda[:, None] > CUDA_NF4_THRESHOLDS[None, :]).sum(1).astype(np.uint8)
        diff = q_cuda != q
        checks["cuda_emulated_code_mismatches"] = int(diff.sum())
        assert np.all(am_raw[blk[diff]] == 0), f"{name}: CUDA emulation differs outside all-zero blocks"

        deq_ref = ops.dequantize_4bit.default.redispatch(REFERENCE_KERNEL, packed_pub, st.absmax, BLOCKSIZE, "nf4",
                                                         list(x.shape), torch.float32)
        np_deq = np_dequant(np_unpack(np_packed, n), np_absmax, code16, BLOCKSIZE).reshape(shape)
        assert np.array_equal(np_deq, deq_ref.numpy()), f"{name}: numpy dequant differs from bnb's reference"
        st32 = QuantState(absmax=st.absmax, shape=x.shape, code=st.code, blocksize=BLOCKSIZE, quant_type="nf4",
                          dtype=torch.float32)
        deq_native = BF.dequantize_4bit(packed_pub, st32)  # bnb's public API; CPU native kernel where it has one
        # (for a 1-D weight the native kernel returns shape [1, n]: compare values only)
        checks["cpu_native_dequantize_4bit_equal"] = bool(torch.equal(deq_native.reshape(-1), deq_ref.reshape(-1)))
        checks["cpu_native_dequantize_4bit_max_abs_diff"] = float((deq_native.reshape(-1) - deq_ref.reshape(-1))
                                                                  .abs().max())
        tensors[f"{name}.nf4.packed"] = packed_pub.clone()
        tensors[f"{name}.nf4.codes"] = torch.from_numpy(q.copy())
        tensors[f"{name}.nf4.absmax"] = st.absmax.clone()
        tensors[f"{name}.nf4.dequant"] = deq_ref.clone()
        if x.dtype != torch.float32:
            deq_bf = ops.dequantize_4bit.default.redispatch(REFERENCE_KERNEL, packed_pub, st.absmax, BLOCKSIZE, "nf4",
                                                            list(x.shape), x.dtype)
            assert torch.equal(deq_bf, deq_ref.to(x.dtype))
            tensors[f"{name}.nf4.dequant_bf16"] = deq_bf.clone()
            checks["bnb_dequantize_4bit_bf16_equal_reference"] = bool(torch.equal(BF.dequantize_4bit(packed_pub, st),
                                                                                  deq_bf))
        entry["quant_state"] = unpack_tensor_to_dict(st.as_dict(packed=True)["quant_state.bitsandbytes__nf4"])

        # ---- double quant ---------------------------------------------------
        packed_dq, st_dq = BF.quantize_4bit(x, blocksize=BLOCKSIZE, compress_statistics=True, quant_type="nf4")
        assert torch.equal(packed_dq, packed_pub)
        absmax = st.absmax
        offset = absmax.mean()
        assert torch.equal(offset, st_dq.offset), name
        q8, absmax2 = ops.quantize_blockwise.default.redispatch(REFERENCE_KERNEL, absmax - offset, dyn_t,
                                                               NESTED_BLOCKSIZE)
        checks["cpu_native_nested_absmax_equal"] = bool(torch.equal(absmax2, st_dq.state2.absmax))
        assert torch.equal(st_dq.state2.code, dyn_t) and st_dq.state2.blocksize == NESTED_BLOCKSIZE
        native_mismatch = int((q8 != st_dq.absmax).sum())
        checks["cpu_native_8bit_codes_mismatches"] = native_mismatch
        # numpy replica of the nested stage
        off_np = np.float32(absmax.numpy().astype(np.float64).mean())
        checks["offset_equals_f32_of_f64_mean"] = bool(off_np == offset.numpy())
        centred = (absmax.numpy() - offset.numpy()).astype(np.float32)
        scaled8, am2 = np_blockwise_scale(centred, NESTED_BLOCKSIZE)
        q8_np = np_nearest(scaled8, dyn)
        assert np.array_equal(q8_np, q8.numpy()) and np.array_equal(am2, absmax2.numpy()), name
        # CUDA's binary search (dQuantize<0>) on x * (1/absmax2), unclamped (NaN for an all-zero block)
        blk2 = np.arange(centred.size) // NESTED_BLOCKSIZE
        am2_raw = np.array([np.abs(centred[i:i + NESTED_BLOCKSIZE]).max()
                            for i in range(0, centred.size, NESTED_BLOCKSIZE)], np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled8_cuda = (centred * (np.float32(1) / am2_raw)[blk2]).astype(np.float32)
            q8_cuda = np.array([cuda_dquantize8(dyn, v) for v in scaled8_cuda], np.uint8)
        diff8 = q8_cuda != q8_np
        checks["cuda_emulated_8bit_code_mismatches"] = int(diff8.sum())
        assert np.all(am2_raw[blk2[diff8]] == 0), f"{name}: CUDA 8-bit emulation differs outside all-zero blocks"
        # restore absmax as bnb does: dequantize_blockwise (code8[q] * absmax2, f32), then += offset
        absmax_deq = ops.dequantize_blockwise.default.redispatch(REFERENCE_KERNEL, q8, absmax2, dyn_t,
                                                                 NESTED_BLOCKSIZE, torch.float32)
        absmax_deq = absmax_deq + offset
        np_absmax_deq = (np_dequant(q8_np, am2, dyn, NESTED_BLOCKSIZE) + offset.numpy()).astype(np.float32)
        assert np.array_equal(np_absmax_deq, absmax_deq.numpy()), name
        deq_dq = ops.dequantize_4bit.default.redispatch(REFERENCE_KERNEL, packed_dq, absmax_deq, BLOCKSIZE, "nf4",
                                                        list(x.shape), torch.float32)
        np_deq_dq = np_dequant(q, np_absmax_deq, code16, BLOCKSIZE).reshape(shape)
        assert np.array_equal(np_deq_dq, deq_dq.numpy()), name
        # bnb's public dequantize_4bit with the reference components (nested path)
        st_ref = QuantState(absmax=q8, shape=x.shape, code=code16_t, blocksize=BLOCKSIZE, quant_type="nf4",
                            dtype=torch.float32, offset=offset,
                            state2=QuantState(absmax=absmax2, code=dyn_t, blocksize=NESTED_BLOCKSIZE,
                                              dtype=torch.float32))
        deq_dq_native = BF.dequantize_4bit(packed_dq, st_ref)
        checks["cpu_native_dequantize_4bit_dq_equal"] = bool(torch.equal(deq_dq_native.reshape(-1),
                                                                         deq_dq.reshape(-1)))
        off_ulps = int(abs(np.array(off_np).view(np.int32) - np.array(offset.numpy()).view(np.int32)))
        checks["offset_ulps_from_f32_of_f64_mean"] = off_ulps
        tensors[f"{name}.nf4_dq.packed"] = packed_dq.clone()
        tensors[f"{name}.nf4_dq.absmax"] = q8.clone()
        tensors[f"{name}.nf4_dq.nested_absmax"] = absmax2.clone()
        tensors[f"{name}.nf4_dq.offset"] = offset.reshape(1).clone()
        tensors[f"{name}.nf4_dq.absmax_dequant"] = absmax_deq.clone()
        tensors[f"{name}.nf4_dq.dequant"] = deq_dq.clone()
        if x.dtype != torch.float32:
            tensors[f"{name}.nf4_dq.dequant_bf16"] = deq_dq.to(x.dtype)
        entry["offset"] = float(offset)
        qs = unpack_tensor_to_dict(st_dq.as_dict(packed=True)["quant_state.bitsandbytes__nf4"])
        entry["quant_state_dq"] = qs
        err = (deq_ref - x.float()).abs()
        entry["max_abs_error"] = {"nf4": float(err.max()), "nf4_dq": float((deq_dq - x.float()).abs().max())}
        entry["checks"] = checks
        doc_tensors.append(entry)
        log(f"nf4: {name} {shape} {entry['dtype']}: {checks}")

    tensors = {k: v.contiguous() for k, v in sorted(tensors.items())}
    save_file(tensors, str(NF4_DIR / "nf4.safetensors"), metadata={"format": "pt"})
    doc = {
        "about": "bitsandbytes NF4 blockwise quantisation fixtures; see tests/golden/README.md "
                 "(Adapter and NF4 fixtures). Regenerate with scripts/golden/make.sh.",
        "versions": {k: versions[k] for k in ("python", "torch", "numpy", "bitsandbytes")},
        "seed": SEED,
        "quant_type": "nf4",
        "blocksize": BLOCKSIZE,
        "nested_blocksize": NESTED_BLOCKSIZE,
        "file": "nf4.safetensors",
        "code": G.F32List(code16.tolist()),
        "code_midpoints_f32": G.F32List(mids.tolist()),
        "cuda_thresholds_equal_f32_midpoints": cuda_thr_equal,
        "tensor_names": {
            "nf4_code": "F32 [16], NF4 code table (index -> value), sorted, index 7 = 0",
            "nested_quant_map": "F32 [256], the signed dynamic map used for the 8-bit double quantisation "
                                "(create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)), sorted",
            "<t>.x": "the input weight (F32 or BF16), shape as in `tensors`",
            "<t>.nf4.packed": "U8 [ceil(numel/2), 1]: two codes per byte, element 2i in the HIGH nibble, 2i+1 in "
                              "the low nibble; flat row-major order; odd numel: the last low nibble is 7 (bnb pads the scaled values with 0.0)",
            "<t>.nf4.codes": "U8 [numel]: the unpacked 4-bit codes (0..15), for debugging",
            "<t>.nf4.absmax": "F32 [blocks]: max |x| per block of 64 consecutive flat elements (last block partial)",
            "<t>.nf4.dequant": "F32 <shape>: code[q] * absmax[block] in f32",
            "<t>.nf4.dequant_bf16": "BF16 <shape> (bf16 inputs only): what bnb's dequantize_4bit returns for a bf16 "
                                    "quant_state (the f32 dequant rounded to bf16)",
            "<t>.nf4_dq.packed": "U8, identical to <t>.nf4.packed (double quant only changes the absmax storage)",
            "<t>.nf4_dq.absmax": "U8 [blocks]: 8-bit codes into nested_quant_map of (absmax - offset), blockwise 256",
            "<t>.nf4_dq.nested_absmax": "F32 [ceil(blocks/256)]: max |absmax - offset| per block of 256",
            "<t>.nf4_dq.offset": "F32 [1]: mean(absmax) (torch.mean, f32)",
            "<t>.nf4_dq.absmax_dequant": "F32 [blocks]: nested_quant_map[q8] * nested_absmax[i/256], then + offset "
                                         "(two f32 roundings, not fused)",
            "<t>.nf4_dq.dequant": "F32 <shape>: code[q] * absmax_dequant[block]",
            "<t>.nf4_dq.dequant_bf16": "BF16 <shape> (bf16 inputs only)",
        },
        "tensors": doc_tensors,
    }
    G.write_json(NF4_DIR / "nf4.json", doc)
    return doc


# ---------------------------------------------------------------------------
# 2. PEFT adapters
# ---------------------------------------------------------------------------


@contextmanager
def captured_warnings():
    """Collects Python warnings and peft/transformers log records >= WARNING."""
    records: list[str] = []

    class H(logging.Handler):
        def emit(self, record):
            records.append(f"{record.name}: {record.getMessage()}")

    h = H(level=logging.WARNING)
    loggers = [logging.getLogger(n) for n in ("peft", "transformers")]
    for lg in loggers:
        lg.addHandler(h)
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        yield records
    for lg in loggers:
        lg.removeHandler(h)
    records.extend(f"{w.category.__name__}: {w.message}" for w in ws
                   if "is_gradient_checkpointing" not in str(w.message))  # transformers 5.24 deprecation via PEFT


def load_base():
    from transformers import PaliGemmaForConditionalGeneration

    model, info = PaliGemmaForConditionalGeneration.from_pretrained(
        BASE_REL, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(k), (k, info.get(k))
    return model.eval()


def forward_values(model, batch, positions, labels):
    fwd = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "pixel_values", "labels")}
    with torch.no_grad():
        out = model(**fwd)
    logits = out.logits.float()
    loss = float(out.loss)
    manual = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                               labels[:, 1:].reshape(-1), ignore_index=-100)
    assert abs(float(manual) - loss) <= 1e-6 * max(1.0, abs(loss)), (float(manual), loss)
    rows = [{"b": p["b"], "t": p["t"], "what": p["what"], "values": G.F32List(logits[p["b"], p["t"]].tolist())}
            for p in positions]
    return loss, logits, rows


def valid_values(model, vbatch) -> dict:
    with torch.no_grad():
        out = model(**{k: vbatch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "pixel_values",
                                              "labels")})
    lf = out.logits.float()
    labels = vbatch["labels"]
    per_row = []
    for b in range(lf.shape[0]):
        s = torch.nn.functional.cross_entropy(lf[b, :-1], labels[b, 1:], ignore_index=-100, reduction="sum")
        per_row.append({"loss_sum": float(s), "tokens": int((labels[b, 1:] != -100).sum())})
    return {"loss": float(out.loss), "tokens": int((labels[:, 1:] != -100).sum()), "per_row": per_row}


def randomise_adapter(peft_model, seed: int, b_std: float):
    """Deterministic non-zero LoRA weights: A ~ N(0, 1/in), B ~ N(0, b_std^2),
    in sorted parameter-name order."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(peft_model.named_parameters(), key=lambda kv: kv[0]):
            if ".lora_A." in name:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            elif ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * b_std)


def adapted_modules(peft_model) -> list[str]:
    from peft.tuners.lora import LoraLayer

    pre = "base_model.model."
    names = [n[len(pre):] for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)]
    return sorted(names)


def tensor_index(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        keys = sorted(f.keys())
        info = {k: {"dtype": str(f.get_slice(k).get_dtype()), "shape": list(f.get_slice(k).get_shape())}
                for k in keys}
    return {"metadata": meta, "tensors": info}


def to_legacy_key(key: str) -> str:
    pre = "base_model.model."
    assert key.startswith(pre), key
    rest = key[len(pre):]
    for new, old in (("model.language_model.", "language_model.model."),
                     ("model.vision_tower.", "vision_tower.vision_model."),
                     ("model.multi_modal_projector.", "multi_modal_projector.")):
        if rest.startswith(new):
            return pre + old + rest[len(new):]
    raise KeyError(key)


def build_adapter(name: str, cfg_kwargs: dict, seed: int, b_std: float, perturb_projector: bool):
    from peft import LoraConfig, get_peft_model

    d = ADAPTERS / name
    base = load_base()
    cfg = LoraConfig(**cfg_kwargs)
    with captured_warnings() as warns:
        pm = get_peft_model(base, cfg)
    assert not warns, warns
    trainable, total = pm.get_nb_trainable_parameters()
    randomise_adapter(pm, seed, b_std)
    mts_params = []
    if perturb_projector:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for pname, p in sorted(pm.named_parameters(), key=lambda kv: kv[0]):
                if ".modules_to_save.default." in pname:
                    fan_in = p.shape[1] if p.ndim == 2 else 1
                    p.add_(torch.randn(p.shape, generator=g) * (0.5 / math.sqrt(fan_in) if p.ndim == 2 else 0.1))
                    mts_params.append(pname)
        assert mts_params, "no modules_to_save parameters"
    trainable_names = sorted(n for n, p in pm.named_parameters() if p.requires_grad)
    pm.save_pretrained(str(d))
    files_written = sorted(p.name for p in d.iterdir())
    # PEFT's model card (boilerplate template) is not needed by any loader.
    (d / "README.md").unlink()
    for f in d.iterdir():
        f.chmod(0o644)
    info = {
        "dir": name,
        "lora_config_kwargs": cfg_kwargs,
        "files_written_by_save_pretrained": files_written,
        "files_kept": sorted(p.name for p in d.iterdir()),
        "trainable_parameters": trainable,
        "all_parameters": total,
        "trainable_parameter_names": trainable_names,
        "adapted_modules": adapted_modules(pm),
        "modules_to_save_parameters_in_memory": mts_params,
        "randomised": f"lora_A ~ N(0, 1/in_features), lora_B ~ N(0, {b_std}^2), torch.Generator seed {seed}, "
                      "sorted parameter names" + ("; projector copy += N(0, (0.5/sqrt(in))^2) weight, N(0, 0.1^2) "
                                                  f"bias (seed {seed + 1})" if perturb_projector else ""),
    }
    return pm, info


def adapter_values(pm_in_memory, name: str, proc, batch, positions, vbatch) -> dict:
    from peft import PeftModel

    labels = batch["labels"]
    d = ADAPTERS / name
    cfg_text = (d / "adapter_config.json").read_text()
    adapter_config = json.loads(cfg_text)

    # unmerged, loaded from disk
    base = load_base()
    with captured_warnings() as warns:
        pm = PeftModel.from_pretrained(base, f"tests/golden/adapters/{name}")
    assert not warns, warns
    pm.eval()
    loss, logits, rows = forward_values(pm, batch, positions, labels)
    # same as the in-memory model that was saved
    pm_in_memory.eval()
    loss_mem, logits_mem, _ = forward_values(pm_in_memory, batch, positions, labels)
    assert torch.equal(logits, logits_mem), f"{name}: reloaded adapter differs from the saved one"
    valid = valid_values(pm, vbatch)

    # LoRA math check on one module: merged W = W + scaling * B @ A
    scaling = adapter_config["lora_alpha"] / (math.sqrt(adapter_config["r"]) if adapter_config["use_rslora"]
                                              else adapter_config["r"])
    lin = pm.base_model.model.model.language_model.layers[0].self_attn.q_proj
    assert lin.scaling["default"] == scaling, (lin.scaling, scaling)
    W = lin.base_layer.weight.detach().clone()
    delta = scaling * (lin.lora_B["default"].weight @ lin.lora_A["default"].weight)

    merged = pm.merge_and_unload()
    merged.eval()
    assert torch.allclose(merged.model.language_model.layers[0].self_attn.q_proj.weight, W + delta,
                          rtol=0, atol=1e-6)
    mloss, mlogits, _ = forward_values(merged, batch, positions, labels)
    max_diff = float((mlogits - logits).abs().max())
    assert max_diff < 1e-4, f"{name}: merged logits differ from unmerged by {max_diff}"
    log(f"{name}: loss {loss!r} (merged {mloss!r}, max |logit diff| {max_diff:.2e}); valid {valid['loss']!r}")
    return {
        "adapter_config": adapter_config,
        "scaling": scaling,
        "adapter_model": tensor_index(d / "adapter_model.safetensors"),
        "loss": loss,
        "loss_tokens": int((labels[:, 1:] != -100).sum()),
        "logits": rows,
        "valid": valid,
        # merged logit rows are not stored: they equal "logits" within max_abs_logit_diff_vs_unmerged
        "merged": {"loss": mloss, "max_abs_logit_diff_vs_unmerged": max_diff},
    }


def write_legacy(src: str, dst: str, base_dir: Path = ADAPTERS) -> dict:
    from safetensors.torch import load_file, save_file

    s, d = ADAPTERS / src, base_dir / dst
    d.mkdir(parents=True)
    sd = load_file(str(s / "adapter_model.safetensors"))
    renamed = {to_legacy_key(k): v.contiguous() for k, v in sd.items()}
    save_file(dict(sorted(renamed.items())), str(d / "adapter_model.safetensors"), metadata={"format": "pt"})
    shutil.copyfile(s / "adapter_config.json", d / "adapter_config.json")
    for f in d.iterdir():
        f.chmod(0o644)
    return {"new_to_legacy": {k: to_legacy_key(k) for k in sorted(sd)}}


def legacy_peft_check(path: str, batch, positions, ref_logits_rows) -> dict:
    """Does PEFT 0.21 (on transformers 5.24) load the <=4.51 key form?"""
    from peft import PeftModel

    base = load_base()
    try:
        with captured_warnings() as warns:
            pm = PeftModel.from_pretrained(base, path)
    except Exception as e:  # noqa: BLE001 - recorded as a fact
        return {"peft_loads_it_to_the_same_logits": False, "peft_error": f"{type(e).__name__}: {e}"}
    pm.eval()
    loss, logits, rows = forward_values(pm, batch, positions, batch["labels"])
    same = all(r["values"] == ref["values"] for r, ref in zip(rows, ref_logits_rows))
    return {"peft_loads_it_to_the_same_logits": same, "peft_loss": loss, "peft_warnings": warns}


def make_adapters(versions) -> dict:
    import peft

    if ADAPTERS.exists():
        shutil.rmtree(ADAPTERS)
    ADAPTERS.mkdir(parents=True)
    golden = json.loads((GOLDEN / "values.json").read_text())

    proc = G.load_processor(G.CKPT / "f32")
    _, _, batch = G.batch_for(proc, "train")
    assert batch["input_ids"].tolist() == golden["processor"]["input_ids"], "train batch differs from values.json"
    positions = G.pick_positions(batch)
    assert positions == golden["logit_positions"], "logit positions differ from values.json"
    _, _, vbatch = G.batch_for(proc, "valid")
    assert vbatch["input_ids"].tolist() == golden["valid"]["input_ids"]

    base = load_base()
    base_loss, _, base_rows = forward_values(base, batch, positions, batch["labels"])
    assert base_loss == golden["variants"]["f32"]["loss"], (base_loss, golden["variants"]["f32"]["loss"])
    assert [r["values"] for r in base_rows] == [[float(np.float32(v)) for v in r["values"]]
                                                for r in golden["variants"]["f32"]["logits"]]

    adapters = {}
    pm, info = build_adapter("peft-default", dict(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=list(TARGETS), task_type="CAUSAL_LM", bias="none"),
        seed=SEED + 10, b_std=0.05, perturb_projector=False)
    info.update(adapter_values(pm, "peft-default", proc, batch, positions, vbatch))
    adapters["peft-default"] = info

    pm, info = build_adapter("peft-rslora-projector", dict(
        r=4, lora_alpha=8, use_rslora=True, lora_dropout=0.0, target_modules=list(TARGETS),
        exclude_modules=r".*vision_tower.*", modules_to_save=["multi_modal_projector"], task_type="CAUSAL_LM",
        bias="none"), seed=SEED + 20, b_std=0.05, perturb_projector=True)
    info.update(adapter_values(pm, "peft-rslora-projector", proc, batch, positions, vbatch))
    assert not any("vision_tower" in m for m in info["adapted_modules"])
    adapters["peft-rslora-projector"] = info

    leg = write_legacy("peft-default", "peft-legacy-keys")
    leg.update({"dir": "peft-legacy-keys", "same_values_as": "peft-default",
                "adapter_model": tensor_index(ADAPTERS / "peft-legacy-keys" / "adapter_model.safetensors"),
                "adapter_config": "identical to peft-default's adapter_config.json (copied)"})
    leg.update(legacy_peft_check("tests/golden/adapters/peft-legacy-keys", batch, positions,
                                 adapters["peft-default"]["logits"]))
    log(f"peft-legacy-keys: PEFT {peft.__version__} loads it to the same logits: "
        f"{leg['peft_loads_it_to_the_same_logits']} (loss {leg['peft_loss']!r})")
    # Not a fixture: the same renaming applied to peft-rslora-projector (LoRA keys
    # AND the modules_to_save projector weights), written to a temporary folder.
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        write_legacy("peft-rslora-projector", "legacy", Path(tmp))
        chk = legacy_peft_check(str(Path(tmp) / "legacy"), batch, positions,
                                adapters["peft-rslora-projector"]["logits"])
    chk = json.loads(json.dumps(chk).replace(tmp, "<tmp>"))
    leg["rslora_projector_in_legacy_form_not_a_fixture"] = chk
    log(f"peft-rslora-projector in the legacy form (not a fixture): {chk}")
    adapters["peft-legacy-keys"] = leg

    values = {
        "about": "PEFT LoRA adapter fixtures on the golden f32 checkpoint; see tests/golden/README.md "
                 "(Adapter and NF4 fixtures). Regenerate with scripts/golden/make.sh.",
        "versions": versions,
        "peft_version": peft.__version__,
        "seed": SEED,
        "base": BASE_REL,
        "attn_implementation": "eager",
        "batch": "the train batch of ../values.json -> processor (7 rows x 54, right padding)",
        "logit_positions": positions,
        "base_loss": base_loss,
        "adapters": adapters,
    }
    G.write_json(ADAPTERS / "values.json", values)
    return values


def main():
    os.chdir(ROOT)  # PEFT records base_model_name_or_path as given: keep it relative
    versions = check_environment()
    make_nf4(versions)
    make_adapters(versions)
    for d in (NF4_DIR, ADAPTERS):
        for f in d.rglob("*"):
            if f.is_file():
                f.chmod(0o644)
    total = sum(f.stat().st_size for d in (NF4_DIR, ADAPTERS) for f in d.rglob("*") if f.is_file())
    log(f"done; tests/golden/nf4 + tests/golden/adapters = {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
