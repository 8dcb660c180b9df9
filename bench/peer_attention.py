#!/usr/bin/env python3
"""PyTorch's causal scaled_dot_product_attention per backend (FlashAttention-2, cuDNN, memory-efficient)
at the shape bench_attention_gpu takes; forward and backward timed with CUDA events over --reps runs
after one warm-up; one JSON line per backend. Tensors are [B, H, T, d] contiguous; GQA through
enable_gqa. FLOPs counted as in bench/attention_gpu.cpp."""
import argparse
import json

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, default=4)
p.add_argument("--seq", type=int, default=2048)
p.add_argument("--heads", type=int, default=32)
p.add_argument("--kv-heads", type=int, default=32)
p.add_argument("--head-dim", type=int, default=128)
p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
p.add_argument("--reps", type=int, default=5)
p.add_argument("--backends", default="flash,cudnn,efficient")
a = p.parse_args()
dt = torch.bfloat16 if a.dtype == "bf16" else torch.float16
names = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}
g = torch.Generator(device="cuda").manual_seed(0)
q = torch.randn(a.batch, a.heads, a.seq, a.head_dim, device="cuda", dtype=dt, generator=g).requires_grad_()
k = torch.randn(a.batch, a.kv_heads, a.seq, a.head_dim, device="cuda", dtype=dt, generator=g).requires_grad_()
v = torch.randn(a.batch, a.kv_heads, a.seq, a.head_dim, device="cuda", dtype=dt, generator=g).requires_grad_()
do = torch.randn(a.batch, a.heads, a.seq, a.head_dim, device="cuda", dtype=dt, generator=g)
ff = 4.0 * a.batch * a.heads * a.seq * a.seq * a.head_dim / 2
for name in a.backends.split(","):
    row = {"bench": "attention", "impl": "torch-" + name, "gpu": torch.cuda.get_device_name(), "dtype": a.dtype,
           "batch": a.batch, "seq": a.seq, "heads": a.heads, "kv_heads": a.kv_heads, "head_dim": a.head_dim,
           "torch": torch.__version__}
    try:
        with sdpa_kernel(names[name]):
            gqa = a.heads != a.kv_heads

            def fwd():
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)

            out = fwd()
            torch.autograd.grad(out, (q, k, v), do)
            with torch.no_grad():  # the timed forward's own graph (cuDNN builds one per variant)
                fwd()
            e = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
            e[0].record()
            with torch.no_grad():
                for _ in range(a.reps):
                    fwd()
            e[1].record()
            outs = [fwd() for _ in range(a.reps)]
            e[2].record()
            for o in outs:
                torch.autograd.grad(o, (q, k, v), do)
            e[3].record()
            torch.cuda.synchronize()
            ms_f = e[0].elapsed_time(e[1]) / a.reps
            ms_fb = e[2].elapsed_time(e[3]) / a.reps  # the backward alone (forwards done before e[2])
            row.update(fwd_ms=round(ms_f, 3), bwd_ms=round(ms_fb, 3), fwd_tflops=round(ff / ms_f / 1e9, 1),
                       bwd_tflops=round(2.5 * ff / ms_fb / 1e9, 1))
            del outs
    except Exception as ex:  # a backend that refuses the shape says why
        row["error"] = str(ex).splitlines()[0][:200]
    print(json.dumps(row), flush=True)
