#!/usr/bin/env python3
"""Checks that an adapter written by ftune loads in peft and reproduces ftune's logits.

GOLDEN is what `ftune logits --model DIR --adapter ADAPTER --input rows.jsonl --out GOLDEN`
wrote: input_ids I64 [B,T] and logits F32 [B,T,V]. Prints one JSON line; exits 1 on failure.

    python3 tools/check_peft_adapter.py --model DIR --adapter DIR --golden logits.safetensors
"""
import argparse
import json
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--golden", required=True)
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()

    try:
        base = LlamaForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager")
    except TypeError:
        base = LlamaForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(base, a.adapter).double().eval()

    # Every tensor of the file is loaded into a LoRA parameter, and nothing is left over.
    saved = load_file(f"{a.adapter}/adapter_model.safetensors")
    params = {n.replace(".default.weight", ".weight"): p for n, p in model.named_parameters() if "lora_" in n}
    missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
    mismatched = [k for k in saved if k in params and not torch.equal(params[k].detach().float(), saved[k].float())]

    g = load_file(a.golden)
    with torch.no_grad():
        logits = model(input_ids=g["input_ids"]).logits
    ref = g["logits"].double()
    rel = (torch.linalg.vector_norm(logits - ref) / torch.linalg.vector_norm(ref)).item()
    max_abs = (logits - ref).abs().max().item()
    ok = rel < a.tol and not missing and not unexpected and not mismatched
    print(json.dumps({"check": "peft_adapter", "adapter": a.adapter, "tensors": len(saved), "rel_err": rel,
                      "max_abs_err": max_abs, "missing": missing[:3], "unexpected": unexpected[:3],
                      "mismatched": mismatched[:3], "ok": ok}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
