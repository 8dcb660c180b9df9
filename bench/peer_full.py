#!/usr/bin/env python3
"""Full fine-tuning throughput of transformers on the same shapes as ftune's bench_full_gpu.

As HF Trainer runs full fine-tuning with bf16=True: the model's weights in fp32 (the masters), the
forward and loss under torch.autocast("cuda", dtype=torch.bfloat16), backward outside it, gradients
clipped to norm 1, fused torch.optim.AdamW over every parameter (fp32 moments; no weight decay, the
Trainer default), SDPA attention, no KV cache; --checkpointing: non-reentrant gradient
checkpointing; --compile: torch.compile of the model. Random weights are built directly on the GPU
and the token ids are random. Memory and timing as bench/peer_lora.py measures them (the device
memory in use sampled every ~1 ms, as ftune's side): one JSON line on stdout (and appended to --out).

    python3 bench/peer_full.py --shape tinyllama --seq 2048 --micro-batch 4 [--checkpointing] [--compile]
"""
import argparse
import json
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_lora import (GIB, SHAPES, MemoryPeakSampler, compile_threads, dynamo_graphs,  # noqa: E402
                       is_oom, memory_in_use, short_message)


def flops_per_token(cfg, seq):
    """6 N for every matrix (forward 2N, input and weight gradients 2N each; projections and
    lm_head, not the embedding lookup) + 6 L d T causal attention, as bench/full_gpu.cpp counts."""
    d, i, L, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    head_dim = d // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * head_dim
    n = L * (2 * d * d + 2 * d * kv + 3 * d * i) + d * V
    return 6 * n + 12 * L * d * seq // 2


def build(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    d, i, L, h, kvh = SHAPES[args.shape]
    cfg = LlamaConfig(vocab_size=32000, hidden_size=d, intermediate_size=i, num_hidden_layers=L,
                      num_attention_heads=h, num_key_value_heads=kvh, rms_norm_eps=1e-5,
                      rope_theta=10000.0, max_position_embeddings=4096, tie_word_embeddings=False,
                      use_cache=False, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)  # fp32 masters, as Trainer keeps them under bf16=True
    model.config.use_cache = False
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model, cfg


def run(args):
    device = torch.cuda.current_device()
    torch.cuda.synchronize()
    baseline = memory_in_use(device)
    model, cfg = build(args)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=True)
    forward = model
    if args.compile:
        compile_threads(set_one=True)
        forward = torch.compile(model)
    gen = torch.Generator(device="cuda").manual_seed(1234)
    ids = torch.randint(0, cfg.vocab_size, (args.micro_batch, args.seq), device="cuda", generator=gen)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = forward(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    losses, warmup_s = [], []
    with MemoryPeakSampler(device) as sampler:
        for _ in range(args.warmup):
            t = time.perf_counter()
            losses.append(step())
            torch.cuda.synchronize()
            warmup_s.append(round(time.perf_counter() - t, 3))
        graphs = dynamo_graphs() if args.compile else None
        t0 = time.perf_counter()
        for _ in range(args.steps):
            losses.append(step())
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        sampled = sampler.stop()
    tok_s = args.steps * args.micro_batch * args.seq / elapsed
    rec = {
        "peer_tok_s": round(tok_s, 1),
        "peer_peak_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
        "peer_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2),
        "peer_sampled_peak_gib": round(max(sampled - baseline, 0) / GIB, 2),
        "peer_tflops": round(flops_per_token(cfg, args.seq) * tok_s / 1e12, 1),
        "loss_first": round(losses[0].item(), 4),
        "loss_last": round(losses[-1].item(), 4),
        "steps": args.steps,
        "warmup_step_s": warmup_s,
        "parameters": sum(p.numel() for p in params),
    }
    if args.compile:
        rec["compile_threads"] = compile_threads()
        if graphs is not None:
            after = dynamo_graphs()
            rec["dynamo_graphs_timed"] = None if after is None else after - graphs
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", required=True, choices=sorted(SHAPES))
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < (1 if args.compile else 0):
        ap.error("--steps must be >= 1 and --warmup >= 0 (>= 1 with --compile)")
    import transformers

    rec = {"bench": f"full_{args.shape}_seq{args.seq}_mb{args.micro_batch}" + ("_ckpt" if args.checkpointing else "")
                    + ("_compile" if args.compile else ""),
           "gpu": torch.cuda.get_device_name(), "compile": args.compile, "autocast": "bf16", "masters": "fp32"}
    status = 0
    try:
        rec.update(run(args))
    except Exception as e:
        if is_oom(e):
            rec["error"] = "oom"
        else:
            traceback.print_exc()
            rec["error"], rec["message"] = "exception", short_message(e)
            status = 1
    rec.update(torch=torch.__version__, transformers=transformers.__version__)
    line = json.dumps(rec)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
