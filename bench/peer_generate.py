#!/usr/bin/env python3
"""Generation throughput of transformers on the same shapes as ftune's decode benchmark.

A Llama model with random bf16 weights is built directly on the GPU (no checkpoint file), SDPA
attention, and used as its users run generation: prefill is one forward of the batch's prompts
with the KV cache (logits_to_keep=1, as generate() computes them); decode is
`model.generate(do_sample=False, min_new_tokens=N, max_new_tokens=N)` on the same prompts, whose
own prefill (a generate of one new token, timed alongside) is taken out:
decode tokens/s = batch * (N - 1) / (t(N) - t(1)). --compile runs the static cache with the model's
forward compiled by generate() itself (torch.compile, mode "reduce-overhead": CUDA graphs), as
transformers documents for fast generation; compilation happens in the warmup runs and is not timed.

Memory: peer_sampled_peak_gib is the device memory in use (torch.cuda.mem_get_info(): total - free)
read by a background thread every ~1 ms over the timed runs, less the reading before the model was
built, as bench/decode_gpu.cpp measures ftune's. One JSON line per mode goes to stdout.

    python3 bench/peer_generate.py --shape llama2-7b --batch 1 --prompt 512 --new 128 [--compile]
"""
import argparse
import json
import threading
import time

import torch

SHAPES = {  # hidden, intermediate, layers, heads, kv heads
    "tinyllama": (2048, 5632, 22, 32, 4),
    "llama2-7b": (4096, 11008, 32, 32, 32),
    "llama3-8b": (4096, 14336, 32, 32, 8),
}
GIB = 2**30


class Sampler:
    def __init__(self):
        self.peak = self.used()
        self.stop_flag = False
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    @staticmethod
    def used():
        free, total = torch.cuda.mem_get_info()
        return total - free

    def loop(self):
        while not self.stop_flag:
            time.sleep(0.001)
            self.peak = max(self.peak, self.used())

    def stop(self):
        self.stop_flag = True
        self.thread.join()
        return max(self.peak, self.used())


def build(shape):
    from transformers import LlamaConfig, LlamaForCausalLM

    d, i, L, h, kvh = SHAPES[shape]
    vocab = 128256 if shape == "llama3-8b" else 32000
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=i, num_hidden_layers=L,
                      num_attention_heads=h, num_key_value_heads=kvh, rms_norm_eps=1e-5,
                      rope_theta=10000.0, max_position_embeddings=4096, tie_word_embeddings=False,
                      attn_implementation="sdpa")
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    model.eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None  # never stop early: every run makes N tokens
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="llama2-7b", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--mode", default="both", choices=["prefill", "decode", "both"])
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    import transformers

    base = Sampler.used()
    model = build(args.shape)
    g = torch.Generator(device="cuda").manual_seed(7)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.prompt), device="cuda", generator=g)
    mask = torch.ones_like(ids)
    kw = {}
    if args.compile:
        # generate() compiles the decoding forward itself when the cache is static (its
        # generation_config.compile_config: fullgraph, mode "reduce-overhead", i.e. CUDA graphs);
        # wrapping model.forward in torch.compile by hand instead fails on this transformers
        # ("accessing tensor output of CUDAGraphs that has been overwritten").
        kw["cache_implementation"] = "static"
    if args.compile and args.warmup < 2:
        args.warmup = 2  # the compiled graphs are recorded over the first runs

    def gen(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, min_new_tokens=n,
                                 max_new_tokens=n, **kw)
        torch.cuda.synchronize()
        assert out.shape[1] == args.prompt + n
        return time.perf_counter() - t

    def prefill():
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
        torch.cuda.synchronize()
        return time.perf_counter() - t

    name = f"{args.shape}_bf16_b{args.batch}_p{args.prompt}" + ("_compile" if args.compile else "")
    common = {"gpu": torch.cuda.get_device_name(), "batch": args.batch, "prompt": args.prompt,
              "torch": torch.__version__, "transformers": transformers.__version__, "attn": "sdpa",
              "compile": args.compile}
    for mode in ("prefill", "decode"):
        if args.mode not in (mode, "both"):
            continue
        if mode == "prefill" and args.compile:
            continue  # the compiled forward is the static-cache decode step; prefill is the eager one
        for _ in range(args.warmup):
            prefill() if mode == "prefill" else (gen(1), gen(args.new))
        s = Sampler()
        if mode == "prefill":
            t = sum(prefill() for _ in range(args.repeat))
            tok_s = args.batch * args.prompt * args.repeat / t
            ms = 1e3 * t / args.repeat
        else:
            t1 = sum(gen(1) for _ in range(args.repeat))
            tn = sum(gen(args.new) for _ in range(args.repeat))
            tok_s = args.batch * (args.new - 1) * args.repeat / (tn - t1)
            ms = 1e3 * (tn - t1) / (args.repeat * (args.new - 1))
        peak = s.stop()
        rec = {"bench": f"{mode}_{name}" + (f"_n{args.new}" if mode == "decode" else ""), "mode": mode,
               "new": args.new if mode == "decode" else 0, "peer_tok_s": round(tok_s, 1),
               "peer_ms_per_step": round(ms, 3), "peer_sampled_peak_gib": round((peak - base) / GIB, 2)}
        rec.update(common)
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
