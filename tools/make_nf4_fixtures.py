#!/usr/bin/env python3
"""NF4 + double-quantization fixtures for tests/test_nf4.cpp, computed by an independent numpy
rewrite of bitsandbytes' algorithm (Dettmers et al., QLoRA, arXiv:2305.14314; bitsandbytes csrc/kernels.cu
kQuantizeBlockwise, dQuantizeNF4, dQuantize<0>; functional.py quantize_4bit, quantize_blockwise,
create_dynamic_map; QuantState.as_dict(packed=True)). bitsandbytes itself is not needed.

    python3 tools/make_nf4_fixtures.py [--out tests/fixtures/nf4]

Writes OUT/nf4_cases.safetensors (inputs and expected outputs, keys '<case>.<field>'),
OUT/nf4_cases.json (shapes, offsets, torch's means, error statistics) and OUT/model.safetensors (a
bitsandbytes-format checkpoint with two Linear4bit weights). torch, where present, supplies the
dynamic map (float32 linspace) and the reference means; without it a numpy emulation is used and
the JSON says so. Deterministic: fixed seeds, no clocks.
"""
import argparse
import json
import math
import os
import struct
from fractions import Fraction

import numpy as np

try:
    import torch
except ImportError:  # numpy-only machines: the emulation below stands in
    torch = None

F32 = np.float32
FLT_MAX = np.finfo(np.float32).max

NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], dtype=F32)


def f32_round_exact(value):
    """Correctly rounded float32 of an exact Fraction (ties to even)."""
    c = F32(float(value))
    cands = [np.nextafter(c, F32(-np.inf)), c, np.nextafter(c, F32(np.inf))]
    return min(cands, key=lambda v: (abs(Fraction(float(v)) - value), int(np.array(v, dtype=F32).view(np.uint32)) & 1))


# dQuantizeNF4's literals. C++ and nvcc round a float literal ('...f') straight from the decimal to
# float32; float32(float(text)) rounds twice and differs for 4 of the 15 (each decimal is a double
# midpoint of two float32 codes, which sits on a float32 tie), so round from the exact decimal.
THRESHOLD_TEXT = ["-0.8480964004993439", "-0.6106329262256622", "-0.4599952697753906", "-0.33967943489551544",
                  "-0.23460740596055984", "-0.13791173323988914", "-0.045525018125772476", "0.03979014977812767",
                  "0.1202552504837513", "0.2035212516784668", "0.2920137718319893", "0.3893125355243683",
                  "0.5016634166240692", "0.6427869200706482", "0.8614784181118011"]


def f32_from_decimal(text):
    """Correctly rounded decimal -> float32, as a C++ compiler reads '<text>f'."""
    return f32_round_exact(Fraction(text))


THRESHOLDS = np.array([f32_from_decimal(t) for t in THRESHOLD_TEXT], dtype=F32)
NESTED_BS = 256


# ---------------------------------------------------------------- dynamic map
def linspace_f32_emulated(start, end, steps):
    """torch.linspace in float32 on the CPU (aten/src/ATen/native/cpu/RangeFactoriesKernel.cpp): first half
    start + step*i, second half end - step*(steps-1-i). torch's AVX2/AVX512 kernel builds contract each of
    these into one fused multiply-add, so round the exact value once."""
    start, end = F32(start), F32(end)
    step = F32((end - start) / F32(steps - 1))
    half = steps // 2
    fs, fe, fst = Fraction(float(start)), Fraction(float(end)), Fraction(float(step))
    return np.array([f32_round_exact(fs + fst * i) if i < half else f32_round_exact(fe - fst * (steps - 1 - i))
                     for i in range(steps)], dtype=F32)


def dynamic_map(signed, use_torch):
    data = []
    for i in range(7):
        items = 2 ** i + 1 if signed else 2 ** (i + 1) + 1
        if use_torch:
            b = torch.linspace(0.1, 1, items, dtype=torch.float32)
            means = ((b[:-1] + b[1:]) / 2.0)
            scaled = (10 ** (-6 + i)) * means
            data += scaled.tolist()
            if signed:
                data += (-(10 ** (-6 + i)) * means).tolist()
        else:
            b = linspace_f32_emulated(0.1, 1.0, items)
            means = (b[:-1] + b[1:]) / F32(2.0)
            scale = F32(10.0 ** (-6 + i))
            data += [float(v) for v in scale * means]
            if signed:
                data += [float(v) for v in -(scale * means)]
    data += [0.0, 1.0]
    data += [0.0] * (256 - len(data))
    data.sort()
    return np.array(data, dtype=F32)


# ---------------------------------------------------------------- quantizers
def block_absmax(xp):
    """Per-row max |x| as the kernel reduces it: fmaxf from -FLT_MAX, so NaN is ignored."""
    return np.fmax.reduce(np.abs(xp), axis=1, initial=-FLT_MAX).astype(F32)


def pad_blocks(x, bs):
    n = x.size
    nb = -(-n // bs)
    xp = np.zeros(nb * bs, dtype=F32)  # the kernel's load pads a cut block with zeros
    xp[:n] = x
    return xp.reshape(nb, bs)


def reciprocal(m):
    with np.errstate(divide="ignore"):
        return (F32(1.0) / m).astype(F32)


def nf4_encode(y):
    return (y[..., None] > THRESHOLDS).sum(axis=-1).astype(np.uint8)  # NaN compares false: code 0


def quantize_nf4_blocks(x, bs):
    n = x.size
    xp = pad_blocks(x, bs)
    absmax = block_absmax(xp)
    with np.errstate(invalid="ignore"):
        y = (xp * reciprocal(absmax)[:, None]).astype(F32)
    codes = nf4_encode(y).reshape(-1)
    packed = ((codes[0::2] << 4) | codes[1::2]).astype(np.uint8)[: (n + 1) // 2]
    return packed, absmax


def quantize_dynamic_bnb(code, y):
    """dQuantize<0>: 7-step bisection from pivot 127, then the midpoint of the bracketing entries."""
    y = np.asarray(y, dtype=F32)
    pivot = np.full(y.shape, 127, dtype=np.int64)
    upper_p = np.full(y.shape, 255, dtype=np.int64)
    lower_p = np.zeros(y.shape, dtype=np.int64)
    lower = np.full(y.shape, -1.0, dtype=F32)
    upper = np.full(y.shape, 1.0, dtype=F32)
    val = code[pivot]
    for step in (64, 32, 16, 8, 4, 2, 1):
        gt = y > val
        lower_p = np.where(gt, pivot, lower_p)
        lower = np.where(gt, val, lower)
        upper_p = np.where(gt, upper_p, pivot)
        upper = np.where(gt, upper, val)
        pivot = np.where(gt, pivot + step, pivot - step)
        val = code[pivot]
    upper = np.where(upper_p == 255, code[255], upper).astype(F32)
    lower = np.where(lower_p == 0, code[0], lower).astype(F32)
    gt = y > val
    mid_up = ((upper + val) * F32(0.5)).astype(F32)
    mid_lo = ((lower + val) * F32(0.5)).astype(F32)
    q = np.where(gt, np.where(y > mid_up, upper_p, pivot), np.where(y < mid_lo, lower_p, pivot))
    return q.astype(np.uint8)


def nearest_ties_low(code, y):
    """The plain nearest-entry rule (ties to the lower entry), to count where bnb's search differs."""
    hi = np.clip(np.searchsorted(code, y, side="left"), 1, 255)
    lo = hi - 1
    mid = ((code[lo] + code[hi]) / F32(2.0)).astype(F32)
    q = np.where(y > mid, hi, lo)
    q = np.where(y <= code[0], 0, q)
    q = np.where(y > code[255], 255, q)
    return q.astype(np.uint8)


def absmax_mean(absmax):
    """ftune's offset: the float32 rounding of the exact sum, divided in float32 by the count."""
    return F32(F32(math.fsum(float(v) for v in absmax)) / F32(absmax.size))


def double_quantize(absmax, offset, code2):
    d = (absmax - offset).astype(F32)
    dp = pad_blocks(d, NESTED_BS)
    absmax2 = block_absmax(dp)
    with np.errstate(invalid="ignore"):
        y = (dp * reciprocal(absmax2)[:, None]).astype(F32)
    q = quantize_dynamic_bnb(code2, y).reshape(-1)[: absmax.size]
    return q, absmax2


def dequantize(packed, n, bs, absmax):
    codes = np.empty(2 * packed.size, dtype=np.uint8)
    codes[0::2] = packed >> 4
    codes[1::2] = packed & 15
    codes = codes[:n]
    return (NF4[codes] * absmax[np.arange(n) // bs]).astype(F32)


def rebuild_absmax(q, absmax2, offset, code2):
    scaled = (code2[q] * absmax2[np.arange(q.size) // NESTED_BS]).astype(F32)
    return (scaled + offset).astype(F32)


def torch_means(absmax):
    if torch is None:
        return {}
    t = torch.from_numpy(absmax.copy())
    out = {"torch_cpu_mean": float(t.mean())}
    if torch.cuda.is_available():
        out["torch_cuda_mean"] = float(t.cuda().mean().cpu())
    return out


# ---------------------------------------------------------------- cases
def special_block_values():
    """Blocks whose normalized values hit the thresholds exactly (absmax 1 and 0.5, so the reciprocal
    is exact), their float neighbours, the code values, zeros, NaN and a negative maximum."""
    nxt_up = np.nextafter(THRESHOLDS, F32(np.inf))
    nxt_dn = np.nextafter(THRESHOLDS, F32(-np.inf))
    b0 = np.concatenate([[1.0], THRESHOLDS, nxt_up, nxt_dn, NF4[:-1], [-0.0, 0.5]]).astype(F32)[:64]
    b0 = np.pad(b0, (0, 64 - b0.size)).astype(F32)
    b1 = np.zeros(64, dtype=F32)
    rng = np.random.default_rng(11)
    b2 = rng.standard_normal(64).astype(F32)
    b2[[3, 17, 40]] = np.nan
    b3 = (rng.standard_normal(64) * 0.1).astype(F32)
    b3[5] = F32(-2.5)  # the block's max is a negative value
    b3[6] = F32(-0.0)
    b4 = np.concatenate([[-0.5], THRESHOLDS * F32(0.5), nxt_up * F32(0.5), nxt_dn * F32(0.5)]).astype(F32)
    b4 = np.pad(b4, (0, 64 - b4.size)).astype(F32)
    return np.concatenate([b0, b1, b2, b3, b4]).astype(F32)


def make_cases():
    rng = np.random.default_rng(20240611)
    cases = [
        ("odd7", [7], 64, True, (rng.standard_normal(7) * 0.5).astype(F32)),
        ("w64x128", [64, 128], 64, True, (rng.standard_normal(64 * 128) * 0.02).astype(F32)),
        ("w200x130", [200, 130], 64, True, (rng.standard_normal(200 * 130) * 0.05).astype(F32)),
        ("bs128", [33, 100], 128, True, rng.standard_normal(3300).astype(F32)),
        ("bs32_plain", [10, 48], 32, False, (rng.standard_normal(480) * 3.0).astype(F32)),
        ("special", [5, 64], 64, False, special_block_values()),
        ("roundtrip", [256, 128], 64, True, rng.standard_normal(256 * 128).astype(F32)),
    ]
    # w200x130: an all-zero block and a block of exact thresholds among ordinary weights.
    x = cases[2][4]
    x[3 * 64:4 * 64] = 0.0
    x[5 * 64:6 * 64] = special_block_values()[:64] * F32(0.25)
    return cases


def error_stats(deq, x):
    e = deq.astype(np.float64) - x.astype(np.float64)
    return {"mae": float(np.mean(np.abs(e))), "rmse": float(np.sqrt(np.mean(e * e))),
            "max_abs": float(np.max(np.abs(e)))}


def run_case(name, shape, bs, nested, x, code2, tensors, meta):
    n = x.size
    packed, absmax = quantize_nf4_blocks(x, bs)
    tensors[f"{name}.x"] = x
    tensors[f"{name}.packed"] = packed
    tensors[f"{name}.absmax"] = absmax
    info = {"shape": shape, "blocksize": bs, "nested": nested, "numel": n}
    if nested:
        offset = absmax_mean(absmax)
        q, absmax2 = double_quantize(absmax, offset, code2)
        tensors[f"{name}.absmax_q"] = q
        tensors[f"{name}.absmax2"] = absmax2
        tensors[f"{name}.offset"] = np.array([offset], dtype=F32)
        info["offset"] = float(offset)
        info.update(torch_means(absmax))
        deq = dequantize(packed, n, bs, rebuild_absmax(q, absmax2, offset, code2))
    else:
        deq = dequantize(packed, n, bs, absmax)
    tensors[f"{name}.dequant"] = deq
    finite = np.isfinite(x)
    info["stats"] = error_stats(deq[finite], x[finite])
    info["stats_plain"] = error_stats(dequantize(packed, n, bs, absmax)[finite], x[finite])
    meta["cases"][name] = info
    print(f"  case {name:10s} shape {shape} bs {bs} nested {nested}: rmse {info['stats']['rmse']:.6f}")


# ---------------------------------------------------------------- checkpoint
def bf16_round(x):
    """Round float32 to bfloat16 (nearest even) and back, as torch's .to(torch.bfloat16) does."""
    u = x.astype(F32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16
    return u.astype(np.uint32).view(F32)


def quant_state_json(bs, shape, nested, offset):
    d = {"quant_type": "nf4", "blocksize": bs, "dtype": "bfloat16", "shape": list(shape)}
    if nested:
        d.update({"nested_blocksize": NESTED_BS, "nested_dtype": "float32", "nested_offset": float(offset)})
    return json.dumps(d)  # as bitsandbytes.utils.pack_dict_to_tensor


def make_checkpoint(code2, tensors, meta):
    rng = np.random.default_rng(777)
    ckpt = {"model.norm.weight": np.ones(64, dtype=F32)}
    weights = [("model.layers.0.self_attn.q_proj.weight", [64, 96], True),
               ("model.layers.0.mlp.down_proj.weight", [48, 80], False)]
    meta["checkpoint"] = {}
    for prefix, shape, nested in weights:
        w = bf16_round((rng.standard_normal(shape[0] * shape[1]) * 0.02).astype(F32))
        packed, absmax = quantize_nf4_blocks(w, 64)
        ckpt[prefix] = packed.reshape(-1, 1)
        ckpt[prefix + ".quant_map"] = NF4.copy()
        offset = None
        if nested:
            offset = absmax_mean(absmax)
            q, absmax2 = double_quantize(absmax, offset, code2)
            ckpt[prefix + ".absmax"] = q
            ckpt[prefix + ".nested_absmax"] = absmax2
            ckpt[prefix + ".nested_quant_map"] = code2.copy()
            deq = dequantize(packed, w.size, 64, rebuild_absmax(q, absmax2, offset, code2))
        else:
            ckpt[prefix + ".absmax"] = absmax
            deq = dequantize(packed, w.size, 64, absmax)
        js = quant_state_json(64, shape, nested, offset)
        ckpt[prefix + ".quant_state.bitsandbytes__nf4"] = np.frombuffer(js.encode("utf-8"), dtype=np.uint8).copy()
        short = prefix.split(".")[-2]
        tensors[f"ckpt.{short}.source"] = w
        tensors[f"ckpt.{short}.dequant"] = deq
        meta["checkpoint"][prefix] = {"shape": shape, "nested": nested, "quant_state": js, "case": short}
    return ckpt


# ---------------------------------------------------------------- output
ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.uint8): "U8", np.dtype(np.int64): "I64"}


def save_safetensors(tensors, path, metadata):
    """safetensors' own writer where installed; otherwise the same format by hand (sorted names)."""
    try:
        from safetensors.numpy import save_file
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path, metadata=metadata)
        return
    except ImportError:
        pass
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for k in sorted(tensors):
        b = np.ascontiguousarray(tensors[k]).tobytes()
        header[k] = {"dtype": ST_DTYPES[tensors[k].dtype], "shape": list(tensors[k].shape),
                     "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/nf4")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    use_torch = torch is not None
    signed, unsigned = dynamic_map(True, use_torch), dynamic_map(False, use_torch)
    meta = {"generator": "tools/make_nf4_fixtures.py", "numpy": np.__version__,
            "torch": torch.__version__ if use_torch else None,
            "dynamic_map_source": "torch.linspace float32" if use_torch else "numpy emulation of torch.linspace",
            "cases": {}}
    if use_torch:
        emu_s, emu_u = dynamic_map(True, False), dynamic_map(False, False)
        meta["dynamic_map_emulation_matches_torch"] = bool(np.array_equal(emu_s.view(np.uint32), signed.view(np.uint32))
                                                           and np.array_equal(emu_u.view(np.uint32),
                                                                              unsigned.view(np.uint32)))
        print(f"  numpy emulation of the dynamic map matches torch: {meta['dynamic_map_emulation_matches_torch']}")
    tensors = {"dynamic_map.signed": signed, "dynamic_map.unsigned": unsigned, "nf4.thresholds": THRESHOLDS,
               "nf4.code": NF4}
    double_rounded = np.array([float(t) for t in THRESHOLD_TEXT], dtype=F32)
    meta["thresholds_differing_from_float32_of_double"] = [int(i) for i in np.nonzero(double_rounded != THRESHOLDS)[0]]
    print(f"  thresholds whose float32(double) differs: {meta['thresholds_differing_from_float32_of_double']}")

    # The 8-bit search on its own: every midpoint of the signed map (the ties), its float neighbours,
    # the entries themselves, out-of-range values and NaN.
    mids = ((signed[:-1] + signed[1:]) * F32(0.5)).astype(F32)
    probe = np.concatenate([mids, np.nextafter(mids, F32(np.inf)), np.nextafter(mids, F32(-np.inf)), signed,
                            np.array([-1.5, -1.0, -0.995, 1.5, np.nan], dtype=F32)]).astype(F32)
    tensors["dynamic_probe.y"] = probe
    tensors["dynamic_probe.q"] = quantize_dynamic_bnb(signed, probe)
    differ = int(np.sum(tensors["dynamic_probe.q"][:-1] != nearest_ties_low(signed, probe[:-1])))
    meta["dynamic_probe_differs_from_nearest_ties_low"] = differ
    print(f"  dQuantize differs from nearest-ties-low on {differ} of {probe.size - 1} probes")

    for name, shape, bs, nested, x in make_cases():
        run_case(name, shape, bs, nested, x, signed, tensors, meta)

    # The NF4 figure on a large N(0,1) sample (not stored): blocksize 64, with double quantization.
    big = np.random.default_rng(5).standard_normal(1 << 20).astype(F32)
    p, a = quantize_nf4_blocks(big, 64)
    off = absmax_mean(a)
    q, a2 = double_quantize(a, off, signed)
    meta["large_sample"] = {"numel": big.size, "blocksize": 64,
                            "nested": error_stats(dequantize(p, big.size, 64, rebuild_absmax(q, a2, off, signed)), big),
                            "plain": error_stats(dequantize(p, big.size, 64, a), big)}
    print(f"  N(0,1) 2^20 samples, bs 64: rmse {meta['large_sample']['nested']['rmse']:.6f} (nested), "
          f"{meta['large_sample']['plain']['rmse']:.6f} (fp32 absmax)")

    ckpt = make_checkpoint(signed, tensors, meta)
    paths = [os.path.join(args.out, f) for f in ("nf4_cases.safetensors", "model.safetensors", "nf4_cases.json")]
    save_safetensors(tensors, paths[0], {"format": "np"})
    save_safetensors(ckpt, paths[1], {"format": "pt"})
    with open(paths[2], "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    for p in paths:
        print(f"wrote {p} ({os.path.getsize(p)} bytes)")


if __name__ == "__main__":
    main()
