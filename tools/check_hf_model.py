#!/usr/bin/env python3
"""Checks that a model directory written by `ftune train` with train.method full loads in
transformers and reproduces ftune's logits.

Loads the directory with AutoModelForCausalLM.from_pretrained (no missing, unexpected or
mismatched keys allowed; every parameter equal to the tensor stored in the directory's
safetensors files), runs it in float64 on the input_ids of GOLDEN (written by
`ftune logits --model DIR --input rows.jsonl --out GOLDEN`) and compares its logits with ftune's.
Prints one JSON line; exits 1 on failure.

    python3 tools/check_hf_model.py --model DIR --golden logits.safetensors [--tol 1e-5]
"""
import argparse
import glob
import json
import os
import sys
import traceback

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_peft_adapter import finite_or_none, load_base  # noqa: E402


def check(args):
    result = {"check": "hf_model", "model": args.model, "golden": args.golden}
    model, info = load_base(args.model)
    model = model.double().eval()
    stored = {}
    for f in sorted(glob.glob(os.path.join(args.model, "*.safetensors"))):
        stored.update(load_file(f))
    params = dict(model.named_parameters())
    # Tied embeddings: lm_head.weight is the embedding and is not stored.
    missing = sorted(k for k in params if k not in stored and not (k == "lm_head.weight" and model.config.tie_word_embeddings))
    unexpected = sorted(k for k in stored if k not in params)
    mismatched = sorted(k for k in stored if k in params and
                        not torch.equal(params[k].detach(), stored[k].double()))
    result.update(tensors=len(stored), loading=info, missing=missing[:5], unexpected=unexpected[:5],
                  mismatched=mismatched[:5], stored_dtypes=sorted({str(t.dtype) for t in stored.values()}))
    golden = load_file(args.golden)
    ids, ref = golden["input_ids"].long(), golden["logits"].double()
    with torch.no_grad():
        logits = model(input_ids=ids).logits.double()
    if tuple(logits.shape) != tuple(ref.shape):
        result.update(ok=False, error="logits shape %s, golden %s" % (list(logits.shape), list(ref.shape)))
        return result
    diff = logits - ref
    rel = float(torch.linalg.vector_norm(diff)) / float(torch.linalg.vector_norm(ref))
    ok = rel < args.tol and not info and not missing and not unexpected and not mismatched and len(stored) > 0
    result.update(shape=list(ref.shape), rel_err=finite_or_none(rel), tol=args.tol, ok=bool(ok))
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model directory written by ftune")
    ap.add_argument("--golden", required=True, help="safetensors file with input_ids and ftune's logits")
    ap.add_argument("--tol", type=float, default=1e-5, help="largest accepted ||hf - ftune|| / ||ftune||")
    args = ap.parse_args()
    try:
        result = check(args)
    except Exception as e:  # noqa: BLE001 - any failure is reported as one JSON line
        traceback.print_exc()
        result = {"check": "hf_model", "model": args.model, "ok": False, "error": "%s: %s" % (type(e).__name__, e)}
    print(json.dumps(result), flush=True)
    sys.exit(0 if result.get("ok") else 1)


if __name__ == "__main__":
    main()
