#!/usr/bin/env python3
"""Greedy generation goldens for ftune's decoder, from transformers (+ peft) in float64.

For every case under tests/fixtures/hf/ (tools/make_fixtures.py's tiny models): two prompts of
random token ids of different lengths, decoded greedily for --new tokens with EOS disabled, by the
base model and by base + the case's adapter. Writes OUT/<case>/golden_generate.json: the prompts,
the generated ids, and at every generated step the gap between the two largest logits (a test
compares ids exactly up to the first step whose gap is within fp32 rounding of a tie).

    python3 tools/make_generate_fixtures.py [--fixtures tests/fixtures/hf] [--new 12]
"""
import argparse
import json
import os
import random

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def greedy(model, prompt, new):
    ids = torch.tensor([prompt])
    out, gaps = [], []
    with torch.no_grad():
        past = None
        x = ids
        for _ in range(new):
            o = model(input_ids=x, past_key_values=past, use_cache=True)
            past = o.past_key_values
            logits = o.logits[0, -1]
            top = torch.topk(logits, 2).values
            t = int(torch.argmax(logits))
            out.append(t)
            gaps.append(float(top[0] - top[1]))
            x = torch.tensor([[t]])
    return out, gaps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default="tests/fixtures/hf")
    ap.add_argument("--new", type=int, default=12)
    args = ap.parse_args()
    for case in sorted(os.listdir(args.fixtures)):
        d = os.path.join(args.fixtures, case)
        if not os.path.isdir(os.path.join(d, "model")):
            continue
        base = AutoModelForCausalLM.from_pretrained(os.path.join(d, "model"), torch_dtype=torch.float64).eval()
        V = base.config.vocab_size
        rng = random.Random(sum(case.encode()) + 7)  # the same prompts on every run
        prompts = [[rng.randrange(3, V) for _ in range(n)] for n in (5, 9)]
        result = {"new_tokens": args.new, "prompts": prompts, "base": [], "adapter": []}
        for p in prompts:
            t, g = greedy(base, p, args.new)
            result["base"].append({"tokens": t, "gaps": g})
        adapter_dir = os.path.join(d, "adapter")
        if os.path.isdir(adapter_dir):
            tuned = PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(os.path.join(d, "model"), torch_dtype=torch.float64),
                adapter_dir).eval()
            for p in prompts:
                t, g = greedy(tuned, p, args.new)
                result["adapter"].append({"tokens": t, "gaps": g})
        with open(os.path.join(d, "golden_generate.json"), "w") as f:
            json.dump(result, f, indent=1)
        print(case, "base", [r["tokens"] for r in result["base"]], "min gap",
              min(min(r["gaps"]) for r in result["base"]))


if __name__ == "__main__":
    main()
