#!/usr/bin/env python3
"""LoRA training throughput of transformers + peft on the same shapes as ftune's LoRA benchmark.

A Llama model with random bf16 weights is built directly on the GPU (no checkpoint file), its base
is frozen, peft adds LoRA (all seven projections, dropout 0) and torch.optim.AdamW trains the adapters
on random token ids. After --warmup untimed steps, --steps steps are timed; one JSON line with
tokens/s, peak GPU memory, model TFLOP/s and the first/last loss goes to stdout (and is appended to
--out). Running out of GPU memory prints {"error": "oom"} and exits 0, so a batch of runs goes on.

    python3 bench/peer_lora.py --shape llama2-7b --seq 2048 --micro-batch 4 --rank 16 --alpha 32
    python3 bench/peer_lora.py --shape llama2-13b --checkpointing --out bench/results/lora.jsonl
"""
import argparse
import json
import sys
import time

import torch

SHAPES = {  # hidden, intermediate, layers, heads, kv heads
    "tinyllama": (2048, 5632, 22, 32, 4),
    "llama2-7b": (4096, 11008, 32, 32, 32),
    "llama2-13b": (5120, 13824, 40, 40, 40),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def flops_per_token(cfg, n_lora, seq):
    """Model FLOPs per trained token (recomputation by checkpointing is not counted).

    4 * N_base    frozen linear weights (every layer's 7 projections + lm_head; the embedding lookup is
                  not a matmul): forward 2N, backward input gradient 2N, no weight gradient.
    6 * N_lora    trainable adapters: forward 2N, input gradient 2N, weight gradient 2N.
    6 * L * d * T attention scores and weighted sum: forward 4*T*d per layer per token (QK^T 2Td,
                  PV 2Td; d = heads * head_dim), halved for the causal mask, times 3 for fwd + bwd,
                  i.e. 12 * L * d * T / 2.
    """
    d, i, L, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    head_dim = d // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * head_dim
    n_base = L * (2 * d * d + 2 * d * kv + 3 * d * i) + d * V
    return 4 * n_base + 6 * n_lora + 12 * L * d * seq // 2


def build(args):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    d, i, L, h, kvh = SHAPES[args.shape]
    cfg = LlamaConfig(vocab_size=32000, hidden_size=d, intermediate_size=i, num_hidden_layers=L,
                      num_attention_heads=h, num_key_value_heads=kvh, rms_norm_eps=1e-5,
                      rope_theta=10000.0, max_position_embeddings=4096, tie_word_embeddings=False,
                      use_cache=False, attn_implementation="sdpa")
    torch.manual_seed(0)
    old_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old_dtype)
    model.to(dtype=torch.bfloat16)  # no-op when already bf16
    model.config.use_cache = False
    model.requires_grad_(False)
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=TARGETS,
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.train()
    return model, cfg


def run(args):
    model, cfg = build(args)
    params = [p for p in model.parameters() if p.requires_grad]
    n_lora = sum(p.numel() for p in params)
    try:
        opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    except (TypeError, RuntimeError):
        opt = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator(device="cuda").manual_seed(1234)
    ids = torch.randint(0, cfg.vocab_size, (args.micro_batch, args.seq), device="cuda", generator=gen)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    losses = [step() for _ in range(args.warmup)]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        losses.append(step())
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    tok_s = args.steps * args.micro_batch * args.seq / elapsed
    return {
        "peer_tok_s": round(tok_s, 1),
        "peer_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "peer_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
        "peer_tflops": round(flops_per_token(cfg, n_lora, args.seq) * tok_s / 1e12, 1),
        "loss_first": round(losses[0].item(), 4),
        "loss_last": round(losses[-1].item(), 4),
        "steps": args.steps,
        "lora_dtype": str(params[0].dtype).replace("torch.", ""),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", required=True, choices=sorted(SHAPES))
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=int, default=32)
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--gpu-name", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")

    import peft
    import transformers

    rec = {"bench": f"lora_{args.shape}_seq{args.seq}_mb{args.micro_batch}_r{args.rank}"
                    + ("_ckpt" if args.checkpointing else ""),
           "gpu": args.gpu_name or torch.cuda.get_device_name()}
    try:
        rec.update(run(args))
    except torch.cuda.OutOfMemoryError:
        rec["error"] = "oom"
    except RuntimeError as e:  # some kernels report allocation failure as a plain RuntimeError
        if "out of memory" not in str(e).lower():
            raise
        rec["error"] = "oom"
    rec.update(torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__)
    if "lora_dtype" in rec:
        rec["lora_dtype"] = rec.pop("lora_dtype")  # after the versions
    line = json.dumps(rec)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
