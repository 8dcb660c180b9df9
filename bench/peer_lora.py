#!/usr/bin/env python3
"""LoRA training throughput of transformers + peft on the same shapes as ftune's LoRA benchmark.

A Llama model with random bf16 weights is built directly on the GPU (no checkpoint file), its base
is frozen, peft adds LoRA (all seven projections, dropout 0; the adapters upcast to fp32, peft's
default autocast_adapter_dtype) and fused torch.optim.AdamW (lr 1e-4, no weight decay) trains them
on random token ids. Each step runs as the Hugging Face Trainer runs one with bf16=True: forward
and loss under torch.autocast("cuda", dtype=torch.bfloat16), backward outside it, gradients clipped
to a global norm of 1 (Trainer's max_grad_norm), then the optimizer step; SDPA attention, no KV
cache, and with --checkpointing non-reentrant gradient checkpointing. --compile wraps the peft model
in torch.compile (default inductor backend), as Trainer's torch_compile=True does; compilation
happens in the first warmup step and is not timed (warmup_step_s shows it; dynamo_graphs_timed, the
graphs compiled during the timed steps, should be 0), and the kernels compile in this process
(compile_threads 1 unless TORCHINDUCTOR_COMPILE_THREADS is set) so that no worker process holds
device memory while the memory is sampled.

After --warmup untimed steps, --steps steps are timed; one JSON line with tokens/s, model TFLOP/s,
memory and the loss of the first step (warmup included, loss_first) and of the last timed step
(loss_last) goes to stdout (and is appended to --out). Memory, over the warmup and timed steps:
peer_peak_gib is torch.cuda.max_memory_allocated(), peer_reserved_gib max_memory_reserved(), and
peer_sampled_peak_gib the device memory in use (torch.cuda.mem_get_info(): total - free) read by a
background thread every ~1 ms, at its highest, less the reading just before the model is built.
bench/lora_gpu.cpp measures ftune_peak_gib the same way (bench/memory_peak.h), so those two
compare like with like; the reading covers the whole device, so nothing else may run on the GPU.
Running out of GPU memory prints {"error": "oom"} and exits 0, so a batch of runs goes on; any
other failure prints {"error": "exception", "message": ...} and exits 1.

    python3 bench/peer_lora.py --shape llama2-7b --seq 2048 --micro-batch 4 --rank 16 --alpha 32
    python3 bench/peer_lora.py --shape llama2-13b --checkpointing --compile --out bench/results/lora.jsonl
"""
import argparse
import json
import os
import sys
import threading
import time
import traceback

import torch

SHAPES = {  # hidden, intermediate, layers, heads, kv heads
    "tinyllama": (2048, 5632, 22, 32, 4),
    "llama2-7b": (4096, 11008, 32, 32, 32),
    "llama2-13b": (5120, 13824, 40, 40, 40),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GIB = 2**30


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


def memory_in_use(device):
    """Device memory in use, total - free as cudaMemGetInfo reports it (the whole device)."""
    free, total = torch.cuda.mem_get_info(device)
    return total - free


class MemoryPeakSampler:
    """The highest memory_in_use() seen, read at once and then every `period` seconds by a
    background thread until stop(); the peer's twin of ftune's bench/memory_peak.h."""

    def __init__(self, device, period=0.001):
        self.device = device
        self.period = period
        self.peak = memory_in_use(device)
        self._error = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-peak", daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while not self._done.wait(self.period):
                self.peak = max(self.peak, memory_in_use(self.device))
        except Exception as e:  # read by stop() after the join
            self._error = e

    def stop(self):
        """Ends the sampling with one last reading; returns the peak in bytes."""
        if not self._done.is_set():
            self._done.set()
            self._thread.join()
            if self._error is None:
                self.peak = max(self.peak, memory_in_use(self.device))
        if self._error is not None:
            raise self._error
        return self.peak

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        return False


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
    # autocast_adapter_dtype=True (peft's default): the adapters of a bf16 base are kept in fp32.
    model = get_peft_model(model, lora, autocast_adapter_dtype=True)
    model.train()
    return model, cfg


def dynamo_graphs():
    """Graphs torch.compile has compiled so far (None when the counter is not available)."""
    try:
        from torch._dynamo.utils import counters
        return int(counters["stats"]["unique_graphs"])
    except Exception:
        return None


def compile_threads(set_one=False):
    """Inductor's compile workers. Unless TORCHINDUCTOR_COMPILE_THREADS says otherwise, the kernels
    compile in this process: worker processes may open a CUDA context of their own, which the
    device-wide sampled peak would count. The compiled code is the same either way."""
    import torch._inductor.config as inductor_config
    if set_one and "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:
        inductor_config.compile_threads = 1
    return inductor_config.compile_threads


def run(args):
    device = torch.cuda.current_device()
    torch.cuda.synchronize()
    baseline = memory_in_use(device)  # the CUDA context, before the model is built
    model, cfg = build(args)
    params = [p for p in model.parameters() if p.requires_grad]
    n_lora = sum(p.numel() for p in params)
    # As Trainer's defaults: adamw_torch_fused, no weight decay, max_grad_norm 1.
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                            fused=True)
    forward = model
    if args.compile:
        compile_threads(set_one=True)
        forward = torch.compile(model)  # the module, as Trainer's torch_compile=True
    gen = torch.Generator(device="cuda").manual_seed(1234)
    ids = torch.randint(0, cfg.vocab_size, (args.micro_batch, args.seq), device="cuda", generator=gen)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):  # forward and loss only, as Trainer
            loss = forward(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    losses, warmup_s = [], []
    with MemoryPeakSampler(device) as sampler:  # over the warmup and timed steps, as ftune's
        for _ in range(args.warmup):  # the first one compiles, with --compile
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
        "peer_tflops": round(flops_per_token(cfg, n_lora, args.seq) * tok_s / 1e12, 1),
        "loss_first": round(losses[0].item(), 4),  # the first step, warmup included
        "loss_last": round(losses[-1].item(), 4),  # the last timed step
        "steps": args.steps,
        "warmup_step_s": warmup_s,
        "attn": getattr(model.config, "_attn_implementation", None),
        "lora_dtype": str(params[0].dtype).replace("torch.", ""),
    }
    if args.compile:
        rec["compile_threads"] = compile_threads()
        if graphs is not None:
            after = dynamo_graphs()
            rec["dynamo_graphs"] = graphs
            rec["dynamo_graphs_timed"] = None if after is None else after - graphs  # 0: none while timed
    return rec


def is_oom(e):
    # Some kernels report allocation failure as a plain RuntimeError, and torch.compile wraps an
    # out-of-memory error raised while it compiles.
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def short_message(e, limit=300):
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {' '.join(lines[:3])}".rstrip(": ")[:limit]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", required=True, choices=sorted(SHAPES))
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=int, default=32)
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the peft model (inductor); it compiles in the first warmup step")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--gpu-name", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    if args.compile and args.warmup < 1:
        ap.error("--compile needs --warmup >= 1 (the first step compiles and must not be timed)")

    import peft
    import transformers

    rec = {"bench": f"lora_{args.shape}_seq{args.seq}_mb{args.micro_batch}_r{args.rank}"
                    + ("_ckpt" if args.checkpointing else "") + ("_compile" if args.compile else ""),
           "gpu": args.gpu_name or torch.cuda.get_device_name(),
           "compile": args.compile, "autocast": "bf16"}
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
    rec.update(torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__)
    if "lora_dtype" in rec:
        rec["lora_dtype"] = rec.pop("lora_dtype")  # after the versions
    line = json.dumps(rec)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
